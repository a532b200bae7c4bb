"""The HTTP interface: invoke tasks, read executions, manage tasks.

Language-independent on purpose: the body of ``POST /tasks/{name}/invoke`` is
the task's input as raw bytes and the response body is its output, so any
client that can send an HTTP request can use a task.
"""
from __future__ import annotations

import base64
import binascii
from importlib import resources
from typing import Any, Awaitable, Callable

from aiohttp import BodyPartReader, web

import fastpath

from ..coordinator import Coordinator
from ..errors import BadRequest, InvalidManifest, NotFinished
from ..events.flow import EventFlow
from ..execution import Execution
from ..lifecycle import ExecutionState
from ..manifest import decode_manifest, manifest_from_dict
from .body import json_response, parse_json, read_body
from .errors import error_middleware, error_response, failure_response
from .events import add_event_routes
from .shadows import add_shadow_routes

__all__ = ["create_app", "request_handler", "COORDINATOR", "MAX_MODULE_BYTES"]

COORDINATOR: web.AppKey[Coordinator] = web.AppKey("coordinator", Coordinator)
_HANDLERS: web.AppKey["Handlers"] = web.AppKey("handlers")
MAX_MODULE_BYTES = 64 << 20
OPENAPI = resources.files("engine.http").joinpath("openapi.json").read_bytes()


def _execution_headers(ex: Execution) -> dict[str, str]:
    state = ex.state
    headers = {"X-Wasmyard-Execution-Id": ex.id,
               "X-Wasmyard-Status": "succeeded" if state is ExecutionState.SUCCEEDED else state.value}
    if ex.finished_ns and ex.started_ns:
        headers["X-Wasmyard-Duration-Ms"] = "%.3f" % ((ex.finished_ns - ex.started_ns) / 1e6)
    if ex.exit_code is not None:
        headers["X-Wasmyard-Exit-Code"] = str(ex.exit_code)
    return headers


def _priority(request: web.Request) -> int | None:
    raw = request.query.get("priority")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"priority must be an integer, got {raw!r}") from None


class Handlers:
    def __init__(self, coordinator: Coordinator, max_body: int, flow: EventFlow | None) -> None:
        self.co = coordinator
        self.max_body = max_body
        self.flow = flow

    async def invoke(self, request: web.Request) -> web.StreamResponse:
        return await self.invoke_task(request, request.match_info["name"])

    async def invoke_task(self, request: web.Request, name: str) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length <= self.max_body:
            data = await request.read()  # read_body's common case, without its coroutine
        else:
            data = await read_body(request, self.max_body)
        has_query = "?" in request.raw_path  # no URL parsing for the common case
        mode = request.query.get("mode", "sync") if has_query else "sync"
        if mode == "async":
            ex = self.co.submit(name, data, _priority(request))
            return json_response(
                {"id": ex.id, "state": ex.state.value, "status_url": f"/executions/{ex.id}"},
                status=202,
                headers={"X-Wasmyard-Execution-Id": ex.id, "Location": f"/executions/{ex.id}"},
            )
        if mode != "sync":
            raise BadRequest(f"mode must be 'sync' or 'async', got {mode!r}")
        ex = self.co.submit(name, data, _priority(request) if has_query else None)
        if not ex.finished_ns:  # a warm handler has already run inline
            await ex.wait()
        if ex.error is not None:
            return error_response(ex.error, _execution_headers(ex))
        return web.Response(body=ex.output, content_type="application/octet-stream", headers=_execution_headers(ex))

    async def get_execution(self, request: web.Request) -> web.Response:
        return json_response(self.co.get(request.match_info["id"]).to_dict())

    async def get_output(self, request: web.Request) -> web.Response:
        ex = self.co.get(request.match_info["id"])
        if not ex.done:
            return error_response(NotFinished(f"execution {ex.id} is still {ex.state}"), _execution_headers(ex))
        if ex.error is not None:
            return error_response(ex.error, _execution_headers(ex))
        return web.Response(body=ex.output, content_type="application/octet-stream", headers=_execution_headers(ex))

    async def cancel(self, request: web.Request) -> web.Response:
        ex = self.co.cancel(request.match_info["id"])
        return json_response(ex.to_dict(), status=200 if ex.done else 202)

    async def list_tasks(self, request: web.Request) -> web.Response:
        return json_response({"tasks": [entry.to_dict() for _, entry in sorted(self.co.tasks.items())]})

    async def get_task(self, request: web.Request) -> web.Response:
        return json_response(self.co.task(request.match_info["name"]).to_dict())

    async def put_task(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        raw, wasm = await _task_upload(request)
        if not isinstance(raw, dict):
            raise InvalidManifest("a manifest must be a table/object")
        raw.setdefault("name", name)
        if raw["name"] != name:
            raise InvalidManifest(f"manifest name {raw['name']!r} does not match the URL's {name!r}")
        raw.pop("module", None)
        existed = name in self.co.tasks
        entry = await self.co.register(manifest_from_dict(raw), wasm)
        return json_response(entry.to_dict(), status=200 if existed else 201)

    async def delete_task(self, request: web.Request) -> web.Response:
        self.co.remove_task(request.match_info["name"])
        return web.Response(status=204)

    async def healthz(self, request: web.Request) -> web.Response:
        doc: dict[str, Any] = {
            "status": "ok",
            "tasks": len(self.co.tasks),
            "in_flight": self.co.resources.in_flight,
            "queue_depth": self.co.scheduler.depth,
            "fastpath": fastpath.IMPLEMENTATION,
        }
        devices = self.flow.devices if self.flow is not None else None
        if devices is not None and hasattr(devices, "stats"):
            doc["mqtt"] = devices.stats()
        return json_response(doc)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.co.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=OPENAPI, content_type="application/json")


