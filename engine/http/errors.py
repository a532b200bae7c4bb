"""Error responses: one JSON shape, statuses from the one exception hierarchy.

``{"error": {"code": "...", "message": "..."}}`` for every failure, including
the ones aiohttp raises itself (unknown route, wrong method, body too large).
"""
from __future__ import annotations

import logging
from typing import Awaitable, Callable

import orjson
from aiohttp import web

from ..errors import HostError, Overloaded, WasmyardError, http_status

__all__ = ["error_response", "error_middleware", "failure_response"]

log = logging.getLogger("wasmyard.http")

_AIOHTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 400: "bad_request"}


def error_response(exc: WasmyardError, headers: dict[str, str] | None = None) -> web.Response:
    headers = dict(headers or {})
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return web.Response(
        status=http_status(exc),
        body=orjson.dumps({"error": exc.to_dict()}),
        content_type="application/json",
        headers=headers,
    )


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except Exception as exc:
        return failure_response(request, exc)


def failure_response(request: web.BaseRequest, exc: Exception) -> web.StreamResponse:
    """The response for what a handler raised; re-raises what is not a failure (a redirect)."""
    if isinstance(exc, WasmyardError):
        return error_response(exc)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _AIOHTTP_CODES.get(exc.status, "http_error")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        return web.Response(
            status=exc.status,
            body=orjson.dumps({"error": {"code": code, "message": message}}),
            content_type="application/json",
        )
    log.error("unhandled error method=%s path=%s", request.method, request.path, exc_info=exc)
    return error_response(HostError("internal error; see the hub's log"))
