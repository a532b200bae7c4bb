"""Task manifests: TOML and JSON parsing, defaults, and every validation error."""
from __future__ import annotations

import dataclasses

import orjson
import pytest

from engine.errors import InvalidManifest
from engine.manifest import (
    DirGrant,
    Limits,
    Manifest,
    Permissions,
    decode_manifest,
    manifest_from_dict,
    parse_manifest,
)

FULL_TOML = """
name = "sensor-filter"
version = "1.2.3"
kind = "handler"
module = "filter.wasm"
description = "drops outliers"
priority = 5
max_concurrency = 8
isolation = "per-execution"

[limits]
memory_mib = 32
timeout_ms = 250
fuel = 1000000
max_output_kib = 64
max_input_kib = 16

[permissions]
env = { MODE = "strict", LEVEL = "3" }

[[permissions.dirs]]
host = "/var/lib/wasmyard/data"
guest = "/data"
mode = "rw"

[[permissions.dirs]]
host = "/etc/wasmyard"
guest = "/config"
"""

FULL_EXPECTED = Manifest(
    name="sensor-filter",
    kind="handler",
    version="1.2.3",
    module="filter.wasm",
    description="drops outliers",
    priority=5,
    max_concurrency=8,
    isolation="per-execution",
    limits=Limits(memory_mib=32, timeout_ms=250, fuel=1_000_000, max_output_kib=64, max_input_kib=16),
    permissions=Permissions(
        env=(("LEVEL", "3"), ("MODE", "strict")),
        dirs=(DirGrant("/var/lib/wasmyard/data", "/data", "rw"), DirGrant("/etc/wasmyard", "/config", "ro")),
    ),
)


def minimal(**extra: object) -> dict[str, object]:
    doc: dict[str, object] = {"name": "t", "kind": "command"}
    doc.update(extra)
    return doc


# -- valid documents -----------------------------------------------------------


def test_full_toml_manifest() -> None:
    assert parse_manifest(FULL_TOML) == FULL_EXPECTED


def test_full_toml_manifest_from_bytes() -> None:
    assert parse_manifest(FULL_TOML.encode()) == FULL_EXPECTED


def test_json_manifest_with_the_same_content() -> None:
    doc = {
        "name": "sensor-filter", "version": "1.2.3", "kind": "handler", "module": "filter.wasm",
        "description": "drops outliers", "priority": 5, "max_concurrency": 8, "isolation": "per-execution",
        "limits": {"memory_mib": 32, "timeout_ms": 250, "fuel": 1_000_000, "max_output_kib": 64, "max_input_kib": 16},
        "permissions": {
            "env": {"MODE": "strict", "LEVEL": "3"},
            "dirs": [{"host": "/var/lib/wasmyard/data", "guest": "/data", "mode": "rw"},
                     {"host": "/etc/wasmyard", "guest": "/config"}],
        },
    }
    text = orjson.dumps(doc)
    assert parse_manifest(text) == FULL_EXPECTED  # format guessed from the leading "{"
    assert parse_manifest(text, "json") == FULL_EXPECTED
    assert parse_manifest(doc) == FULL_EXPECTED  # an already decoded mapping


def test_json_text_with_leading_whitespace_is_guessed_as_json() -> None:
    assert parse_manifest('\n   {"name": "t", "kind": "command"}').name == "t"


def test_defaults_of_a_minimal_command() -> None:
    m = parse_manifest('name = "t"\nkind = "command"\n')
    assert m == Manifest(name="t", kind="command")
    assert (m.version, m.module, m.description, m.priority, m.max_concurrency) == ("0.0.0", None, "", 0, 4)
    assert m.isolation == "per-execution"
    assert m.limits == Limits(memory_mib=16, timeout_ms=1000, fuel=None, max_output_kib=1024, max_input_kib=1024)
    assert m.permissions == Permissions(env=(), dirs=())


def test_handler_defaults_to_pooled() -> None:
    assert parse_manifest(minimal(kind="handler")).isolation == "pooled"


def test_handler_may_ask_for_a_fresh_environment_each_time() -> None:
    assert parse_manifest(minimal(kind="handler", isolation="per-execution")).isolation == "per-execution"


def test_limit_byte_helpers() -> None:
    limits = parse_manifest(minimal(limits={"memory_mib": 3, "max_output_kib": 5})).limits
    assert limits.memory_bytes == 3 * 1024 * 1024
    assert limits.max_output_bytes == 5 * 1024


@pytest.mark.parametrize("name", ["a", "0", "a-b_c", "x" * 63, "task9"])
def test_accepted_names(name: str) -> None:
    assert parse_manifest(minimal(name=name)).name == name


