"""A real MQTT broker on 127.0.0.1 for tests and benchmarks.

Debian's mosquitto when it is installed (the broker hubs meet in the field),
otherwise amqtt's broker from PyPI, each as a child process on a port chosen
once, so ``restart()`` brings the broker back where clients expect it.
``WASMYARD_TEST_BROKER=amqtt`` forces the fallback.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["Broker", "Peer", "free_port", "Received"]

Received = list[tuple[str, bytes, int]]

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_path() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((p for p in MOSQUITTO_PATHS if os.access(p, os.X_OK)), None)


class Broker:
    """One broker process; ``start``/``stop``/``restart`` keep the same port."""

    def __init__(self, workdir: Path | None = None, port: int | None = None, kind: str | None = None) -> None:
        kind = kind or os.environ.get("WASMYARD_TEST_BROKER") or ("mosquitto" if mosquitto_path() else "amqtt")
        if kind not in ("mosquitto", "amqtt"):
            raise ValueError(f"unknown broker kind {kind!r}")
        self.kind = kind
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="broker-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{kind}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._args = self._configure()

    def _configure(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.workdir / f"mosquitto-{self.port}.conf"
            conf.write_text(
                f"listener {self.port} 127.0.0.1\n"
                "allow_anonymous true\n"
                "persistence false\n"
                "log_dest stderr\n"
                "log_type error\nlog_type warning\nlog_type notice\n"
            )
            exe = mosquitto_path()
            if exe is None:
                raise RuntimeError("mosquitto is not installed")
            return [exe, "-c", str(conf)]
        conf = self.workdir / f"amqtt-{self.port}.yaml"
        conf.write_text(
            "listeners:\n"
            "  default:\n"
            "    type: tcp\n"
            f"    bind: 127.0.0.1:{self.port}\n"
            "plugins:\n"
            "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
            "    allow_anonymous: true\n"
        )
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)]

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 15.0) -> Broker:
        """Start the broker and return once its port accepts connections."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.kind} did not listen on {self.port}: {self.log_tail()}") from None
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker the way a service manager would (it closes its clients)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        # amqtt shuts down cleanly on SIGINT; mosquitto on SIGTERM.
        proc.send_signal(signal.SIGINT if self.kind == "amqtt" else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open, nothing is answered."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Crash the broker (SIGKILL): no goodbyes, the kernel resets its connections."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def restart(self) -> Broker:
        self.stop()
        return self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Broker {self.kind} 127.0.0.1:{self.port} {'running' if self.running else 'stopped'}>"


class Peer:
    """A device or cloud client: paho with its own thread, outside the bridge."""

    def __init__(self, port: int, subscribe: str | None = None, qos: int = 1) -> None:
        self.messages: Received = []
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-{secrets.token_hex(3)}")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload), m.qos))
        self.client.on_subscribe = lambda c, u, mid, rc, p: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if subscribe is not None:
            self.client.subscribe(subscribe, qos)
            assert self._subscribed.wait(5), "peer subscription not acknowledged"

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.client.publish(topic, payload, qos).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
