"""Registering, replacing, listing and removing tasks over HTTP."""
from __future__ import annotations

import orjson
import pytest

from guests import command_wasm, handler_wasm
from hub import HubProcess

pytestmark = pytest.mark.integration


def test_list_and_get_tasks(hub: HubProcess) -> None:
    tasks = {t["name"]: t for t in hub.request("GET", "/tasks").json()["tasks"]}
    assert {"echo", "telemetry", "anomaly"} <= set(tasks)
    assert tasks["echo"]["kind"] == "command" and tasks["telemetry"]["kind"] == "handler"
    one = hub.request("GET", "/tasks/telemetry").json()
    assert one["sha256"] == tasks["telemetry"]["sha256"] and len(one["sha256"]) == 64


def test_put_json_then_replace_then_delete(hub: HubProcess) -> None:
    manifest = {"name": "upper", "kind": "handler", "version": "1.0.0"}
    created = hub.put_task(manifest, handler_wasm("echo"))
    assert created.status == 201, created
    assert hub.request("POST", "/tasks/upper/invoke", b"abc").body == b"abc"
    replaced = hub.put_task({**manifest, "version": "2.0.0"}, handler_wasm("counter"))
    assert replaced.status == 200 and replaced.json()["version"] == "2.0.0"
    assert hub.request("POST", "/tasks/upper/invoke", b"abc").body == (1).to_bytes(4, "little")
    assert hub.request("DELETE", "/tasks/upper").status == 204
    assert hub.request("POST", "/tasks/upper/invoke", b"abc").status == 404
    assert hub.request("DELETE", "/tasks/upper").status == 404


def test_put_multipart_with_toml_manifest(hub: HubProcess) -> None:
    boundary = "wasmyardboundary"
    toml = b'name = "mp"\nkind = "command"\n[limits]\ntimeout_ms = 500\n'
    wasm = command_wasm("echo")
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n".encode() + toml + b"\r\n"
        + f"--{boundary}\r\nContent-Disposition: form-data; name=\"module\"; filename=\"m.wasm\"\r\n"
          f"Content-Type: application/wasm\r\n\r\n".encode() + wasm + b"\r\n" + f"--{boundary}--\r\n".encode()
    )
    resp = hub.request("PUT", "/tasks/mp", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status == 201, resp
    assert resp.json()["limits"]["timeout_ms"] == 500
    assert hub.request("POST", "/tasks/mp/invoke", b"multi").body == b"multi"


def test_name_in_manifest_must_match_url(hub: HubProcess) -> None:
    import base64

    doc = {"manifest": {"name": "other", "kind": "handler"}, "module_base64": base64.b64encode(handler_wasm("echo")).decode()}
    resp = hub.request("PUT", "/tasks/mine", orjson.dumps(doc), {"Content-Type": "application/json"})
    assert resp.status == 400
    assert "does not match" in resp.json()["error"]["message"]
