"""The committed OpenAPI document and the real routes describe the same interface."""
from __future__ import annotations

import re
from typing import Any

import pytest

from hub import HubProcess

pytestmark = pytest.mark.integration


def _routes() -> set[tuple[str, str]]:
    from engine.coordinator import Coordinator
    from engine.config import HubSettings
    from engine.http.app import create_app
    import tempfile

    from engine.events.flow import EventFlow

    async def build() -> Any:
        co = Coordinator(HubSettings(state_dir=tempfile.mkdtemp()))
        return co, create_app(co, EventFlow(co))

    import asyncio

    co, app = asyncio.run(build())
    try:
        found = set()
        for route in app.router.routes():
            if route.method == "HEAD":
                continue
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter")
            found.add((route.method.lower(), path))
        return found
    finally:
        import asyncio

        asyncio.run(co.aclose())


def test_document_lists_exactly_the_served_routes(hub: HubProcess) -> None:
    doc = hub.request("GET", "/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == _routes()


def test_every_operation_documents_its_error_shape(hub: HubProcess) -> None:
    doc = hub.request("GET", "/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for param in re.findall(r"{(\w+)}", path):
                assert any(p["name"] == param and p["in"] == "path" for p in op.get("parameters", [])), (method, path)


def test_document_is_a_valid_openapi_3_document() -> None:
    from openapi_spec_validator import validate
    from engine.http.app import OPENAPI
    import orjson

    validate(orjson.loads(OPENAPI))