async def _task_upload(request: web.Request) -> tuple[Any, bytes]:
    """Manifest document and module bytes from multipart or JSON (base64 module)."""
    if request.content_type.startswith("multipart/"):
        raw: Any = None
        wasm: bytes | None = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted; send 'manifest' and 'module' parts")
            if part.name == "manifest":
                text = await part.read(decode=True)
                raw = decode_manifest(bytes(text))
            elif part.name == "module":
                wasm = bytes(await part.read(decode=True))
            else:
                raise BadRequest(f"unexpected multipart field {part.name!r}; send 'manifest' and 'module'")
        if raw is None or wasm is None:
            raise BadRequest("multipart upload needs a 'manifest' part and a 'module' part")
        return raw, wasm
    doc = parse_json(await read_body(request, MAX_MODULE_BYTES * 2))
    if not isinstance(doc, dict) or "module_base64" not in doc or "manifest" not in doc:
        raise BadRequest("JSON upload needs 'manifest' (object or TOML/JSON text) and 'module_base64'")
    manifest = doc["manifest"]
    if isinstance(manifest, str):
        manifest = decode_manifest(manifest)
    try:
        wasm = base64.b64decode(doc["module_base64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise BadRequest("module_base64 is not valid base64") from None
    return manifest, wasm


_INVOKE_PREFIX = "/tasks/"
_INVOKE_SUFFIX = "/invoke"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")


def request_handler(app: web.Application) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """The function the hub's server hands every request to.

    ``POST /tasks/{name}/invoke`` is the hot route: it goes straight to the
    invoke handler, under the same error handling, and skips aiohttp's
    route resolution and middleware chain — about 6 µs of CPU per request
    where a pooled invoke costs 65 (measured with ``bench/http_ratio.py``'s
    load on a 2-core hub).  Everything else, and
    an invoke path whose name is not a plain task name, goes through the
    application as usual, so both paths answer alike.
    """
    handle = app._handle  # what aiohttp's AppRunner serves; the routed path
    invoke = app[_HANDLERS].invoke_task

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        name = invoked_task(request.method, request.raw_path)
        if name is None:
            return await handle(request)  # type: ignore[arg-type]
        try:
            return await invoke(request, name)  # type: ignore[arg-type]
        except Exception as exc:  # as error_middleware does for the routed path
            return failure_response(request, exc)

    return dispatch


def invoked_task(method: str, raw_path: str) -> str | None:
    """The task a request invokes if it can take the hot route, else None."""
    if method != "POST":
        return None
    path = raw_path.partition("?")[0] if "?" in raw_path else raw_path
    if not (path.startswith(_INVOKE_PREFIX) and path.endswith(_INVOKE_SUFFIX)):
        return None
    name = path[len(_INVOKE_PREFIX):-len(_INVOKE_SUFFIX)]
    return name if name and _NAME_CHARS.issuperset(name) else None


def create_app(coordinator: Coordinator, flow: EventFlow | None = None) -> web.Application:
    max_body = coordinator.settings.max_body_kib << 10
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_MODULE_BYTES * 2)
    app[COORDINATOR] = coordinator
    h = Handlers(coordinator, max_body, flow)
    app[_HANDLERS] = h
    app.router.add_post("/tasks/{name}/invoke", h.invoke)
    app.router.add_get("/executions/{id}", h.get_execution)
    app.router.add_get("/executions/{id}/output", h.get_output)
    app.router.add_delete("/executions/{id}", h.cancel)
    app.router.add_get("/tasks", h.list_tasks)
    app.router.add_get("/tasks/{name}", h.get_task)
    app.router.add_put("/tasks/{name}", h.put_task)
    app.router.add_delete("/tasks/{name}", h.delete_task)
    app.router.add_get("/healthz", h.healthz)
    app.router.add_get("/metrics", h.metrics)
    app.router.add_get("/openapi.json", h.openapi)
    if flow is not None:
        add_event_routes(app, flow, max_body)
        add_shadow_routes(app, flow)
    return app
