"""Request and response bodies: read within a limit, JSON in and out."""
from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..errors import BadRequest, PayloadTooLarge

__all__ = ["read_body", "parse_json", "json_response"]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json", headers=headers)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


async def read_body(request: web.Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes; 413 as soon as the body is known to be larger."""
    length = request.content_length
    if length is not None:
        if length > limit:
            raise PayloadTooLarge(f"body of {length} bytes is over the limit of {limit} bytes")
        return await request.read()
    chunks = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
