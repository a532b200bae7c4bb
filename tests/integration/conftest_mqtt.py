"""MQTT fixtures for integration tests.

A conftest (or a test module) pulls them in with
``from conftest_mqtt import broker_fixture``; the fixture's name is ``broker``
(registered under that name, so the import does not shadow test arguments).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from broker import Broker

__all__ = ["broker_fixture"]


@pytest.fixture(name="broker")
def broker_fixture(tmp_path: Path) -> Iterator[Broker]:
    """A started broker of its own on a free 127.0.0.1 port (mosquitto, or amqtt)."""
    b = Broker(tmp_path / "broker")
    b.start()
    yield b
    b.close()
