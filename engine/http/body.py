"""Reading request bodies within a limit."""
from __future__ import annotations

from aiohttp import web

from ..errors import PayloadTooLarge

__all__ = ["read_body"]


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
