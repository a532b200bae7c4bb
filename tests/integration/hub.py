"""A real coordinator process on 127.0.0.1:0, and a small blocking HTTP client."""
from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

ROOT = Path(__file__).resolve().parents[2]
_URL = re.compile(r"listening on (http://[\d.]+:\d+)")


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.body[:200]!r}>"


class HubProcess:
    """``wasmyard run`` as a child process; stopped with SIGTERM like a service."""

    def __init__(self, state_dir: Path, config: Path | None = None, extra_env: dict[str, str] | None = None) -> None:
        args = [sys.executable, "-m", "engine.cli", "run", "--port", "0", "--state-dir", str(state_dir)]
        if config is not None:
            args += ["--config", str(config)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = _URL.search(line)
        if not match:
            err = self.proc.stderr.read().decode() if self.proc.stderr else ""
            self.proc.kill()
            raise RuntimeError(f"hub did not start: {line!r} {err}")
        self.url = match.group(1)
        parts = urlsplit(self.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, timeout: float = 30) -> Response:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return Response(resp.status, dict(resp.getheaders()), resp.read())
        finally:
            conn.close()

    def put_task(self, manifest: dict[str, Any], wasm: bytes) -> Response:
        import base64

        doc = {"manifest": manifest, "module_base64": base64.b64encode(wasm).decode()}
        return self.request("PUT", f"/tasks/{manifest['name']}", orjson.dumps(doc),
                            {"Content-Type": "application/json"})

    def wait_state(self, execution_id: str, states: set[str], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            doc = self.request("GET", f"/executions/{execution_id}").json()
            if doc["state"] in states or time.monotonic() > deadline:
                return doc
            time.sleep(0.01)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        out = self.proc.stdout.read().decode() if self.proc.stdout else ""
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()
        return out
