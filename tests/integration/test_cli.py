"""The ``wasmyard`` command line against a real coordinator process."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hub import ROOT, HubProcess

pytestmark = pytest.mark.integration


def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=60)


def test_run_prints_its_url_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process = HubProcess(tmp_path)
    assert process.url.startswith("http://127.0.0.1:")
    assert process.request("GET", "/healthz").status == 200
    out = process.stop()
    assert process.proc.returncode == 0
    assert "stopping" in out


def test_invoke_with_data_file_and_stdin(hub: HubProcess, tmp_path: Path) -> None:
    done = cli("invoke", "echo", "--data", "hello", "--url", hub.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hello"
    assert b"succeeded" in done.stderr
    f = tmp_path / "in.bin"
    f.write_bytes(b"\x00\x01binary")
    assert cli("invoke", "echo", "--file", str(f), "--url", hub.url).stdout == b"\x00\x01binary"
    assert cli("invoke", "echo", "--url", hub.url, stdin=b"piped").stdout == b"piped"


def test_invoke_async_prints_an_execution_id(hub: HubProcess) -> None:
    done = cli("invoke", "echo", "--data", "x", "--async", "--url", hub.url)
    assert done.returncode == 0
    execution_id = done.stdout.decode().strip()
    assert hub.wait_state(execution_id, {"succeeded"})["state"] == "succeeded"


def test_invoke_unknown_task_fails_with_the_error(hub: HubProcess) -> None:
    done = cli("invoke", "nope", "--data", "x", "--url", hub.url)
    assert done.returncode == 1
    assert b"unknown_task" in done.stderr


def test_tasks_lists_the_examples(hub: HubProcess) -> None:
    done = cli("tasks", "--url", hub.url)
    assert done.returncode == 0
    names = {line.split()[0] for line in done.stdout.decode().splitlines()}
    assert {"echo", "telemetry", "anomaly"} <= names


def test_bad_config_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "hub.toml"
    bad.write_text("[hub]\nport = 'eighty'\n")
    done = cli("run", "--config", str(bad), "--port", "0")
    assert done.returncode == 2
    assert b"port must be a non-negative integer" in done.stderr


def test_unreachable_coordinator_is_a_clear_error() -> None:
    done = cli("tasks", "--url", "http://127.0.0.1:1")
    assert done.returncode != 0
    assert b"cannot reach" in done.stderr
