"""HTTP side of the shadows: read a shadow, update it (desired from apps, reported from devices)."""
from __future__ import annotations

from aiohttp import web

from ..errors import HostError
from ..events.flow import EventFlow
from ..shadows import ShadowStore
from .body import json_response, parse_json, read_body

__all__ = ["add_shadow_routes"]

MAX_UPDATE_BYTES = 64 << 10


class ShadowHandlers:
    def __init__(self, flow: EventFlow) -> None:
        self.flow = flow

    @property
    def store(self) -> ShadowStore:
        if self.flow.shadows is None:
            raise HostError("this hub has no shadow service")
        return self.flow.shadows

    async def list_shadows(self, request: web.Request) -> web.Response:
        return json_response({"shadows": self.store.names()})

    async def get_shadow(self, request: web.Request) -> web.Response:
        return json_response(self.store.get(request.match_info["name"]).document())

    async def update_shadow(self, request: web.Request) -> web.Response:
        body = parse_json(await read_body(request, MAX_UPDATE_BYTES))
        return json_response(self.flow.update_shadow(request.match_info["name"], body))


def add_shadow_routes(app: web.Application, flow: EventFlow) -> None:
    h = ShadowHandlers(flow)
    app.router.add_get("/shadows", h.list_shadows)
    app.router.add_get("/shadows/{name}", h.get_shadow)
    app.router.add_post("/shadows/{name}", h.update_shadow)
