"""Guest modules written inline as WAT, for unit and integration tests.

Each one does one thing — echo, trap, loop, bomb memory, flood stdout, report
an error — so a test names exactly the behaviour it checks.
"""
from __future__ import annotations

import wasmtime

_HANDLER = """
(module
  (import "wasmyard" "log" (func $log (param i32 i32 i32)))
  (import "wasmyard" "publish" (func $publish (param i32 i32 i32 i32) (result i32)))
  (import "wasmyard" "invoke" (func $invoke (param i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const 16) "{log_text}")
  (data (i32.const 128) "{target}")
  (data (i32.const 192) "guest/out")
  (data (i32.const 256) "bad input: refused")
  (global $count (mut i32) (i32.const 0))
  (func (export "wy_abi_version") (result i32) (i32.const 1))
  (func (export "wy_alloc") (param $n i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub
        (i32.shr_u (i32.add (i32.add (i32.const 1024) (local.get $n)) (i32.const 65535)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then (return (i32.const 0))))))
    (i32.const 1024))
  (func $ok (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32)) (i64.extend_i32_u (local.get $n))))
  (func (export "wy_handle") (param $p i32) (param $n i32) (result i64)
    {body})
)
"""

BODIES = {
    # output = input
    "echo": "(call $ok (local.get $p) (local.get $n))",
    # log a line, then echo
    "log": "(call $log (i32.const 1) (i32.const 16) (i32.const {log_len})) (call $ok (local.get $p) (local.get $n))",
    # count calls in a global: proves a pooled instance keeps state
    "counter": "(global.set $count (i32.add (global.get $count) (i32.const 1))) "
               "(i32.store (i32.const 512) (global.get $count)) (call $ok (i32.const 512) (i32.const 4))",
    "trap": "unreachable",
    "divzero": "(i64.extend_i32_s (i32.div_s (i32.const 1) (i32.sub (local.get $n) (local.get $n))))",
    "loop": "(loop $l (br $l)) (i64.const 0)",
    # grow one page at a time until refused, then trap (what a C malloc failure ends in)
    "membomb": "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable",
    # the guest's own, reported error (bit 63 set)
    "error": "(i64.or (i64.const 0x8000010000000000) (i64.const 18))",
    # an output pointer far outside linear memory
    "oob": "(i64.const 0x7fff000000000010)",
    # publish the input on guest/out, then echo it; the status lands at 508
    "publish": "(i32.store (i32.const 508) (call $publish (i32.const 192) (i32.const 9) (local.get $p) (local.get $n))) "
               "(call $ok (local.get $p) (local.get $n))",
    # publish the input until the host refuses, then answer the refusal code (4 bytes)
    "publish_flood": "(block $stop (loop $l "
                     "(i32.store (i32.const 512) (call $publish (i32.const 192) (i32.const 9) (local.get $p) (local.get $n))) "
                     "(br_if $stop (i32.ne (i32.load (i32.const 512)) (i32.const 0))) (br $l))) "
                     "(call $ok (i32.const 512) (i32.const 4))",
    # invoke the task named {target} with the input; answer its output, or the status as 4 bytes
    "invoke": "(local.set $n (call $invoke (i32.const 128) (i32.const {target_len}) (local.get $p) (local.get $n) "
              "(i32.const 32768) (i32.const 16384))) "
              "(if (result i64) (i32.ge_s (local.get $n) (i32.const 0)) "
              "(then (call $ok (i32.const 32768) (local.get $n))) "
              "(else (i32.store (i32.const 512) (local.get $n)) (call $ok (i32.const 512) (i32.const 4))))",
}


def handler_wat(kind: str, pages: int = 1, log_text: str = "hello from wasm", target: str = "echo") -> str:
    body = BODIES[kind].replace("{log_len}", str(len(log_text))).replace("{target_len}", str(len(target)))
    return _HANDLER.format(pages=pages, body=body, log_text=log_text, target=target)


def handler_wasm(kind: str, **kw: object) -> bytes:
    return wasmtime.wat2wasm(handler_wat(kind, **kw))  # type: ignore[arg-type]


_COMMAND = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  {imports}
  (memory (export "memory") 1)
  (data (i32.const 32) "log line on stderr\\n")
  (data (i32.const 200) "outer:")
  (data (i32.const 220) "cecho")
  (data (i32.const 240) "inner")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    {body})
)
"""

COMMAND_BODIES = {
    # copy stdin to stdout in 4 KiB reads, and say so on stderr
    "echo": """
    (call $write (i32.const 2) (i32.const 32) (i32.const 19))
    (block $done (loop $more
      (i32.store (i32.const 16) (i32.const 4096))
      (i32.store (i32.const 20) (i32.const 4096))
      (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
      (br_if $done (i32.eqz (i32.load (i32.const 24))))
      (call $write (i32.const 1) (i32.const 4096) (i32.load (i32.const 24)))
      (br $more)))""",
    "exit3": "(call $proc_exit (i32.const 3))",
    "trap": "unreachable",
    "loop": "(loop $l (br $l))",
    "membomb": "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable",
    # write "outer:", invoke the command task "cecho" with "inner", write what it answered
    "nested": """
    (call $write (i32.const 1) (i32.const 200) (i32.const 6))
    (call $write (i32.const 1) (i32.const 8192)
      (call $invoke (i32.const 220) (i32.const 5) (i32.const 240) (i32.const 5) (i32.const 8192) (i32.const 4096)))""",
    # write 4 KiB to stdout forever
    "flood": "(loop $l (call $write (i32.const 1) (i32.const 4096) (i32.const 4096)) (br $l))",
}


# Imports beyond WASI, only for the guests that use them (plain wasmtime linkers lack them).
COMMAND_IMPORTS = {
    "nested": '(import "wasmyard" "invoke" (func $invoke (param i32 i32 i32 i32 i32 i32) (result i32)))',
}


def command_wat(kind: str) -> str:
    return _COMMAND.format(body=COMMAND_BODIES[kind], imports=COMMAND_IMPORTS.get(kind, ""))


def command_wasm(kind: str) -> bytes:
    return wasmtime.wat2wasm(command_wat(kind))
