"""The MQTT bridge: device events in, coordinator events out, across broker outages.

Why paho-mqtt's threaded client rather than aiomqtt
---------------------------------------------------
aiomqtt 2.5 makes every publish an awaited call (a future, an ``asyncio.Event``
and a ``wait_for`` per message, so QoS 1 waits a PUBACK round trip per message
unless each message gets its own task), and hands every received message over
through a fresh task plus ``asyncio.wait``.  Against mosquitto on this machine,
20,000 messages of 40 bytes: aiomqtt published 5,300/s at QoS 0 and 3,700/s at
QoS 1 (awaiting each) and received 15,000/s.  This bridge, on paho directly,
receives 16,000-23,000/s and publishes 13,000-20,000/s, against 19,000-27,000/s
for two bare paho clients (``bench/mqtt_baseline.py --bridge``; a shared
2-core machine, hence the ranges).  The bridge's contract is a ``publish`` that
never awaits and a bounded buffer, which aiomqtt would have to rebuild on top
of its per-call futures.  So the bridge uses paho-mqtt (the library aiomqtt
wraps) with its documented threaded interface.

How it is built
---------------
* paho's network thread owns the socket of one connection: it reads, parses,
  acknowledges and writes.  ``Client.publish`` is safe to call from the loop
  thread while it runs (paho queues the packet and wakes the thread).
* The connection task (asyncio, owned by the bridge) supervises: TCP connect in
  an executor (it blocks), start the network thread, wait for CONNACK and the
  SUBACK of the subscriptions (so "connected" means "receiving"), feed the
  buffer into paho, notice the loss, stop the thread, back off with jitter,
  start over.  One paho ``Client`` serves every connection, so QoS 1 messages
  it holds unacknowledged are re-sent after a reconnect.
* Hand-off to the loop: the network thread appends to deques and schedules one
  ``call_soon_threadsafe`` per batch (only when nothing is scheduled yet), so a
  burst costs one wake-up of the loop, not one per message.  When the loop
  falls ``INCOMING_HIGH_WATER`` messages behind, the network thread stops
  reading, which pushes back on the broker instead of growing memory.

Delivery: a message waits in the bridge's buffer (``max_buffer`` counts it and
the messages handed to paho but not yet confirmed) until a connection takes it.
QoS 1 messages survive a disconnect; QoS 0 messages still in the buffer do too,
but a QoS 0 message already handed to paho when the link drops is lost and
counted as dropped, as is every publish refused because the buffer is full.
"""
from __future__ import annotations

import asyncio
import logging
import random
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, cast

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ..errors import BadRequest, HostError

__all__ = ["Backoff", "MqttBridge", "MqttSettings"]

log = logging.getLogger("wasmyard.mqtt")

#: Messages handed to paho and not yet confirmed (written at QoS 0, PUBACKed at QoS 1).
HANDOFF_WINDOW = 512
#: Messages handed to paho per turn of the connection task before it yields the loop.
PUMP_BATCH = 128
#: Received messages delivered per turn of the loop before it yields.
DELIVER_BATCH = 1024
#: Received messages waiting for the loop before the network thread stops reading.
INCOMING_HIGH_WATER = 10_000
#: Seconds allowed for CONNACK and SUBACK once the TCP connection is up.
HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds to wait for the network thread to finish before closing the socket under it.
STOP_TIMEOUT_S = 5.0

_OK = MQTTErrorCode.MQTT_ERR_SUCCESS
_NO_CONN = MQTTErrorCode.MQTT_ERR_NO_CONN

OnMessage = Callable[[str, bytes, int], None]


def _client_id() -> str:
    return f"wasmyard-{secrets.token_hex(4)}"


@dataclass
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = field(default_factory=_client_id)
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    #: (topic filter, qos) pairs, subscribed again after every connect.
    subscriptions: list[tuple[str, int]] = field(default_factory=lambda: [("devices/#", 1)])
    #: Messages waiting to be published while disconnected or busy.
    max_buffer: int = 10_000
    reconnect_min_s: float = 0.1
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        """Refuse a bad [mqtt] table at start-up, not at the first reconnect."""
        problems = []
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not a TCP port")
        if self.keepalive < 0 or self.max_buffer < 1:
            problems.append("keepalive must be >= 0 and max_buffer >= 1")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            problems.append("need 0 < reconnect_min_s <= reconnect_max_s")
        for sub in self.subscriptions:
            if len(sub) != 2 or not sub[0] or sub[1] not in (0, 1, 2):
                problems.append(f"subscription {sub!r} is not (filter, qos 0-2)")
        if problems:
            raise BadRequest(f"invalid MQTT settings: {'; '.join(problems)}")


