"""The committed example tasks (wasm_tasks/*/*.wasm) against contract v1.

Runs the modules with plain wasmtime, the way a host following
wasm_tasks/README.md ("Contract") would; needs no compiler and no engine code.
"""
from __future__ import annotations

import json
import math
import random
import re
import statistics
import sys
from pathlib import Path

import pytest
import wasmtime

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TASKS_DIR = Path(__file__).resolve().parents[3] / "wasm_tasks"
TASKS = {"echo": "command", "telemetry": "handler", "anomaly": "handler"}
HANDLERS = [name for name, kind in TASKS.items() if kind == "handler"]
PAGE = 65536

ENGINE = wasmtime.Engine()
_modules: dict[str, wasmtime.Module] = {}


def module(name: str) -> wasmtime.Module:
    if name not in _modules:
        _modules[name] = wasmtime.Module.from_file(ENGINE, str(TASKS_DIR / name / f"{name}.wasm"))
    return _modules[name]


def manifest(name: str) -> dict:
    return tomllib.loads((TASKS_DIR / name / "task.toml").read_text())


class Handler:
    """One instance of a handler module, called the way the host calls it."""

    def __init__(self, name: str | wasmtime.Module) -> None:
        self.logs: list[tuple[int, str]] = []
        self.store = wasmtime.Store(ENGINE)
        self.store.set_wasi(wasmtime.WasiConfig())  # no stdio, files or env
        linker = wasmtime.Linker(ENGINE)
        linker.define_wasi()
        logs = self.logs

        def log(caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
            mem = caller["memory"]
            assert isinstance(mem, wasmtime.Memory)
            logs.append((level, bytes(mem.read(caller, ptr, ptr + length)).decode()))

        i32 = wasmtime.ValType.i32()
        linker.define_func("wasmyard", "log", wasmtime.FuncType([i32, i32, i32], []), log, access_caller=True)
        mod = module(name) if isinstance(name, str) else name
        self.instance = linker.instantiate(self.store, mod)
        self.exports = self.instance.exports(self.store)
        if "_initialize" in self.exports:
            self.func("_initialize")(self.store)
        memory = self.exports["memory"]
        assert isinstance(memory, wasmtime.Memory)
        self.memory = memory

    def func(self, name: str) -> wasmtime.Func:
        f = self.exports[name]
        assert isinstance(f, wasmtime.Func)
        return f

    def raw(self, data: bytes) -> int:
        ptr = self.func("wy_alloc")(self.store, len(data))
        assert isinstance(ptr, int) and ptr != 0, "wy_alloc failed"
        self.memory.write(self.store, data, ptr)
        result = self.func("wy_handle")(self.store, ptr, len(data))
        assert isinstance(result, int)
        return result

    def call(self, data: bytes) -> tuple[bool, bytes]:
        """(True, output) or (False, error message bytes)."""
        result = self.raw(data)
        bits = result & 0xFFFF_FFFF_FFFF_FFFF
        ptr, length = (bits >> 32) & 0x7FFF_FFFF, bits & 0xFFFF_FFFF
        return result >= 0, bytes(self.memory.read(self.store, ptr, ptr + length))

    def ok(self, doc: object) -> dict:
        good, out = self.call(json.dumps(doc).encode())
        assert good, out.decode()
        return json.loads(out)

    def error(self, data: bytes) -> str:
        good, out = self.call(data)
        assert not good, f"expected an error reply, got {out!r}"
        return out.decode("utf-8")

    def pages(self) -> int:
        return self.memory.size(self.store)


def run_command(name: str, stdin: bytes, tmp_path: Path) -> tuple[int, bytes, bytes]:
    """Runs a command task once; (exit code, stdout, stderr)."""
    (tmp_path / "stdin").write_bytes(stdin)
    wasi = wasmtime.WasiConfig()
    wasi.stdin_file = str(tmp_path / "stdin")
    wasi.stdout_file = str(tmp_path / "stdout")
    wasi.stderr_file = str(tmp_path / "stderr")
    store = wasmtime.Store(ENGINE)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(ENGINE)
    linker.define_wasi()
    instance = linker.instantiate(store, module(name))
    code = 0
    try:
        start = instance.exports(store)["_start"]
        assert isinstance(start, wasmtime.Func)
        start(store)
    except wasmtime.ExitTrap as exc:
        code = exc.code
    return code, (tmp_path / "stdout").read_bytes(), (tmp_path / "stderr").read_bytes()


# ---- every task -------------------------------------------------------------


@pytest.mark.parametrize("name", TASKS)
def test_manifest_matches_module(name: str) -> None:
    m = manifest(name)
    assert set(m) <= {"name", "version", "kind", "module", "description", "priority",
                      "max_concurrency", "isolation", "limits", "permissions"}
    assert m["name"] == name and re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", m["name"])
    assert re.fullmatch(r"\d+\.\d+\.\d+", m["version"])
    assert m["kind"] == TASKS[name]
    assert (TASKS_DIR / name / m["module"]).is_file()
    assert m["isolation"] in ("pooled", "per-execution")
    if m["kind"] == "command":
        assert m["isolation"] == "per-execution"
    assert isinstance(m["priority"], int) and m["max_concurrency"] >= 1
    limits = m["limits"]
    assert set(limits) <= {"memory_mib", "timeout_ms", "fuel", "max_output_kib"}
    assert limits["timeout_ms"] > 0 and limits["max_output_kib"] > 0
    mem = next(e.type for e in module(name).exports if e.name == "memory")
    assert isinstance(mem, wasmtime.MemoryType)
    assert mem.limits.min * PAGE <= limits["memory_mib"] << 20
    assert mem.limits.min * PAGE <= 2 << 20, "initial memory should stay small"
    assert set(m["permissions"]) <= {"env", "dirs"}


@pytest.mark.parametrize("name", TASKS)
def test_imports_stay_inside_contract(name: str) -> None:
    for imp in module(name).imports:
        assert imp.module == "wasi_snapshot_preview1" or (imp.module, imp.name) == ("wasmyard", "log")


@pytest.mark.parametrize("name", HANDLERS)
def test_handler_exports_and_version(name: str) -> None:
    exports = {e.name: e.type for e in module(name).exports}
    assert {"memory", "wy_abi_version", "wy_alloc", "wy_handle"} <= set(exports)

    def signature(export: str) -> tuple[list[str], list[str]]:
        t = exports[export]
        assert isinstance(t, wasmtime.FuncType)
        return [str(p) for p in t.params], [str(r) for r in t.results]

    assert signature("wy_abi_version") == ([], ["i32"])
    assert signature("wy_alloc") == (["i32"], ["i32"])
    assert signature("wy_handle") == (["i32", "i32"], ["i64"])
    if "_initialize" in exports:
        assert signature("_initialize") == ([], [])
    h = Handler(name)
    assert h.func("wy_abi_version")(h.store) == 1


@pytest.mark.parametrize("name", HANDLERS)
def test_handler_alloc_gives_writable_room(name: str) -> None:
    h = Handler(name)
    assert h.func("wy_alloc")(h.store, 0) != 0
    for size in (1, 100, 5 * PAGE + 3):
        ptr = h.func("wy_alloc")(h.store, size)
        assert ptr != 0 and ptr + size <= h.pages() * PAGE
        h.memory.write(h.store, b"\xab" * size, ptr)


@pytest.mark.parametrize("name", HANDLERS)
def test_handler_arena_is_reused_across_executions(name: str) -> None:
    h = Handler(name)
    big = json.dumps({"celsius": 20.0, "value": 20.0, "pad": "x" * 300_000}).encode()
    assert h.call(big)[0]
    pages = h.pages()
    for _ in range(30):
        assert h.call(big)[0]
    assert h.pages() == pages, "memory keeps growing: the per-execution arena is not reset"


@pytest.mark.parametrize("name", HANDLERS)
def test_handler_error_replies_are_flagged(name: str) -> None:
    h = Handler(name)
    result = h.raw(b"{not json")
    assert result < 0
    assert h.error(b"{not json").startswith(f"{name}: ")
    # The instance stays usable after an error reply.
    assert h.call(json.dumps({"celsius": 1, "value": 1}).encode())[0]


# ---- echo -------------------------------------------------------------------


def test_echo_round_trips_one_mib_of_random_bytes(tmp_path: Path) -> None:
    data = random.Random(7).randbytes(1 << 20)
    code, out, err = run_command("echo", data, tmp_path)
    assert code == 0
    assert out == data
    assert err == b"echo: 1048576 bytes\n"


@pytest.mark.parametrize("data", [b"", b"hello\n", bytes(range(256)) * 3, b"\0" * 70_000],
                         ids=["empty", "text", "all-bytes", "zeros-over-buffer"])
def test_echo_round_trips(data: bytes, tmp_path: Path) -> None:
    code, out, err = run_command("echo", data, tmp_path)
    assert (code, out, err) == (0, data, f"echo: {len(data)} bytes\n".encode())


def test_echo_uses_no_args_or_env() -> None:
    names = {imp.name for imp in module("echo").imports}
    assert not names & {"args_get", "args_sizes_get", "environ_get", "environ_sizes_get"}


# ---- telemetry --------------------------------------------------------------


@pytest.fixture
def telemetry() -> Handler:
    return Handler("telemetry")


def test_telemetry_converts_celsius(telemetry: Handler) -> None:
    good, out = telemetry.call(b'{"device":"t-17","celsius":21.5}')
    assert good
    assert out == b'{"device":"t-17","celsius":21.5,"fahrenheit":70.7,"kelvin":294.65}'


def test_telemetry_converts_fahrenheit(telemetry: Handler) -> None:
    assert telemetry.ok({"device": "t-17", "fahrenheit": 70.7}) == {
        "device": "t-17", "celsius": 21.5, "fahrenheit": 70.7, "kelvin": 294.65}
    assert telemetry.ok({"fahrenheit": 100}) == {"celsius": 37.78, "fahrenheit": 100, "kelvin": 310.93}


@pytest.mark.parametrize("celsius", [-273.15, -40, -17.7777, 0, 0.004, 36.6, 99.999, 1000, 1e9])
def test_telemetry_rounds_to_two_decimals(telemetry: Handler, celsius: float) -> None:
    out = telemetry.ok({"celsius": celsius, "unit_note": [1, {"x": None}]})
    assert set(out) == {"celsius", "fahrenheit", "kelvin"}
    assert out["celsius"] == round(celsius, 2)
    assert math.isclose(out["fahrenheit"], celsius * 9 / 5 + 32, abs_tol=0.005 + 1e-9)
    assert math.isclose(out["kelvin"], celsius + 273.15, abs_tol=0.005 + 1e-9)
    for v in out.values():
        assert round(v, 2) == v


def test_telemetry_keeps_device_text_exact(telemetry: Handler) -> None:
    device = 'hall "B" / sensor\\7 – ü\n'
    assert telemetry.ok({"device": device, "celsius": 1})["device"] == device


def test_telemetry_many_executions_in_one_instance(telemetry: Handler) -> None:
    rng = random.Random(3)
    for i in range(300):
        c = round(rng.uniform(-50, 150), 2)
        assert telemetry.ok({"device": f"d{i}", "celsius": c})["celsius"] == c


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not valid JSON"),
        (b"21.5", "expected a JSON object"),
        (b'{"celsius":21.5', "not valid JSON"),
        (b'{"celsius":21.5} {}', "not valid JSON"),
        (b'{"device":"t-17"}', "missing temperature"),
        (b'{"device":"t-17","celsius":null}', "missing temperature"),
        (b'{"celsius":"21.5"}', "must be numbers"),
        (b'{"device":17,"celsius":21.5}', '"device" must be a string'),
        (b'{"celsius":-300}', "out of range"),
        (b'{"fahrenheit":1e400}', "out of range"),
    ],
)
def test_telemetry_errors(telemetry: Handler, data: bytes, needle: str) -> None:
    assert needle in telemetry.error(data)


