"""Run every ratio benchmark (``bench/*_ratio.py``) and print their tables.

    .venv/bin/python bench/run_all.py [--quick]

Each script measures against its own anchor in the same run; this only runs
them one after another.  ``--quick`` is passed to the scripts that take it —
CI uses it for a short informational pass with no pass/fail on timing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    failed = []
    for script in sorted(BENCH.glob("*_ratio.py")):
        cmd = [sys.executable, str(script)]
        if args.quick and "--quick" in script.read_text():
            cmd.append("--quick")
        print(f"\n=== {script.name}", flush=True)
        started = time.monotonic()
        done = subprocess.run(cmd, cwd=BENCH.parent)
        print(f"--- {script.name}: {time.monotonic() - started:.1f} s", flush=True)
        if done.returncode:
            failed.append(script.name)
    if failed:
        print(f"benchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
