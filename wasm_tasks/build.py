"""Rebuild the example tasks in this folder.

    .venv/bin/python wasm_tasks/build.py              # every task
    .venv/bin/python wasm_tasks/build.py echo         # some tasks
    .venv/bin/python wasm_tasks/build.py --check      # rebuild, compare with the committed .wasm

Toolchains, found in this order:

* C:   Debian clang (any ``clang``/``clang-NN`` on PATH, or ``$CLANG``) with the
       wasm32-wasi target, wasi-libc and compiler-rt for wasm32 (Debian packages
       clang, lld, wasi-libc, libclang-rt-dev-wasm32; ``$WASI_SYSROOT`` points it
       at another sysroot such as wasi-sdk's); else ``python -m ziglang cc``
       (PyPI package ziglang), which brings its own wasi-libc.
* Zig: ``python -m ziglang`` (PyPI package ziglang).
* Binaryen's ``wasm-opt``, when on PATH, shrinks every module afterwards.

Intermediate files go to ``wasm_tasks/build/`` (ignored by git); only the final
``<task>/<task>.wasm`` is written next to its source.  With the same toolchain
versions the output is byte-for-byte the same (no debug info, no names, no
producers section, no paths).  After each build the manifest is checked
against the module: kind and exports, and memory_mib against the module's
initial memory.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
STACK_SIZE = 65536  # bytes; the stack sits below the data so an overflow traps

# wasm features per -mcpu, spelled for wasm-opt.  C is built for the MVP
# (portable to any engine); Zig for "lime1", its default.
WASM_OPT_FEATURES = {
    "mvp": ["--mvp-features"],
    "lime1": [
        "--mvp-features",
        "--enable-bulk-memory",
        "--enable-extended-const",
        "--enable-multivalue",
        "--enable-mutable-globals",
        "--enable-nontrapping-float-to-int",
        "--enable-sign-ext",
    ],
}

HANDLER_EXPORTS = {"memory", "wy_abi_version", "wy_alloc", "wy_handle"}
COMMAND_EXPORTS = {"memory", "_start"}
MANIFEST_KEYS = {
    "name", "version", "kind", "module", "description", "priority",
    "max_concurrency", "isolation", "limits", "permissions",
}
LIMIT_KEYS = {"memory_mib", "timeout_ms", "fuel", "max_output_kib"}
PERMISSION_KEYS = {"env", "dirs"}


@dataclass(frozen=True)
class Task:
    name: str
    language: str  # "c" | "zig"
    source: str
    kind: str  # "command" | "handler"
    cpu: str = "mvp"
    exports: tuple[str, ...] = field(default=())  # zig: symbols to export


TASKS = [
    Task("echo", "c", "echo/echo.c", "command"),
    Task("telemetry", "zig", "telemetry/telemetry.zig", "handler", cpu="lime1",
         exports=("wy_abi_version", "wy_alloc", "wy_handle")),
    Task("anomaly", "c", "anomaly/anomaly.c", "handler"),
]


class BuildError(Exception):
    pass


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except OSError as exc:
        raise BuildError(f"cannot run {cmd[0]}: {exc}") from exc
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}{proc.stdout}")
    return proc


def first_line(cmd: list[str]) -> str:
    out = run(cmd)
    return (out.stdout or out.stderr).strip().splitlines()[0]


# ---- toolchains -------------------------------------------------------------


@dataclass
class Toolchain:
    label: str  # what the build report prints
    cc: list[str]  # C compiler driver, ready for --target/-target
    kind: str  # "clang" | "zigcc" | "zig"


def ziglang() -> list[str] | None:
    cmd = [sys.executable, "-m", "ziglang"]
    try:
        return cmd if subprocess.run(cmd + ["version"], capture_output=True).returncode == 0 else None
    except OSError:
        return None


def find_clang() -> str | None:
    if os.environ.get("CLANG"):
        return os.environ["CLANG"]
    names = ["clang"] + [f"clang-{v}" for v in range(30, 13, -1)]
    return next((p for p in map(shutil.which, names) if p), None)


def clang_target_args() -> list[str]:
    args = ["--target=wasm32-wasi"]
    if os.environ.get("WASI_SYSROOT"):
        args.append(f"--sysroot={os.environ['WASI_SYSROOT']}")
    return args


def clang_works(clang: str) -> str | None:
    """None if clang links a WASI program here, else why not."""
    probe = BUILD / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "probe.c").write_text("#include <unistd.h>\nint main(void) { return write(1, \"\", 0); }\n")
    try:
        proc = subprocess.run(
            [clang, *clang_target_args(), "probe.c", "-o", "probe.wasm"],
            cwd=probe, capture_output=True, text=True,
        )
    except OSError as exc:
        return f"{clang}: {exc.strerror}"
    if proc.returncode == 0:
        return None
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return f"{clang} cannot link a wasm32-wasi program: {lines[-1] if lines else proc.returncode}"


def c_toolchain() -> Toolchain:
    clang = find_clang()
    why = "no clang on PATH" if clang is None else clang_works(clang)
    if clang is not None and why is None:
        sysroot = os.environ.get("WASI_SYSROOT", "Debian wasi-libc")
        return Toolchain(f"{first_line([clang, '--version'])} [wasm32-wasi, {sysroot}]", [clang], "clang")
    zig = ziglang()
    if zig is not None:
        return Toolchain(f"zig cc {first_line(zig + ['version'])} [wasm32-wasi, bundled wasi-libc]", zig + ["cc"], "zigcc")
    raise BuildError(
        "no C toolchain for wasm32-wasi:\n"
        f"  Debian clang: {why}\n"
        "  ziglang: not installed\n"
        "install Debian's clang lld wasi-libc libclang-rt-dev-wasm32, or `pip install ziglang`"
    )


def zig_toolchain() -> Toolchain:
    zig = ziglang()
    if zig is None:
        raise BuildError("no Zig toolchain: `pip install ziglang` (provides `python -m ziglang`)")
    return Toolchain(f"zig {first_line(zig + ['version'])} [wasm32-freestanding]", zig, "zig")


# ---- builds -----------------------------------------------------------------


def build_c(task: Task, tc: Toolchain, out: Path) -> None:
    work = out.parent
    obj = work / f"{task.name}.o"
    target = clang_target_args() if tc.kind == "clang" else ["-target", "wasm32-wasi"]
    run([
        *tc.cc, *target, f"-mcpu={task.cpu}", "-Oz", "-std=c11",
        "-Wall", "-Wextra", "-Werror",
        "-I", str(HERE / "include"), f"-ffile-prefix-map={HERE}=.",
        "-c", str(HERE / task.source), "-o", str(obj),
    ])
    # No -O at link time: Debian clang would otherwise run wasm-opt by itself.
    link = [*tc.cc, *target, f"-mcpu={task.cpu}"]
    if task.kind == "handler":
        link.append("-mexec-model=reactor")
    link += [str(obj), "-o", str(out), f"-Wl,-z,stack-size={STACK_SIZE}"]
    if tc.kind == "clang":
        link += ["-Wl,--stack-first", "-Wl,--strip-all"]
    else:  # zig's linker puts the stack first already
        link += ["-s"]
    run(link)


def build_zig(task: Task, tc: Toolchain, out: Path) -> None:
    run([
        *tc.cc, "build-exe", str(HERE / task.source),
        "-target", "wasm32-freestanding", f"-mcpu={task.cpu}",
        "-O", "ReleaseSmall", "-fstrip", "-fno-entry",
        *(f"--export={sym}" for sym in task.exports),
        "--stack", str(STACK_SIZE),
        "--cache-dir", str(BUILD / "zig-cache"),
        "--global-cache-dir", str(BUILD / "zig-global-cache"),
        f"-femit-bin={out}",
    ], cwd=out.parent)


def wasm_opt(task: Task, path: Path) -> str:
    exe = shutil.which("wasm-opt")
    if exe is None:
        return "no wasm-opt"
    run([exe, "-Oz", *WASM_OPT_FEATURES[task.cpu], "--strip-debug", "--strip-producers",
         str(path), "-o", str(path)])
    return first_line([exe, "--version"])


# ---- reading a module (just enough for the manifest check) ------------------


def _leb(b: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = b[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, i


def _name(b: bytes, i: int) -> tuple[str, int]:
    n, i = _leb(b, i)
    return b[i:i + n].decode(), i + n


def _limits(b: bytes, i: int) -> tuple[int, int]:
    flags = b[i]
    minimum, i = _leb(b, i + 1)
    if flags & 1:
        _, i = _leb(b, i)
    return minimum, i


def module_info(data: bytes) -> dict:
    """Exports, imports and initial memory pages of a wasm module."""
    if data[:8] != b"\0asm\1\0\0\0":
        raise BuildError("not a wasm module")
    info: dict = {"exports": set(), "imports": [], "memory_pages": None}
    i = 8
    while i < len(data):
        section, (size, i) = data[i], _leb(data, i + 1)
        end, j = i + size, i
        if section == 2:  # imports
            count, j = _leb(data, j)
            for _ in range(count):
                mod, j = _name(data, j)
                name, j = _name(data, j)
                kind, j = data[j], j + 1
                info["imports"].append(f"{mod}.{name}")
                if kind == 0:
                    _, j = _leb(data, j)
                elif kind == 1:
                    _, j = _limits(data, j + 1)
                elif kind == 2:
                    info["memory_pages"], j = _limits(data, j)
                else:
                    j += 2
        elif section == 5:  # memory
            count, j = _leb(data, j)
            if count:
                info["memory_pages"], j = _limits(data, j)
        elif section == 7:  # exports
            count, j = _leb(data, j)
            for _ in range(count):
                name, j = _name(data, j)
                _, j = _leb(data, j + 1)
                info["exports"].add(name)
        i = end
    return info


def check_manifest(task: Task, info: dict) -> list[str]:
    problems: list[str] = []
    path = HERE / task.name / "task.toml"
    m = tomllib.loads(path.read_text())
    if set(m) - MANIFEST_KEYS:
        problems.append(f"unknown keys {sorted(set(m) - MANIFEST_KEYS)}")
    if set(m.get("limits", {})) - LIMIT_KEYS:
        problems.append(f"unknown [limits] keys {sorted(set(m['limits']) - LIMIT_KEYS)}")
    if set(m.get("permissions", {})) - PERMISSION_KEYS:
        problems.append(f"unknown [permissions] keys {sorted(set(m['permissions']) - PERMISSION_KEYS)}")
    if m.get("name") != task.name or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", str(m.get("name"))):
        problems.append(f"name {m.get('name')!r} should be {task.name!r}")
    if m.get("kind") != task.kind:
        problems.append(f"kind {m.get('kind')!r} should be {task.kind!r}")
    if m.get("module") != f"{task.name}.wasm":
        problems.append(f"module {m.get('module')!r} should be {task.name + '.wasm'!r}")
    if m.get("isolation") not in ("pooled", "per-execution"):
        problems.append(f"isolation {m.get('isolation')!r}")
    if m.get("isolation") == "pooled" and task.kind != "handler":
        problems.append("only handlers can be pooled")
    missing = (HANDLER_EXPORTS if task.kind == "handler" else COMMAND_EXPORTS) - info["exports"]
    if missing:
        problems.append(f"module lacks exports {sorted(missing)}")
    foreign = [imp for imp in info["imports"]
               if not imp.startswith("wasi_snapshot_preview1.") and imp != "wasmyard.log"]
    if foreign:
        problems.append(f"module imports {foreign}, outside contract v1")
    need_mib = (info["memory_pages"] or 0) * 65536 / (1 << 20)
    if m.get("limits", {}).get("memory_mib", 0) < need_mib:
        problems.append(f"limits.memory_mib below the module's initial memory ({need_mib:.2f} MiB)")
    return problems


# ---- main -------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rebuild the example wasm tasks.")
    parser.add_argument("tasks", nargs="*", help="task names (default: all)")
    parser.add_argument("--check", action="store_true",
                        help="build into build/ only and fail if a committed .wasm differs")
    args = parser.parse_args(argv)

    known = {t.name: t for t in TASKS}
    unknown = [n for n in args.tasks if n not in known]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; known: {sorted(known)}")
    selected = [known[n] for n in args.tasks] if args.tasks else TASKS

    BUILD.mkdir(exist_ok=True)
    toolchains: dict[str, Toolchain] = {}
    failed = 0
    try:
        for lang in sorted({t.language for t in selected}):
            toolchains[lang] = c_toolchain() if lang == "c" else zig_toolchain()
        for task in selected:
            tc = toolchains[task.language]
            work = BUILD / task.name
            work.mkdir(parents=True, exist_ok=True)
            out = work / f"{task.name}.wasm"
            out.unlink(missing_ok=True)
            (build_c if task.language == "c" else build_zig)(task, tc, out)
            optimizer = wasm_opt(task, out)
            data = out.read_bytes()
            info = module_info(data)
            final = HERE / task.name / f"{task.name}.wasm"
            pages = info["memory_pages"] or 0
            print(f"{task.name}: {tc.label} + {optimizer}")
            print(f"  {final.relative_to(HERE.parent)}: {len(data):,} bytes, initial memory "
                  f"{pages} pages ({pages * 64} KiB), sha256 {hashlib.sha256(data).hexdigest()[:16]}")
            problems = check_manifest(task, info)
            for p in problems:
                print(f"  manifest: {p}")
            failed += bool(problems)
            if args.check:
                same = final.exists() and final.read_bytes() == data
                print(f"  committed module {'matches' if same else 'DIFFERS'}")
                failed += not same
            else:
                final.write_bytes(data)
    except BuildError as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    if failed:
        print(f"{failed} problem(s)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
