"""Fixtures shared by the unit tests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.runtime import WasmRuntime


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WasmRuntime]:
    """A small runtime per test module: each reserves address space for its instance pool."""
    runtime = WasmRuntime(tmp_path_factory.mktemp("modules"), instances=64, max_memory_mib=64)
    yield runtime
    runtime.close()
