"""Bad input gets a clear error, loses nothing, and the hub serves the next request.

Every case runs against the real coordinator process; after each one the
echo task must still answer correctly.
"""
from __future__ import annotations

import base64
import time

import orjson
import pytest

from guests import command_wasm, handler_wasm
from hub import HubProcess

pytestmark = pytest.mark.integration


def still_serves(hub: HubProcess) -> None:
    resp = hub.request("POST", "/tasks/echo/invoke", b"still here")
    assert resp.status == 200 and resp.body == b"still here"


def error_of(resp) -> dict:  # type: ignore[no-untyped-def]
    doc = resp.json()
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}
    return doc["error"]


def test_malformed_wasm_is_400_with_the_reason(hub: HubProcess) -> None:
    resp = hub.put_task({"name": "broken", "kind": "handler"}, b"\x00asm\x01\x00\x00\x00garbage")
    assert resp.status == 400
    err = error_of(resp)
    assert err["code"] == "invalid_module" and "not a valid WebAssembly module" in err["message"]
    assert hub.request("GET", "/tasks/broken").status == 404
    still_serves(hub)


def test_wrong_kind_of_module_is_400(hub: HubProcess) -> None:
    resp = hub.put_task({"name": "notahandler", "kind": "handler"}, command_wasm("echo"))
    assert resp.status == 400
    assert "missing export" in error_of(resp)["message"]
    still_serves(hub)


@pytest.mark.parametrize(
    ("manifest", "fragment"),
    [
        ({"name": "x", "kind": "daemon"}, "kind must be one of"),
        ({"name": "x", "kind": "command", "isolation": "pooled"}, "only handler tasks can be pooled"),
        ({"name": "x", "kind": "handler", "limits": {"memroy_mib": 4}}, "unknown key(s) in limits: memroy_mib"),
        ({"name": "x", "kind": "handler", "limits": {"timeout_ms": 0}}, "timeout_ms must be between"),
    ],
)
def test_bad_manifest_is_400_naming_the_problem(hub: HubProcess, manifest: dict, fragment: str) -> None:
    resp = hub.put_task(manifest, handler_wasm("echo"))
    assert resp.status == 400
    err = error_of(resp)
    assert err["code"] == "invalid_manifest" and fragment in err["message"]
    still_serves(hub)


def test_bad_json_body_is_400(hub: HubProcess) -> None:
    resp = hub.request("PUT", "/tasks/x", b"{not json", {"Content-Type": "application/json"})
    assert resp.status == 400
    assert "not valid JSON" in error_of(resp)["message"]
    bad64 = orjson.dumps({"manifest": {"kind": "handler"}, "module_base64": "***"})
    resp = hub.request("PUT", "/tasks/x", bad64, {"Content-Type": "application/json"})
    assert resp.status == 400 and "base64" in error_of(resp)["message"]
    still_serves(hub)


def test_unknown_task_is_404(hub: HubProcess) -> None:
    resp = hub.request("POST", "/tasks/nosuchtask/invoke", b"x")
    assert resp.status == 404
    assert error_of(resp)["code"] == "unknown_task"
    assert hub.request("GET", "/no/such/route").status == 404
    still_serves(hub)


def test_body_over_the_limit_is_413(small_hub: HubProcess) -> None:
    resp = small_hub.request("POST", "/tasks/echo/invoke", b"x" * (65 * 1024))
    assert resp.status == 413
    assert error_of(resp)["code"] == "payload_too_large"
    still_serves(small_hub)


def test_trap_fails_the_execution_with_the_trap_message(hub: HubProcess) -> None:
    hub.put_task({"name": "trapper", "kind": "handler"}, handler_wasm("trap"))
    resp = hub.request("POST", "/tasks/trapper/invoke", b"x")
    assert resp.status == 502
    err = error_of(resp)
    assert err["code"] == "trap" and "unreachable" in err["message"]
    doc = hub.request("GET", f"/executions/{resp.headers['X-Wasmyard-Execution-Id']}").json()
    assert doc["state"] == "failed" and doc["error"]["code"] == "trap"
    still_serves(hub)


