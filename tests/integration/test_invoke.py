"""Invoking tasks over HTTP against a real coordinator process."""
from __future__ import annotations

import os

import orjson
import pytest

from hub import HubProcess

pytestmark = pytest.mark.integration


def test_healthz_reports_the_loaded_fastpath(hub: HubProcess) -> None:
    import fastpath

    doc = hub.request("GET", "/healthz").json()
    assert doc["status"] == "ok"
    assert doc["tasks"] >= 3
    assert doc["fastpath"] == fastpath.IMPLEMENTATION


def test_command_echo_round_trips_binary_input(hub: HubProcess) -> None:
    data = os.urandom(200_000)
    resp = hub.request("POST", "/tasks/echo/invoke", data)
    assert resp.status == 200, resp
    assert resp.body == data
    assert resp.headers["X-Wasmyard-Status"] == "succeeded"
    assert resp.headers["X-Wasmyard-Exit-Code"] == "0"
    assert float(resp.headers["X-Wasmyard-Duration-Ms"]) > 0
    execution = hub.request("GET", f"/executions/{resp.headers['X-Wasmyard-Execution-Id']}").json()
    assert execution["state"] == "succeeded"
    assert execution["output_bytes"] == len(data)
    assert any(log["stream"] == "stderr" for log in execution["logs"])


def test_handler_converts_telemetry(hub: HubProcess) -> None:
    resp = hub.request("POST", "/tasks/telemetry/invoke", b'{"device":"t-17","celsius":21.5}')
    assert resp.status == 200, resp
    doc = orjson.loads(resp.body)
    assert doc["device"] == "t-17"
    assert doc["fahrenheit"] == pytest.approx(70.7)
    assert doc["kelvin"] == pytest.approx(294.65)


def test_stateful_handler_keeps_state_across_executions(hub: HubProcess) -> None:
    counts = []
    for value in [20.0] * 10:
        resp = hub.request("POST", "/tasks/anomaly/invoke", orjson.dumps({"value": value}))
        assert resp.status == 200, resp
        counts.append(orjson.loads(resp.body)["count"])
    # max_concurrency 1: one pooled instance holds the window, and it grows by one per reading.
    assert counts == list(range(counts[0], counts[0] + 10))
    spike = orjson.loads(hub.request("POST", "/tasks/anomaly/invoke", b'{"value": 95.0}').body)
    assert spike["anomaly"] is True


def test_async_mode_then_poll_and_fetch_output(hub: HubProcess) -> None:
    resp = hub.request("POST", "/tasks/echo/invoke?mode=async", b"later")
    assert resp.status == 202, resp
    execution_id = resp.json()["id"]
    assert resp.headers["Location"] == f"/executions/{execution_id}"
    doc = hub.wait_state(execution_id, {"succeeded", "failed"})
    assert doc["state"] == "succeeded"
    out = hub.request("GET", f"/executions/{execution_id}/output")
    assert out.status == 200 and out.body == b"later"


def test_output_of_a_running_execution_is_409(hub: HubProcess) -> None:
    from guests import command_wasm

    assert hub.put_task({"name": "slow", "kind": "command", "limits": {"timeout_ms": 400}},
                        command_wasm("loop")).status in (200, 201)
    execution_id = hub.request("POST", "/tasks/slow/invoke?mode=async").json()["id"]
    hub.wait_state(execution_id, {"running"})
    resp = hub.request("GET", f"/executions/{execution_id}/output")
    assert resp.status == 409
    assert resp.json()["error"]["code"] == "not_finished"


def test_cancel_a_running_execution(hub: HubProcess) -> None:
    from guests import command_wasm

    hub.put_task({"name": "spin", "kind": "command", "limits": {"timeout_ms": 20_000}}, command_wasm("loop"))
    execution_id = hub.request("POST", "/tasks/spin/invoke?mode=async").json()["id"]
    hub.wait_state(execution_id, {"running"})
    resp = hub.request("DELETE", f"/executions/{execution_id}")
    assert resp.status in (200, 202)
    doc = hub.wait_state(execution_id, {"cancelled", "failed", "timed_out", "succeeded"}, timeout=5)
    assert doc["state"] == "cancelled"
    assert doc["duration_ms"] < 5_000  # stopped by the cancel, far before its 20 s limit
    again = hub.request("DELETE", f"/executions/{execution_id}")
    assert again.status == 409


def test_unknown_execution_is_404(hub: HubProcess) -> None:
    resp = hub.request("GET", "/executions/nope")
    assert resp.status == 404
    assert resp.json()["error"]["code"] == "unknown_execution"


def test_metrics_count_executions_by_task_and_state(hub: HubProcess) -> None:
    hub.request("POST", "/tasks/echo/invoke", b"m")
    text = hub.request("GET", "/metrics").body.decode()
    assert 'wasmyard_executions_total{task="echo",state="succeeded"}' in text
    assert "wasmyard_queue_depth " in text
    assert 'wasmyard_execution_duration_seconds_bucket{task="echo",le="+Inf"}' in text


# The hub serves ``POST /tasks/{name}/invoke`` before aiohttp's router (the hot
# route); a percent-encoded name is left to the router, which decodes it to the
# same task.  Both paths must answer alike, errors included.
@pytest.mark.parametrize("path, body, status", [
    ("/tasks/{}/invoke", b"same answer", 200),
    ("/tasks/{}/invoke?mode=async", b"queued", 202),
    ("/tasks/{}/invoke?mode=later", b"x", 400),
    ("/tasks/{}/invoke?priority=high", b"x", 400),
    ("/tasks/{}x/invoke", b"x", 404),
    ("/tasks/{}/invoke", b"x" * (2 << 20), 413),
])
def test_the_hot_route_and_the_router_answer_alike(hub: HubProcess, path: str, body: bytes, status: int) -> None:
    fast = hub.request("POST", path.format("echo"), body)
    routed = hub.request("POST", path.format("%65cho"), body)  # "%65" is "e"
    assert fast.status == routed.status == status, (fast, routed)
    volatile = {"X-Wasmyard-Execution-Id", "X-Wasmyard-Duration-Ms", "Location", "Date"}
    assert {k for k in fast.headers} == {k for k in routed.headers}
    assert {k: v for k, v in fast.headers.items() if k not in volatile} == \
        {k: v for k, v in routed.headers.items() if k not in volatile}
    if status == 202:
        assert fast.json()["state"] == routed.json()["state"]
    else:
        assert fast.body.replace(b"%65cho", b"echo") == routed.body.replace(b"%65cho", b"echo")


def test_only_post_takes_the_hot_route(hub: HubProcess) -> None:
    resp = hub.request("GET", "/tasks/echo/invoke")
    assert resp.status == 405, resp
    assert resp.json()["error"]["code"] == "method_not_allowed"