# ---- anomaly ----------------------------------------------------------------


@pytest.fixture
def anomaly() -> Handler:
    return Handler("anomaly")


def test_anomaly_flags_outlier_after_steady_series(anomaly: Handler) -> None:
    steady = [20.0, 20.1, 19.9, 20.05, 19.95, 20.0, 20.1, 19.9, 20.0, 20.05]
    for i, v in enumerate(steady):
        out = anomaly.ok({"value": v})
        assert out["count"] == i and out["anomaly"] is False
    out = anomaly.ok({"value": 35.0})
    assert out["anomaly"] is True and out["count"] == len(steady)
    assert out["mean"] == pytest.approx(statistics.mean(steady), abs=1e-6)
    assert out["stddev"] == pytest.approx(statistics.stdev(steady), abs=1e-6)
    assert out["z"] > 3
    assert anomaly.logs and anomaly.logs[-1][0] == 2 and "35" in anomaly.logs[-1][1]
    # The outlier joined the window; the next ordinary reading is not flagged.
    assert anomaly.ok({"value": 20.0})["anomaly"] is False


def test_anomaly_state_is_per_instance(anomaly: Handler) -> None:
    for _ in range(5):
        anomaly.ok({"value": 1})
    assert anomaly.ok({"value": 1})["count"] == 5
    assert Handler("anomaly").ok({"value": 1})["count"] == 0