def test_infinite_loop_times_out_close_to_its_limit(hub: HubProcess) -> None:
    hub.put_task({"name": "looper", "kind": "handler", "limits": {"timeout_ms": 300}}, handler_wasm("loop"))
    started = time.monotonic()
    resp = hub.request("POST", "/tasks/looper/invoke", b"x")
    elapsed = time.monotonic() - started
    assert resp.status == 504
    assert error_of(resp)["code"] == "timed_out"
    doc = hub.request("GET", f"/executions/{resp.headers['X-Wasmyard-Execution-Id']}").json()
    assert doc["state"] == "timed_out"
    assert 300 <= doc["duration_ms"] < 800 and elapsed < 5
    still_serves(hub)


def test_memory_bomb_fails_naming_the_memory_limit(hub: HubProcess) -> None:
    hub.put_task({"name": "bomb", "kind": "command", "limits": {"memory_mib": 8}}, command_wasm("membomb"))
    resp = hub.request("POST", "/tasks/bomb/invoke", b"")
    assert resp.status == 502
    err = error_of(resp)
    assert err["code"] == "memory_limit" and "8 MiB" in err["message"]
    still_serves(hub)


def test_output_flood_is_stopped_at_the_output_limit(hub: HubProcess) -> None:
    hub.put_task({"name": "flood", "kind": "command", "limits": {"max_output_kib": 64, "timeout_ms": 5000}},
                 command_wasm("flood"))
    resp = hub.request("POST", "/tasks/flood/invoke", b"")
    assert resp.status == 502
    assert error_of(resp)["code"] == "output_too_large"
    doc = hub.request("GET", f"/executions/{resp.headers['X-Wasmyard-Execution-Id']}").json()
    assert doc["duration_ms"] < 4000  # stopped by the output cap, not by the timeout
    still_serves(hub)


def test_full_queue_is_429_with_retry_after_not_a_hang(small_hub: HubProcess) -> None:
    small_hub.put_task({"name": "busy", "kind": "command", "max_concurrency": 1, "limits": {"timeout_ms": 1500}},
                       command_wasm("loop"))
    accepted = []
    statuses = []
    for _ in range(4):  # one running + max_queue (2) waiting, then refused
        resp = small_hub.request("POST", "/tasks/busy/invoke?mode=async", b"", timeout=5)
        statuses.append(resp.status)
        if resp.status == 202:
            accepted.append(resp.json()["id"])
    assert statuses == [202, 202, 202, 429]
    refused = small_hub.request("POST", "/tasks/busy/invoke", b"", timeout=5)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert error_of(refused)["code"] == "queue_full"
    # Nothing accepted is lost: every queued execution still runs to its end.
    for execution_id in accepted:
        doc = small_hub.wait_state(execution_id, {"timed_out", "failed", "succeeded"}, timeout=15)
        assert doc["state"] == "timed_out"
    still_serves(small_hub)
    assert 'wasmyard_rejected_total{reason="queue_full"} 2' in small_hub.request("GET", "/metrics").body.decode()


def test_guest_reported_error_is_502_with_its_message(hub: HubProcess) -> None:
    hub.put_task({"name": "refuser", "kind": "handler"}, handler_wasm("error"))
    resp = hub.request("POST", "/tasks/refuser/invoke", b"x")
    assert resp.status == 502
    err = error_of(resp)
    assert err["code"] == "guest_error" and "bad input: refused" in err["message"]
    still_serves(hub)


def test_invalid_telemetry_reading_is_a_guest_error(hub: HubProcess) -> None:
    resp = hub.request("POST", "/tasks/telemetry/invoke", b"not json at all")
    assert resp.status == 502
    assert error_of(resp)["code"] == "guest_error"
    still_serves(hub)


def test_bad_query_parameters_are_400(hub: HubProcess) -> None:
    assert hub.request("POST", "/tasks/echo/invoke?mode=later", b"").status == 400
    assert hub.request("POST", "/tasks/echo/invoke?priority=high", b"").status == 400
    still_serves(hub)


def test_module_put_with_base64_of_garbage_manifest_text(hub: HubProcess) -> None:
    doc = {"manifest": "name = [unclosed", "module_base64": base64.b64encode(handler_wasm("echo")).decode()}
    resp = hub.request("PUT", "/tasks/t", orjson.dumps(doc), {"Content-Type": "application/json"})
    assert resp.status == 400 and "not valid TOML" in error_of(resp)["message"]
    still_serves(hub)
