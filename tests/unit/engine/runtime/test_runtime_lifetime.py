"""What a WasmRuntime holds, and that closing it gives it back."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from engine.runtime import WasmRuntime

ROOT = Path(__file__).resolve().parents[4]


def test_close_is_idempotent() -> None:
    runtime = WasmRuntime(None, instances=4, max_memory_mib=16)
    runtime.close()
    runtime.close()


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    script = "from engine.runtime import WasmRuntime\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_runtimes_that_are_dropped_do_not_accumulate() -> None:
    """The control for the test below: the same loop, without keeping the objects."""
    proc = run_script("""
        for _ in range(20):
            runtime = WasmRuntime(None)
            runtime.close()
            del runtime
        print("ok")
    """)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr[-2000:]


def test_closed_runtimes_release_their_address_space() -> None:
    """A process that keeps closed runtimes around (a closed Coordinator held by
    its owner, a test fixture) must be able to make another one."""
    proc = run_script("""
        kept = []
        for _ in range(20):
            runtime = WasmRuntime(None)
            runtime.close()
            kept.append(runtime)
        print("ok")
    """)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr[-2000:]