class Backoff:
    """Exponential backoff with full jitter, between ``min_s`` and ``max_s``.

    The jitter keeps hubs that lost the same broker from coming back in lock
    step.  Pure: it returns delays, the caller sleeps.
    """

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ValueError(f"backoff needs 0 < min_s <= max_s, got {min_s}, {max_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._rng = rng or random.Random()
        self._ceiling = min_s

    def next(self) -> float:
        """The delay before the next attempt; each call doubles the ceiling, up to ``max_s``."""
        delay = self._rng.uniform(self.min_s, self._ceiling)
        self._ceiling = min(self._ceiling * 2, self.max_s)
        return delay

    def reset(self) -> None:
        self._ceiling = self.min_s


class MqttBridge:
    """One MQTT connection for the coordinator, kept up for as long as it runs."""

    def __init__(self, settings: MqttSettings, on_message: OnMessage) -> None:
        self.settings = settings
        self._on_message = on_message
        self._max_buffer = settings.max_buffer
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        # Owned by the loop thread.
        self._buffer: deque[tuple[str, bytes, int, bool]] = deque()
        self._handed: dict[int, int] = {}  # paho message id -> qos
        self._up = False
        self._lost = False
        self._refused: str | None = None
        self._down_reason = ""
        self._wake = asyncio.Event()
        self._up_event = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._join: asyncio.Future[Any] | None = None
        self._thread_running = False
        self._closed = False
        self._failures = 0
        self._connects = self._reconnects = self._received = self._published = 0
        self._dropped = self._callback_errors = 0
        # Written by the network thread, drained by the loop thread.
        self._incoming: deque[tuple[str, bytes, int]] = deque()
        self._acks: deque[int] = deque()
        self._events: deque[tuple[str, Any]] = deque()
        self._inbox_scheduled = False
        self._room = threading.Event()
        self._sub_mid: int | None = None
        self._malformed = 0  # only the network thread writes it

        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            clean_session=True,
            reconnect_on_failure=False,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        client.max_inflight_messages_set(HANDOFF_WINDOW)
        client.on_connect = self._net_on_connect
        client.on_subscribe = self._net_on_subscribe
        client.on_disconnect = self._net_on_disconnect
        client.on_publish = self._net_on_publish
        client.on_message = self._net_on_message
        self._client = client

    # -- public API ---------------------------------------------------------

    async def start(self) -> None:
        """Start the connection task and return at once: the coordinator serves with or without a broker."""
        if self._closed:
            raise HostError("the MQTT bridge is closed")
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            name = f"mqtt-bridge {self.settings.host}:{self.settings.port}"
            self._task = self._loop.create_task(self._supervise(), name=name)

    async def wait_connected(self, timeout: float) -> bool:
        if self._up:
            return True
        try:
            await asyncio.wait_for(self._up_event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """Queue one message; False (and counted as dropped) when the buffer is full.

        Never blocks and never awaits: the connection task sends it."""
        if qos not in (0, 1, 2) or not topic or "+" in topic or "#" in topic:
            raise BadRequest(f"cannot publish to topic {topic!r} at qos {qos!r}")
        if self._closed or len(self._buffer) + len(self._handed) >= self._max_buffer:
            self._dropped += 1
            return False
        self._buffer.append((topic, payload, qos, retain))
        if self._up:
            self._wake.set()
        return True

    @property
    def connected(self) -> bool:
        return self._up

    def stats(self) -> dict[str, int]:
        return {
            "connected": int(self._up),
            "connects": self._connects,
            "reconnects": self._reconnects,
            "received": self._received,
            "published": self._published,
            "dropped": self._dropped,
            "buffered": len(self._buffer) + len(self._handed),
            "in_flight": len(self._handed),
            "callback_errors": self._callback_errors,
            "malformed": self._malformed,
        }

    async def aclose(self) -> None:
        """Stop the connection task, disconnect cleanly, join the network thread. Idempotent."""
        first = not self._closed
        self._closed = True
        self._room.set()
        task = self._task
        if task is None:
            return
        if first:
            task.cancel()
        await asyncio.wait({task})
        if first and not task.cancelled() and task.exception() is not None:
            log.error("mqtt connection task failed", exc_info=task.exception())

    # -- the connection task ------------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    if await self._connect():
                        up_since = loop.time()
                        await self._serve()
                        log.warning("mqtt disconnected host=%s port=%d reason=%s buffered=%d",
                                    self.settings.host, self.settings.port, self._down_reason,
                                    len(self._buffer) + len(self._handed))
                        if loop.time() - up_since >= self._backoff.max_s:
                            self._backoff.reset()  # a connection that held; not a flapping one
                except Exception:  # a bug, not the broker: keep the bridge alive all the same
                    log.exception("mqtt connection task failed; reconnecting")
                await self._stop_thread()
                await asyncio.sleep(self._backoff.next())
        finally:
            was_up = self._up
            await self._stop_thread()
            if was_up:
                log.info("mqtt closed host=%s port=%d", self.settings.host, self.settings.port)

    async def _connect(self) -> bool:
        """One attempt: TCP connect and CONNECT, network thread, CONNACK, SUBACK."""
        loop = asyncio.get_running_loop()
        self._lost = False
        self._refused = None
        pending = loop.run_in_executor(None, self._open_socket)
        try:
            await asyncio.shield(pending)
        except asyncio.CancelledError:
            # The blocking connect goes on in its thread: wait it out, so that no
            # socket stays open behind a closed bridge.
            try:
                await pending
            except OSError:
                pass
            else:
                self._client.disconnect()  # no network thread yet: paho writes it here and closes
            raise
        except OSError as exc:
            self._note_failure(str(exc) or type(exc).__name__)
            return False
        started = self._client.loop_start()
        self._thread_running = True  # whatever happened, _stop_thread joins what is there
        if started != _OK:
            raise HostError(f"paho's network thread did not start ({started})")
        deadline = loop.time() + HANDSHAKE_TIMEOUT_S
        while not (self._up or self._lost):
            self._wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except asyncio.TimeoutError:
                break
        if not self._up:
            reason = self._refused or ("closed during the handshake" if self._lost else "no CONNACK/SUBACK in time")
            self._note_failure(reason)
            return False
        self._failures = 0
        log.info("mqtt connected host=%s port=%d client_id=%s connects=%d buffered=%d",
                 self.settings.host, self.settings.port, self.settings.client_id,
                 self._connects, len(self._buffer) + len(self._handed))
        return True

    def _note_failure(self, reason: str) -> None:
        # The first failure of a streak is worth a warning; the retries are not.
        level = logging.WARNING if self._failures == 0 else logging.DEBUG
        self._failures += 1
        log.log(level, "mqtt connect failed host=%s port=%d attempt=%d reason=%s; retrying",
                self.settings.host, self.settings.port, self._failures, reason)

    def _open_socket(self) -> None:
        """Runs in an executor thread: paho's connect blocks on DNS and TCP."""
        client = self._client
        client.connect(self.settings.host, self.settings.port, self.settings.keepalive)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            # Events are small and latency matters more than packet count.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _serve(self) -> None:
        """Feed the buffer to paho until the connection is lost."""
        while True:
            self._wake.clear()
            if self._lost or not self._up:
                return
            if self._pump():
                await asyncio.sleep(0)  # more to send: let the loop breathe first
            else:
                await self._wake.wait()

    def _pump(self) -> bool:
        """Hand buffered messages to paho; True when stopped by the batch limit with more to send."""
        buffer, handed = self._buffer, self._handed
        room = min(PUMP_BATCH, HANDOFF_WINDOW - len(handed))
        publish = self._client.publish
        while room > 0 and buffer:
            topic, payload, qos, retain = buffer.popleft()
            try:
                info = publish(topic, payload, qos, retain)
            except ValueError:  # paho refuses it (e.g. a payload over 256 MiB)
                self._dropped += 1
                continue
            if info.rc == _OK or (qos and info.rc == _NO_CONN):
                handed[info.mid] = qos  # at QoS >= 1 paho keeps it and re-sends after reconnect
                room -= 1
            elif info.rc == _NO_CONN:  # the link just dropped: keep it for the next one
                buffer.appendleft((topic, payload, qos, retain))
                return False
            else:
                self._dropped += 1
        return bool(buffer) and len(handed) < HANDOFF_WINDOW

    async def _stop_thread(self) -> None:
        """Disconnect and join paho's network thread; survives being cancelled and called again."""
        if self._join is None:
            if not self._thread_running:
                return
            self._client.disconnect()
            self._join = asyncio.get_running_loop().run_in_executor(None, self._client.loop_stop)
        join = self._join
        done, _ = await asyncio.wait({join}, timeout=STOP_TIMEOUT_S)
        if not done:
            # The DISCONNECT could not be written (a wedged peer): pull the socket
            # away; paho's select times out within a second and the thread ends.
            sock = self._client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
            await asyncio.wait({join})
        # paho 2.2's loop_start() replaces its wake-up socket pair without closing
        # the old one; close it here, with the thread gone, rather than leak it.
        reset = getattr(self._client, "_reset_sockets", None)
        if reset is not None:
            reset(sockpair_only=True)
        self._join = None
        self._thread_running = False
        self._mark_down("stopped")

    def _mark_down(self, reason: str) -> None:
        if self._up:
            self._down_reason = reason
        self._up = False
        self._lost = True
        self._up_event.clear()
        if self._handed:
            lost = [mid for mid, qos in self._handed.items() if qos == 0]
            for mid in lost:
                del self._handed[mid]
            self._dropped += len(lost)
        self._wake.set()

    # -- loop side of the hand-off -----------------------------------------

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        incoming = self._incoming
        if incoming:
            backed_up = len(incoming) >= INCOMING_HIGH_WATER
            self._deliver(incoming)
            if backed_up:
                self._room.set()
            if incoming and not self._inbox_scheduled and self._loop is not None:
                self._inbox_scheduled = True
                self._loop.call_soon(self._drain_inbox)
        acks = self._acks
        if acks:
            handed, pop, confirmed = self._handed, acks.popleft, 0
            while acks:
                if handed.pop(pop(), None) is not None:
                    confirmed += 1
            self._published += confirmed
            self._wake.set()
        events = self._events
        while events:
            kind, detail = events.popleft()
            if kind == "up":
                self._up = True
                self._connects += 1
                if self._connects > 1:
                    self._reconnects += 1
                self._up_event.set()
                if detail:
                    log.warning("mqtt subscription refused filters=%s reasons=%s",
                                [f for f, _ in self.settings.subscriptions], detail)
            elif kind == "refused":
                self._refused = detail
            else:
                self._mark_down(detail)
            self._wake.set()

    def _deliver(self, incoming: deque[tuple[str, bytes, int]]) -> None:
        on_message, pop = self._on_message, incoming.popleft
        count = min(len(incoming), DELIVER_BATCH)
        if self._closed:
            incoming.clear()
            return
        for _ in range(count):
            topic, payload, qos = pop()
            try:
                on_message(topic, payload, qos)
            except Exception:
                self._callback_errors += 1
                if self._callback_errors == 1:
                    log.exception("mqtt on_message failed topic=%s (later failures are only counted)", topic)
        self._received += count

    # -- network thread (paho callbacks) -------------------------------------

    def _schedule(self) -> None:
        if not self._inbox_scheduled and self._loop is not None:
            self._inbox_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain_inbox)
            except RuntimeError:  # the loop is closed: nobody is left to deliver to
                pass

    def _post(self, kind: str, detail: Any) -> None:
        self._events.append((kind, detail))
        self._schedule()

    def _net_on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self._post("refused", str(reason))
            return
        subscriptions = list(self.settings.subscriptions)
        if not subscriptions:
            self._post("up", [])
            return
        result, mid = client.subscribe(subscriptions)
        if result == _OK:
            self._sub_mid = mid
        # otherwise the link is already gone and on_disconnect follows

    def _net_on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if mid == self._sub_mid:
            self._post("up", [str(r) for r in reasons if r.is_failure])

    def _net_on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._post("down", str(reason))

    def _net_on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acks.append(mid)
        self._schedule()

    def _net_on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self._malformed += 1
            return
        incoming = self._incoming
        incoming.append((topic, cast(bytes, message.payload), message.qos))  # bytes when received
        self._schedule()
        if len(incoming) >= INCOMING_HIGH_WATER:
            # The loop is far behind: stop reading, so TCP pushes back on the broker.
            room = self._room
            while len(incoming) >= INCOMING_HIGH_WATER and not self._closed:
                room.clear()
                room.wait(0.1)