@pytest.mark.parametrize(
    ("key", "lo", "hi"),
    [
        ("memory_mib", 1, 4096),
        ("timeout_ms", 1, 3_600_000),
        ("fuel", 1, 2**62),
        ("max_output_kib", 1, 1 << 20),
        ("max_input_kib", 1, 1 << 20),
    ],
)
def test_limit_bounds_are_inclusive(key: str, lo: int, hi: int) -> None:
    for value in (lo, hi):
        assert getattr(parse_manifest(minimal(limits={key: value})).limits, key) == value


@pytest.mark.parametrize(("key", "lo", "hi"), [("priority", -1000, 1000), ("max_concurrency", 1, 4096)])
def test_top_level_integer_bounds_are_inclusive(key: str, lo: int, hi: int) -> None:
    for value in (lo, hi):
        assert getattr(parse_manifest(minimal(**{key: value})), key) == value


def test_explicit_null_permissions_mean_none_granted() -> None:
    assert parse_manifest(minimal(permissions=None)).permissions == Permissions()


# -- validation errors -----------------------------------------------------------


def rejected(doc: object) -> str:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(doc) if isinstance(doc, (str, bytes)) else manifest_from_dict(doc)
    assert info.value.code == "invalid_manifest" and info.value.status == 400
    return info.value.message


def test_unknown_top_level_keys_are_listed_sorted() -> None:
    message = rejected(minimal(zeta=1, alpha=2))
    assert message == "unknown key(s) in manifest: alpha, zeta"


def test_typo_in_limits_fails_loudly() -> None:
    assert rejected(minimal(limits={"memroy_mib": 32})) == "unknown key(s) in limits: memroy_mib"


def test_unknown_key_in_permissions() -> None:
    assert rejected(minimal(permissions={"network": True})) == "unknown key(s) in permissions: network"


def test_unknown_key_in_a_dirs_entry() -> None:
    message = rejected(minimal(permissions={"dirs": [{"host": "/a", "guest": "/b", "mdoe": "rw"}]}))
    assert "mdoe" in message


def test_document_must_be_a_table() -> None:
    assert rejected(["name", "t"]) == "a manifest must be a table/object"


@pytest.mark.parametrize("name", [None, 7, "", "Upper", "-lead", "_lead", "sp ace", "dot.ted", "x" * 64, "é"])
def test_bad_names(name: object) -> None:
    doc = minimal(name=name) if name is not None else {"kind": "command"}
    message = rejected(doc)
    assert message.startswith("name must match ") and repr(name) in message


def test_name_with_trailing_newline_is_rejected() -> None:
    assert rejected(minimal(name="echo\n")).startswith("name must match ")


@pytest.mark.parametrize("kind", [None, "reactor", "Command", 3])
def test_bad_kind(kind: object) -> None:
    doc = minimal(kind=kind) if kind is not None else {"name": "t"}
    message = rejected(doc)
    assert message == f"kind must be one of command, handler, got {kind!r}"


def test_bad_isolation() -> None:
    message = rejected(minimal(kind="handler", isolation="shared"))
    assert message == "isolation must be one of per-execution, pooled, got 'shared'"


def test_pooled_command_is_refused() -> None:
    message = rejected(minimal(isolation="pooled"))
    assert "only handler tasks can be pooled" in message


@pytest.mark.parametrize(
    ("key", "low", "high", "lo", "hi"),
    [
        ("memory_mib", 0, 4097, 1, 4096),
        ("timeout_ms", 0, 3_600_001, 1, 3_600_000),
        ("fuel", 0, 2**62 + 1, 1, 2**62),
        ("max_output_kib", 0, (1 << 20) + 1, 1, 1 << 20),
        ("max_input_kib", -5, (1 << 20) + 1, 1, 1 << 20),
    ],
)
def test_out_of_range_limits(key: str, low: int, high: int, lo: int, hi: int) -> None:
    for value in (low, high):
        message = rejected(minimal(limits={key: value}))
        assert message == f"{key} must be between {lo} and {hi}, got {value}"


@pytest.mark.parametrize(("key", "value"), [("priority", 1001), ("priority", -1001), ("max_concurrency", 0),
                                            ("max_concurrency", 4097)])
def test_out_of_range_top_level_integers(key: str, value: int) -> None:
    assert f"{key} must be between" in rejected(minimal(**{key: value}))


@pytest.mark.parametrize("value", [True, False, 1.5, 16.0, "16", [16]])
@pytest.mark.parametrize("key", ["memory_mib", "timeout_ms", "fuel", "max_output_kib", "max_input_kib"])
def test_limits_must_be_plain_integers(key: str, value: object) -> None:
    assert rejected(minimal(limits={key: value})) == f"{key} must be an integer, got {value!r}"


@pytest.mark.parametrize("value", [True, 2.0, "2"])
@pytest.mark.parametrize("key", ["priority", "max_concurrency"])
def test_top_level_integers_must_be_plain_integers(key: str, value: object) -> None:
    assert rejected(minimal(**{key: value})) == f"{key} must be an integer, got {value!r}"


