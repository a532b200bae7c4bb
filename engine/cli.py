"""``wasmyard``: run a hub, invoke its tasks, list them."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import urllib.error
import urllib.request

import orjson

from .config import load_config
from .errors import WasmyardError

__all__ = ["main"]

DEFAULT_URL = os.environ.get("WASMYARD_URL", "http://127.0.0.1:8080")


def _request(method: str, url: str, data: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except urllib.error.URLError as exc:
        raise SystemExit(f"wasmyard: cannot reach {url}: {exc.reason}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    from .server import run_forever, use_uvloop

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except WasmyardError as exc:
        print(f"wasmyard: {exc.message}", file=sys.stderr)
        return 2
    if args.state_dir:
        config.hub.state_dir = args.state_dir
    use_uvloop()
    try:
        asyncio.run(run_forever(config, args.host, args.port))
    except WasmyardError as exc:
        print(f"wasmyard: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"wasmyard: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_invoke(args: argparse.Namespace) -> int:
    if args.file:
        with open(args.file, "rb") as f:
            data = f.read()
    elif args.data is not None:
        data = args.data.encode()
    else:
        data = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    url = f"{args.url}/tasks/{args.name}/invoke" + ("?mode=async" if args.async_ else "")
    status, headers, body = _request("POST", url, data)
    if status >= 400:
        sys.stderr.write(body.decode("utf-8", "replace") + "\n")
        return 1
    if args.async_:
        print(orjson.loads(body)["id"])
        return 0
    sys.stdout.buffer.write(body)
    if body and not body.endswith(b"\n") and sys.stdout.isatty():
        sys.stdout.write("\n")
    print(f"execution {headers.get('X-Wasmyard-Execution-Id')} {headers.get('X-Wasmyard-Status')} "
          f"in {headers.get('X-Wasmyard-Duration-Ms')} ms", file=sys.stderr)
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    status, _, body = _request("GET", f"{args.url}/tasks")
    if status >= 400:
        sys.stderr.write(body.decode("utf-8", "replace") + "\n")
        return 1
    for task in orjson.loads(body)["tasks"]:
        limits = task["limits"]
        print(f"{task['name']:<16} {task['version']:<8} {task['kind']:<8} {task['isolation']:<14} "
              f"mem={limits['memory_mib']}MiB timeout={limits['timeout_ms']}ms  {task['description']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wasmyard", description="A coordinator for edge hubs.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="start the coordinator (embedded default config unless --config)")
    run.add_argument("--config", help="hub config file (TOML)")
    run.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    run.add_argument("--port", type=int, help="port to listen on (0 picks a free one; default 8080)")
    run.add_argument("--state-dir", help="where compiled modules and state are kept")
    run.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    run.set_defaults(func=_cmd_run)
    inv = sub.add_parser("invoke", help="invoke a task and print its output")
    inv.add_argument("name")
    src = inv.add_mutually_exclusive_group()
    src.add_argument("--data", help="input as a string")
    src.add_argument("--file", help="input from a file")
    inv.add_argument("--async", dest="async_", action="store_true", help="return the execution id at once")
    inv.add_argument("--url", default=DEFAULT_URL, help=f"coordinator URL (default {DEFAULT_URL})")
    inv.set_defaults(func=_cmd_invoke)
    tasks = sub.add_parser("tasks", help="list registered tasks")
    tasks.add_argument("--url", default=DEFAULT_URL)
    tasks.set_defaults(func=_cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
