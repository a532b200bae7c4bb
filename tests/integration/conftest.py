from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hub import HubProcess  # noqa: E402


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    """One coordinator on its embedded default config, shared by a test module."""
    process = HubProcess(tmp_path_factory.mktemp("state"))
    yield process
    process.stop()


@pytest.fixture
def small_hub(tmp_path: Path) -> Iterator[HubProcess]:
    """A coordinator with a tiny queue and body limit, to hit the limits quickly."""
    config = tmp_path / "hub.toml"
    config.write_text("examples = true\n[hub]\nmax_queue = 2\nmax_in_flight = 8\nmax_body_kib = 64\n")
    process = HubProcess(tmp_path / "state", config)
    yield process
    process.stop()

from conftest_mqtt import broker_fixture  # noqa: E402,F401  (the `broker` fixture)
