"""HTTP invoke throughput as a ratio of a bare aiohttp echo handler, one run.

    .venv/bin/python bench/http_ratio.py [--seconds 5] [--connections 16]

Starts, as separate processes on 127.0.0.1: the bare aiohttp echo server
(``bench/bare_server.py``, the anchor) and a real coordinator (``wasmyard
run``).  One load tool drives all targets in the same run with the same body:
wrk when installed (it costs the servers least), otherwise an aiohttp client
in its own process.  Targets: the anchor, a pooled ``handler`` task (a
minimal echo handler: the coordinator's own overhead), the telemetry example
(real JSON work), and a per-execution ``command`` task (fresh environment
every time).  Issue targets: pooled handler >= 60 % of the anchor, command
>= 40 %.
"""
from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from guests import handler_wasm  # noqa: E402
from hub import HubProcess  # noqa: E402

BODY = b'{"device":"t-17","celsius":21.5}'


def start_bare() -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_server.py")], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.search(r"(http://[\d.]+:\d+)", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"bare server did not start: {line!r}")
    return proc, match.group(1)


def wrk(url: str, seconds: float, connections: int, body: bytes) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {orjson.dumps(body.decode()).decode()}\n'
                'wrk.headers["Content-Type"] = "application/octet-stream"\n')
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", script, url],
                             capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(script)
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx responses from {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(match.group(1))


def python_load(url: str, seconds: float, connections: int, body: bytes) -> float:
    code = f"""
import asyncio, time, aiohttp
async def worker(session, stop, counter):
    while time.monotonic() < stop:
        async with session.post({url!r}, data={body!r}) as r:
            await r.read()
            if r.status != 200: raise SystemExit(f"status {{r.status}}")
        counter[0] += 1
async def main():
    counter = [0]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit={connections})) as s:
        start = time.monotonic(); stop = start + {seconds}
        await asyncio.gather(*(worker(s, stop, counter) for _ in range({connections})))
        print(counter[0] / (time.monotonic() - start))
asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode:
        raise RuntimeError(out.stderr)
    return float(out.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="2 s per target")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    load = wrk if shutil.which("wrk") else python_load
    tool = "wrk" if load is wrk else "aiohttp client"

    bare, bare_url = start_bare()
    state = Path(tempfile.mkdtemp(prefix="wasmyard-bench-"))
    hub = HubProcess(state)
    try:
        manifest = {"name": "echo-handler", "kind": "handler", "max_concurrency": 4}
        doc = {"manifest": manifest, "module_base64": base64.b64encode(handler_wasm("echo")).decode()}
        assert hub.request("PUT", "/tasks/echo-handler", orjson.dumps(doc),
                           {"Content-Type": "application/json"}).status == 201
        targets = [
            ("bare aiohttp echo handler (anchor)", f"{bare_url}/echo"),
            ("pooled handler task (echo)", f"{hub.url}/tasks/echo-handler/invoke"),
            ("pooled handler task (telemetry)", f"{hub.url}/tasks/telemetry/invoke"),
            ("per-execution command task (echo)", f"{hub.url}/tasks/echo/invoke"),
        ]
        for _, url in targets:  # warm up: compile caches, pools, placement statistics
            load(url, 0.5, args.connections, BODY)
        impl = hub.request("GET", "/healthz").json()["fastpath"]
        rates = [(name, load(url, seconds, args.connections, BODY)) for name, url in targets]
    finally:
        hub.stop()
        bare.terminate()
        bare.wait()
        shutil.rmtree(state, ignore_errors=True)

    anchor = rates[0][1]
    print(f"\nHTTP invoke, {tool}, {args.connections} connections, {seconds:g} s each, fastpath={impl}, body {len(BODY)} B")
    print(f"{'target':<40} {'req/s':>10} {'vs anchor':>10}")
    for name, rate in rates:
        print(f"{name:<40} {rate:>10.0f} {rate / anchor:>9.0%}")
    print("targets: pooled handler >= 60 %, command >= 40 % of the anchor")
    return 0


if __name__ == "__main__":
    sys.exit(main())
