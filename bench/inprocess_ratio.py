"""In-process throughput on one core: executions and routed events, both twins.

    .venv/bin/python bench/inprocess_ratio.py [--n 200000]

No HTTP: this is the coordinator's own hot path.
* executions: ``Coordinator.submit`` of a warm pooled handler (a minimal echo
  handler, 32-byte input) through scheduler + resource manager + runtime;
* routed events: ``EventFlow.publish`` of an event whose route sends it to
  that handler, whose output is published and routed again (to no route).
Each figure is measured with the compiled fastpath and again, in a child
process, with ``FASTPATH_NO_EXTENSIONS=1``; the ratio is printed.  Issue
targets: >= 100,000 executions/s and >= 50,000 routed events/s (compiled).
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
sys.path.insert(0, str(ROOT / "tests"))


async def measure(n: int) -> dict[str, float]:
    import fastpath
    from engine.config import HubSettings
    from engine.coordinator import Coordinator
    from engine.events.flow import EventFlow
    from engine.manifest import parse_manifest
    from engine.routing.table import RoutingTable
    from guests import handler_wasm

    co = Coordinator(HubSettings(state_dir=Path(tempfile.mkdtemp()), history=1000))
    await co.register(parse_manifest({"name": "echo-h", "kind": "handler", "max_concurrency": 1}),
                      handler_wasm("echo"))
    table = RoutingTable.from_dicts([{"id": "in", "filter": "sensors/+/temperature", "destination": "task:echo-h"}])
    flow = EventFlow(co, table)
    payload = b'{"device":"t-17","celsius":21.5}'
    for _ in range(100):  # warm up: instance, placement statistics (inline after 3 runs)
        await co.invoke("echo-h", payload)
    assert co.scheduler.inline(co.tasks["echo-h"].slot), "the handler should run inline once warm"

    submit = co.submit
    sleep = asyncio.sleep
    best_exec = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for i in range(n):
            submit("echo-h", payload)
            if not i & 255:
                await sleep(0)  # as a server would between network reads
        while co.resources.in_flight or co.scheduler.depth:
            await sleep(0)
        best_exec = max(best_exec, n / (time.perf_counter() - t))
    failed = co.metrics.executions.get(("echo-h", "failed"), 0)
    assert failed == 0, f"{failed} executions failed"

    publish = flow.publish
    m = n // 2
    best_events = 0.0
    for _ in range(3):
        t = time.perf_counter()
        for i in range(m):
            publish("sensors/t-17/temperature", payload, "device:t-17")
            if not i & 255:
                await sleep(0)
        while co.resources.in_flight or co.scheduler.depth:
            await sleep(0)
        best_events = max(best_events, m / (time.perf_counter() - t))
    assert flow.table.counters.matched >= 3 * m
    dropped = sum(v for k, v in flow.counters.items() if k.startswith("dropped"))
    assert not dropped, flow.counters
    await flow.aclose()
    await co.aclose()
    return {"impl": fastpath.IMPLEMENTATION, "executions": best_exec, "events": best_events}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = 30_000 if args.quick else args.n
    if args.child:
        print(json.dumps(asyncio.run(measure(n))))
        return 0
    compiled = asyncio.run(measure(n))
    env = dict(os.environ, FASTPATH_NO_EXTENSIONS="1")
    out = subprocess.run([sys.executable, __file__, "--child", "--n", str(n)], env=env, capture_output=True,
                         text=True, check=True).stdout
    pure = json.loads(out.strip().splitlines()[-1])
    print(f"\nin-process, one core, best of 3 × {n:,} (events: {n // 2:,})")
    print(f"{'what':<44} {compiled['impl']:>12} {pure['impl']:>12} {'ratio':>7}")
    for key, label in (("executions", "pooled handler executions/s (submit)"),
                       ("events", "routed events/s (event → task → output)")):
        print(f"{label:<44} {compiled[key]:>12,.0f} {pure[key]:>12,.0f} {compiled[key] / pure[key]:>6.1f}×")
    print("targets: >= 100,000 executions/s, >= 50,000 routed events/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
