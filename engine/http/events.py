"""HTTP side of the event flow: post events, stream them, manage the routing table."""
from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import WSMsgType, web

from ..errors import BadRequest, NotFound
from ..events.flow import EventFlow
from ..routing.route import Route
from ..routing.table import RoutingTable
from .body import json_response, parse_json, read_body

__all__ = ["add_event_routes"]


class EventHandlers:
    def __init__(self, flow: EventFlow, max_body: int) -> None:
        self.flow = flow
        self.max_body = max_body

    async def post_event(self, request: web.Request) -> web.Response:
        payload = await read_body(request, self.max_body)
        delivery = self.flow.publish(request.match_info["topic"], payload, "http")
        return json_response({"topic": request.match_info["topic"], **delivery.to_dict()},
                     status=202 if delivery.routes else 200)

    async def stream(self, request: web.Request) -> web.StreamResponse:
        topic_filter = request.query.get("filter", "#")
        sub = self.flow.subscribe(topic_filter)
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        try:
            reader = asyncio.ensure_future(self._until_closed(ws))
            while not reader.done():
                getter = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                topic, source, payload = getter.result()
                await ws.send_bytes(orjson.dumps({"topic": topic, "source": source,
                                                  "payload": payload.decode("utf-8", "replace")}))
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        finally:
            self.flow.unsubscribe(sub)
            await ws.close()
        return ws

    @staticmethod
    async def _until_closed(ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                return

    async def get_routes(self, request: web.Request) -> web.Response:
        return json_response({"routes": [r.to_dict() for r in self.flow.table.routes], **self.flow.stats()})

    async def put_routes(self, request: web.Request) -> web.Response:
        doc = parse_json(await request.read())
        if not isinstance(doc, dict) or not isinstance(doc.get("routes"), list):
            raise BadRequest('expected {"routes": [ ... ]}')
        table = RoutingTable.from_dicts(doc["routes"])  # RouteError is a 400
        self.flow.swap(table)
        return json_response({"routes": [r.to_dict() for r in table.routes]})

    async def put_route(self, request: web.Request) -> web.Response:
        route_id = request.match_info["id"]
        doc = parse_json(await request.read())
        if not isinstance(doc, dict):
            raise BadRequest("a route must be a JSON object")
        doc.setdefault("id", route_id)
        if doc["id"] != route_id:
            raise BadRequest(f"route id {doc['id']!r} does not match the URL's {route_id!r}")
        route = Route.from_dict(doc)
        routes = [r for r in self.flow.table.routes if r.id != route_id]
        existed = len(routes) != len(self.flow.table)
        self.flow.swap(RoutingTable([*routes, route]))
        return json_response(route.to_dict(), status=200 if existed else 201)

    async def delete_route(self, request: web.Request) -> web.Response:
        route_id = request.match_info["id"]
        if self.flow.table.get(route_id) is None:
            raise NotFound(f"no route {route_id!r}")
        self.flow.swap(RoutingTable([r for r in self.flow.table.routes if r.id != route_id]))
        return web.Response(status=204)


def add_event_routes(app: web.Application, flow: EventFlow, max_body: int) -> None:
    h = EventHandlers(flow, max_body)
    app.router.add_get("/events/ws", h.stream)
    app.router.add_post("/events/{topic:.+}", h.post_event)
    app.router.add_get("/routes", h.get_routes)
    app.router.add_put("/routes", h.put_routes)
    app.router.add_put("/routes/{id}", h.put_route)
    app.router.add_delete("/routes/{id}", h.delete_route)