@pytest.mark.parametrize("key", ["version", "description", "module"])
def test_string_fields_must_be_strings(key: str) -> None:
    assert rejected(minimal(**{key: 1})) == f"{key} must be a string"


@pytest.mark.parametrize("limits", [5, "fast", [1], None])
def test_limits_must_be_a_table(limits: object) -> None:
    assert rejected(minimal(limits=limits)) == "limits must be a table"


@pytest.mark.parametrize("permissions", ["all", 1, ["env"]])
def test_permissions_must_be_a_table(permissions: object) -> None:
    assert rejected(minimal(permissions=permissions)) == "permissions must be a table"


@pytest.mark.parametrize("env", [["A=1"], {"A": 1}, {"A": None}, "A=1"])
def test_permissions_env_must_map_names_to_strings(env: object) -> None:
    assert rejected(minimal(permissions={"env": env})) == "permissions.env must map names to string values"


@pytest.mark.parametrize(
    "entry",
    [{"host": "/a"}, {"guest": "/b"}, {"host": 1, "guest": "/b"}, {"host": "/a", "guest": None}, "/a:/b", ["/a", "/b"]],
)
def test_dirs_entries_need_host_and_guest_strings(entry: object) -> None:
    message = rejected(minimal(permissions={"dirs": [entry]}))
    assert message == "each permissions.dirs entry needs string 'host' and 'guest'"


@pytest.mark.parametrize("mode", ["wr", "RW", "", 1])
def test_dirs_mode_must_be_ro_or_rw(mode: object) -> None:
    message = rejected(minimal(permissions={"dirs": [{"host": "/a", "guest": "/b", "mode": mode}]}))
    assert message == f"permissions.dirs mode must be 'ro' or 'rw', got {mode!r}"


def test_dirs_must_be_a_list() -> None:
    assert "dirs" in rejected(minimal(permissions={"dirs": 5}))


def test_invalid_toml_text() -> None:
    message = rejected('name = "t"\nkind = \n')
    assert message.startswith("manifest is not valid TOML: ")


def test_invalid_json_text() -> None:
    message = rejected('{"name": "t", "kind": }')
    assert message.startswith("manifest is not valid JSON: ")


def test_explicit_format_wins_over_the_guess() -> None:
    # Valid TOML, but the caller says it is JSON.
    assert rejected_fmt('name = "t"\nkind = "command"\n', "json").startswith("manifest is not valid JSON: ")


def rejected_fmt(text: str, fmt: str) -> str:
    with pytest.raises(InvalidManifest) as info:
        parse_manifest(text, fmt)
    return info.value.message


def test_decode_manifest_does_not_validate() -> None:
    assert decode_manifest('name = "NOT VALID"\nextra = 1\n') == {"name": "NOT VALID", "extra": 1}


def test_bytes_that_are_not_utf8_are_decoded_with_replacement() -> None:
    m = parse_manifest(b'name = "t"\nkind = "command"\ndescription = "caf\xe9"\n')
    assert m.description == "caf\ufffd"


# -- to_dict ----------------------------------------------------------------------


def test_to_dict_shape() -> None:
    d = FULL_EXPECTED.to_dict()
    assert d == {
        "name": "sensor-filter",
        "version": "1.2.3",
        "kind": "handler",
        "description": "drops outliers",
        "priority": 5,
        "max_concurrency": 8,
        "isolation": "per-execution",
        "limits": {"memory_mib": 32, "timeout_ms": 250, "fuel": 1_000_000, "max_output_kib": 64, "max_input_kib": 16},
        "permissions": {
            "env": {"LEVEL": "3", "MODE": "strict"},
            "dirs": [{"host": "/var/lib/wasmyard/data", "guest": "/data", "mode": "rw"},
                     {"host": "/etc/wasmyard", "guest": "/config", "mode": "ro"}],
        },
    }


def test_to_dict_omits_fuel_when_unmetered() -> None:
    assert "fuel" not in parse_manifest(minimal()).to_dict()["limits"]


@pytest.mark.parametrize(
    "manifest",
    [
        FULL_EXPECTED,
        Manifest(name="t", kind="command"),
        Manifest(name="h", kind="handler", isolation="pooled"),
        parse_manifest(minimal(limits={"fuel": 7})),
    ],
    ids=["full", "minimal-command", "minimal-handler", "fuel"],
)
def test_to_dict_round_trips(manifest: Manifest) -> None:
    """The module path only means something beside a manifest file; the API view
    (``to_dict``) leaves it out, so the round trip gives everything but it."""
    back = manifest_from_dict(manifest.to_dict())
    assert back == dataclasses.replace(manifest, module=None)
    assert manifest_from_dict(orjson.loads(orjson.dumps(manifest.to_dict()))) == back