def test_anomaly_matches_reference_over_rolling_window(anomaly: Handler) -> None:
    rng = random.Random(11)
    seen: list[float] = []
    for i in range(100):
        v = round(rng.gauss(50, 5), 3) if i % 17 else 50 + 40 * rng.choice([-1, 1])
        out = anomaly.ok({"celsius": v})
        base = seen[-32:]
        assert out["count"] == len(base) and out["value"] == pytest.approx(v, abs=1e-6)
        if len(base) >= 2:
            mean, sd = statistics.mean(base), statistics.stdev(base)
            z = (v - mean) / sd
            assert out["mean"] == pytest.approx(mean, abs=1e-6)
            assert out["stddev"] == pytest.approx(sd, abs=1e-6)
            assert out["z"] == pytest.approx(z, abs=1e-5)
            assert out["anomaly"] is (len(base) >= 8 and abs(z) > 3)
        seen.append(v)
    assert any(v == 90 or v == 10 for v in seen)
    assert len(anomaly.logs) == sum(1 for level, _ in anomaly.logs if level == 2)


def test_anomaly_needs_eight_readings(anomaly: Handler) -> None:
    for v in [1.0, 1.1, 0.9, 1.0, 1.1, 0.9, 1.0]:
        anomaly.ok({"value": v})
    out = anomaly.ok({"value": 1000.0})
    assert out["count"] == 7 and abs(out["z"]) > 3 and out["anomaly"] is False


