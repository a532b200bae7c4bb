"""``command`` executions on the worker pool while the event loop is busy.

    .venv/bin/python bench/command_ratio.py [--n 4000] [--quick]

A command task gets a fresh execution environment per execution and runs on
the coordinator's ``fastpath.CommandPool``.  What an execution costs under
load is mostly what happens around the wasm: every time a worker thread and
the event loop thread hand the GIL to each other, both pay.  The compiled
pool's workers never take the GIL; the pure twin's workers are ordinary
Python threads, which is what the ratio shows.

The coordinator runs in-process with 2 worker threads and the committed echo
example; 16 coroutines ``await coordinator.invoke("echo", ...)`` in a loop, as
a server's request handlers would.  Measured: process CPU time per execution
(all threads) and executions/s, best of 3 rounds; plus, as an anchor, the
wall time of one ``run_command`` in a loop on a single thread.  Each figure is
measured with the compiled fastpath and again, in a child process, with
``FASTPATH_NO_EXTENSIONS=1``; the ratio is printed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ECHO = ROOT / "wasm_tasks" / "echo" / "echo.wasm"
PAYLOAD = b'{"device":"t-17","celsius":21.5}'
WORKERS = 2
CLIENTS = 16


def single_thread(n: int) -> float:
    """Seconds per ``run_command`` of the echo example, best of 5, one thread."""
    from engine.manifest import parse_manifest
    from engine.runtime import WasmRuntime, run_command
    from engine.runtime.host import Sink

    runtime = WasmRuntime(Path(tempfile.mkdtemp()), instances=16, max_memory_mib=64)
    try:
        task = runtime.compile(parse_manifest({"name": "echo", "kind": "command"}), ECHO.read_bytes())
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(n):
                outcome = run_command(task, PAYLOAD, Sink())
                assert outcome.output == PAYLOAD, outcome.error
            best = min(best, (time.perf_counter() - t) / n)
        return best
    finally:
        runtime.close()


async def threaded(n: int) -> tuple[float, float]:
    """(process CPU seconds per execution, executions/s), best round of 3."""
    from engine.config import HubSettings
    from engine.coordinator import Coordinator
    from engine.manifest import parse_manifest

    co = Coordinator(HubSettings(state_dir=Path(tempfile.mkdtemp()), history=1000, workers=WORKERS))
    manifest = parse_manifest({"name": "echo", "kind": "command", "max_concurrency": CLIENTS,
                               "limits": {"memory_mib": 2, "timeout_ms": 5000}})
    await co.register(manifest, ECHO.read_bytes())

    async def client(count: int) -> None:
        for _ in range(count):
            execution = await co.invoke("echo", PAYLOAD)
            assert execution.output == PAYLOAD, execution.error

    async def round_(total: int) -> tuple[float, float]:
        share, extra = divmod(total, CLIENTS)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(share + (i < extra)) for i in range(CLIENTS)))
        return time.process_time() - cpu, time.perf_counter() - wall

    try:
        await round_(min(n, 500))  # warm up: threads, scratch files, instance slots
        best_cpu, best_rate = float("inf"), 0.0
        for _ in range(3):
            cpu, wall = await round_(n)
            best_cpu = min(best_cpu, cpu / n)
            best_rate = max(best_rate, n / wall)
        return best_cpu, best_rate
    finally:
        await co.aclose()


def measure(n: int) -> dict[str, object]:
    import fastpath

    cpu, rate = asyncio.run(threaded(n))
    return {"impl": fastpath.IMPLEMENTATION, "single_us": single_thread(max(n // 4, 200)) * 1e6,
            "cpu_us": cpu * 1e6, "rate": rate}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = 800 if args.quick else args.n
    if args.child:
        print(json.dumps(measure(n)))
        return 0
    compiled = measure(n)
    env = dict(os.environ, FASTPATH_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, __file__, "--child", "--n", str(n)], env=env, capture_output=True,
                         text=True, check=True).stdout
    pure = json.loads(out.strip().splitlines()[-1])
    print(f"\ncommand executions (echo example, {len(PAYLOAD)}-byte input), {WORKERS} worker threads, "
          f"{CLIENTS} concurrent invokes, best of 3 × {n:,}")
    print(f"{'what':<46} {compiled['impl']:>10} {pure['impl']:>10} {'ratio':>7}")
    rows = (
        ("single thread: wall µs per run_command", "single_us", True),
        ("threaded: process CPU µs per execution", "cpu_us", True),
        ("threaded: executions/s", "rate", False),
    )
    for label, key, lower_is_better in rows:
        a, b = float(compiled[key]), float(pure[key])  # type: ignore[arg-type]
        ratio = b / a if lower_is_better else a / b
        print(f"{label:<46} {a:>10,.1f} {b:>10,.1f} {ratio:>6.2f}×")
    print("ratio = how many times better the compiled twin does (pure / compiled for times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
