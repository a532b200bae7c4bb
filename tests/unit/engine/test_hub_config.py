"""Hub configuration: the embedded default, a config file, and its validation."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.config import (
    HubConfig,
    HubSettings,
    default_state_dir,
    example_manifests,
    load_config,
)
from engine.errors import BadRequest
from engine.manifest import parse_manifest

ROOT = Path(__file__).resolve().parents[3]


def example_manifests_on_disk() -> list[Path]:
    return sorted(p.resolve() for p in (ROOT / "wasm_tasks").glob("*/task.toml"))


def write(tmp_path: Path, text: str, name: str = "hub.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def rejected(tmp_path: Path, text: str) -> str:
    with pytest.raises(BadRequest) as info:
        load_config(write(tmp_path, text))
    assert info.value.status == 400
    return info.value.message


# -- the embedded default -------------------------------------------------------------


def test_default_loads_every_example_manifest_on_disk() -> None:
    config = load_config()
    on_disk = example_manifests_on_disk()
    assert [p.resolve() for p in config.manifests] == on_disk
    assert [p.resolve() for p in example_manifests()] == on_disk


def test_there_are_at_least_three_examples() -> None:
    assert len(example_manifests_on_disk()) >= 3


def test_every_default_manifest_is_valid_and_names_an_existing_module() -> None:
    manifests = load_config().manifests
    assert manifests  # the check below must not pass vacuously
    for path in manifests:
        manifest = parse_manifest(path.read_bytes(), "toml")
        assert manifest.module, f"{path}: no module"
        assert (path.parent / manifest.module).is_file(), f"{path}: {manifest.module} is missing"


def test_default_hub_settings() -> None:
    hub = load_config().hub
    assert (hub.host, hub.port, hub.max_queue, hub.max_in_flight, hub.memory_budget_mib, hub.max_body_kib) == (
        "127.0.0.1", 8080, 1024, 64, 2048, 1024)
    assert hub.state_dir == default_state_dir()


def test_default_state_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "wasmyard"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "wasmyard"


def test_worker_threads() -> None:
    assert HubSettings(workers=3).worker_threads == 3
    assert HubSettings(workers=0).worker_threads == max(4, 2 * (os.cpu_count() or 1))


# -- a config file ---------------------------------------------------------------------


def test_config_file_with_hub_settings_and_relative_task_paths(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    path = write(tmp_path / "conf", """
[hub]
host = "0.0.0.0"
port = 9000
state_dir = "state"
max_queue = 10
max_in_flight = 3
memory_budget_mib = 512
max_body_kib = 64
inline_threshold_us = 100
workers = 2
history = 50

[[tasks]]
manifest = "tasks/a/task.toml"

[[tasks]]
manifest = "../elsewhere/b.json"
""")
    config = load_config(path)
    assert config.hub == HubSettings(
        host="0.0.0.0", port=9000, state_dir=(tmp_path / "conf" / "state").resolve(), max_queue=10,
        max_in_flight=3, memory_budget_mib=512, max_body_kib=64, inline_threshold_us=100, workers=2, history=50,
    )
    assert config.manifests == [
        (tmp_path / "conf" / "tasks" / "a" / "task.toml").resolve(),
        (tmp_path / "elsewhere" / "b.json").resolve(),
    ]


def test_unset_keys_keep_their_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[hub]\nport = 1234\n"))
    assert config.hub.port == 1234
    defaults = HubSettings()
    assert (config.hub.max_queue, config.hub.history) == (defaults.max_queue, defaults.history)
    assert config.manifests == []


def test_empty_config_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config == HubConfig(hub=HubSettings(), manifests=[])


def test_examples_flag_adds_the_examples_before_listed_tasks(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, 'examples = true\n[[tasks]]\nmanifest = "mine.toml"\n'))
    assert config.manifests == [*example_manifests(), (tmp_path / "mine.toml").resolve()]


def test_absolute_state_dir_and_home_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_config(write(tmp_path, '[hub]\nstate_dir = "~/yard"\n')).hub.state_dir == tmp_path / "home" / "yard"
    absolute = tmp_path / "abs"
    assert load_config(write(tmp_path, f'[hub]\nstate_dir = "{absolute}"\n')).hub.state_dir == absolute


# -- errors ---------------------------------------------------------------------------


def test_unknown_hub_keys(tmp_path: Path) -> None:
    assert rejected(tmp_path, "[hub]\nprot = 1\nzz = 2\n") == "unknown key(s) in [hub]: prot, zz"


def test_unknown_sections(tmp_path: Path) -> None:
    assert rejected(tmp_path, "[zones]\na = 1\n[hubs]\nb = 2\n") == "unknown section(s) in config: hubs, zones"


def test_unknown_key_in_events(tmp_path: Path) -> None:
    assert rejected(tmp_path, "[events]\nmax_hop = 3\n") == "unknown key(s) in [events]: max_hop"


@pytest.mark.parametrize(("text", "section"), [("hub = 5\n", "[hub]"), ("events = 5\n", "[events]"),
                                               ('mqtt = "broker"\n', "[mqtt]"), ("routes = 5\n", "[[routes]]"),
                                               ("routes = [1]\n", "[[routes]]")])
def test_sections_must_be_tables(tmp_path: Path, text: str, section: str) -> None:
    assert rejected(tmp_path, text).startswith(section)


@pytest.mark.parametrize("key", ["port", "max_queue", "max_in_flight", "memory_budget_mib", "max_body_kib",
                                 "inline_threshold_us", "workers", "history"])
@pytest.mark.parametrize("value", ["-1", '"80"', "true", "1.5", "[1]"])
def test_bad_integer_values(tmp_path: Path, key: str, value: str) -> None:
    message = rejected(tmp_path, f"[hub]\n{key} = {value}\n")
    assert message.startswith(f"[hub] {key} must be a non-negative integer, got ")


def test_host_must_be_a_string(tmp_path: Path) -> None:
    assert rejected(tmp_path, "[hub]\nhost = 8080\n") == "[hub] host must be a string, got 8080"


@pytest.mark.parametrize("text", ["tasks = 5\n", 'examples = "no"\n'], ids=["tasks", "examples"])
def test_top_level_values_of_the_wrong_type(tmp_path: Path, text: str) -> None:
    rejected(tmp_path, text)


@pytest.mark.parametrize("entry", ['[[tasks]]\npath = "a.toml"\n', "[[tasks]]\nmanifest = 5\n", 'tasks = ["a.toml"]\n'])
def test_tasks_entries_need_a_manifest_path(tmp_path: Path, entry: str) -> None:
    assert rejected(tmp_path, entry) == "each [[tasks]] entry needs a 'manifest' path"


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[hub\nport = 1\n")
    with pytest.raises(BadRequest) as info:
        load_config(path)
    assert info.value.message.startswith(f"config {path} is not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(BadRequest) as info:
        load_config(path)
    assert info.value.message == f"cannot read config {path}: No such file or directory"