def test_anomaly_flat_window(anomaly: Handler) -> None:
    for _ in range(8):
        assert anomaly.ok({"value": 0.1})["z"] == 0
    out = anomaly.ok({"value": 0.1})
    assert (out["stddev"], out["z"], out["anomaly"]) == (0, 0, False)
    out = anomaly.ok({"value": 0.2})
    assert out["z"] is None and out["anomaly"] is True


def test_anomaly_prefers_value_and_ignores_nested(anomaly: Handler) -> None:
    out = anomaly.ok({"celsius": 5, "meta": {"value": 99, "list": [1, "a", None, True]}, "value": 7})
    assert out["value"] == 7


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "not valid JSON"),
        (b"[1,2]", "expected a JSON object"),
        (b'{"value": 01}', "not valid JSON, at byte 11"),
        (b'{"value": 1,}', "not valid JSON"),
        (b'{"value": 1} x', "unexpected data"),
        (b'{"reading": 1}', 'missing "value"'),
        (b'{"value": "1"}', '"value" must be a number'),
        (b'{"celsius": true}', '"celsius" must be a number'),
        (b'{"value": 1e999}', "out of range"),
        (b"[" * 100 + b"]" * 100, "expected a JSON object"),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "not valid JSON"),
    ],
)
def test_anomaly_errors(anomaly: Handler, data: bytes, needle: str) -> None:
    assert needle in anomaly.error(data)
    assert anomaly.ok({"value": 1})["count"] == 0, "a rejected reading must not join the window"


# ---- the contract's own example ---------------------------------------------


def test_readme_wat_handler_follows_the_contract() -> None:
    readme = (TASKS_DIR / "README.md").read_text()
    (wat,) = re.findall(r"```wat\n(.*?)```", readme, re.S)
    h = Handler(wasmtime.Module(ENGINE, wat))
    assert h.func("wy_abi_version")(h.store) == 1
    assert h.call(b"hello") == (True, b"hello")
    big = bytes(range(256)) * 1000
    assert h.call(big) == (True, big)
    assert h.raw(b"") < 0 and h.error(b"") == "empty input"
