"""Device round trip over a real broker, as a ratio of the broker's own pub→sub rate.

    .venv/bin/python bench/device_ratio.py [--n 20000] [--quick]

Round trip: a paho "device" publishes readings on ``bench/in/<device>`` →
mosquitto → the hub's MQTT bridge → routing table → a pooled ``handler`` task
(a minimal echo handler) → its output event → routed to ``device:bench/out``
→ bridge → mosquitto → a paho subscriber.  The anchor, measured in the same
run on the same broker with the same client library, is ``baseline()`` from
``bench/mqtt_baseline.py``: one paho publisher to one paho subscriber, no hub.
QoS 0, 40-byte payloads; rate = messages received / time from first publish
to last arrival.  The hub runs as its own process (``wasmyard run``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from broker import Broker  # noqa: E402
from guests import handler_wasm  # noqa: E402
from hub import HubProcess  # noqa: E402
from mqtt_baseline import baseline  # noqa: E402

CONFIG = """
[hub]
port = 0
[mqtt]
port = {port}
subscriptions = [["bench/in/#", 0]]
[[routes]]
id = "in"
filter = "bench/in/+"
destination = "task:echo-h"
[[routes]]
id = "out"
filter = "tasks/echo-h/output"
destination = "device:bench/out"
"""


def round_trip(port: int, n: int) -> float:
    return baseline(port, n, topic="bench/in/d-0042", subscribe="bench/out", what="round trip")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, repeat = (5_000, 2) if args.quick else (args.n, args.repeat)
    state = Path(tempfile.mkdtemp(prefix="wasmyard-bench-"))
    with Broker(state / "broker") as broker:
        config = state / "hub.toml"
        config.write_text(CONFIG.format(port=broker.port))
        hub = HubProcess(state / "hub", config)
        try:
            manifest = {"name": "echo-h", "kind": "handler", "max_concurrency": 1}
            assert hub.put_task(manifest, handler_wasm("echo")).status == 201
            deadline = time.monotonic() + 10
            while not hub.request("GET", "/healthz").json()["mqtt"]["connected"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the hub did not connect to the broker")
                time.sleep(0.05)
            round_trip(broker.port, 2_000)  # warm up: placement statistics, caches
            anchor = trip = 0.0
            for _ in range(repeat):  # interleaved, best of each
                anchor = max(anchor, baseline(broker.port, n))
                trip = max(trip, round_trip(broker.port, n))
            impl = hub.request("GET", "/healthz").json()["fastpath"]
        finally:
            hub.stop()
        kind = broker.kind
    print(f"\ndevice round trip over {kind}, QoS 0, {n:,} messages, best of {repeat}, fastpath={impl}")
    print(f"{'what':<60} {'msg/s':>10} {'ratio':>7}")
    print(f"{'anchor: paho pub -> broker -> paho sub':<60} {anchor:>10,.0f} {1:>6.0%}")
    print(f"{'device -> broker -> hub -> task -> hub -> broker -> device':<60} {trip:>10,.0f} {trip / anchor:>6.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
