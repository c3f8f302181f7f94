"""The gateway's one pub/sub connection: wake-ups in, SUBSCRIBE/UNSUBSCRIBE out.

One connection serves every watched stream, whatever the number of streams
and clients. Pub/sub is only a wake-up: a message that never arrives costs a
delay, never an event, because whenever the connection is (re)established every
watched channel is subscribed again and the hub re-reads every watched stream
from its last delivered id (:meth:`LiveListener.resync`).

A half-open socket can leave a blocking read waiting forever, so a PING goes out
every ``live_ping_interval_s`` and the connection is dropped and rebuilt when no
reply comes back within ``live_ping_timeout_s``.

This talks to a bare ``redis.asyncio`` connection rather than redis-py's
``PubSub`` helper: the helper reconnects and resubscribes on its own, behind the
hub's back, and the hub must know when that happens to re-read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.metrics import Metrics
from gateway.tuning import Tuning
from streamfan.errors import RedisRefused
from streamfan.keys import Keys
from streamfan.redis_edge import FAILURES, translate

log = logging.getLogger(__name__)

CLIENT_NAME = "streamfan-gateway-live"
#: Channels per SUBSCRIBE command when resubscribing everything.
SUBSCRIBE_CHUNK = 500


class LiveListener(Protocol):
    def on_wakeup(self, stream_id: str, payload: bytes) -> None: ...

    def resync(self, stream_ids: list[str] | None) -> None:
        """Re-read these watched streams (all if None): wake-ups may have been missed."""


class LiveSource(Protocol):
    """What the hub needs of its live path: :class:`Live` on one Redis,
    ``gateway.cluster_live.ClusterLive`` on a cluster."""

    @property
    def up(self) -> bool: ...

    def start(self, listener: LiveListener) -> None: ...

    async def stop(self) -> None: ...

    async def watch(self, stream_id: str) -> None: ...

    def unwatch(self, stream_id: str) -> None: ...


class _Dead(ConnectionError):
    """The pub/sub connection stopped answering (a connection failure like any other)."""


class Live:
    #: The pub/sub dialect; ``gateway.cluster_live.ShardLive`` speaks the sharded one.
    SUBSCRIBE = "SUBSCRIBE"
    UNSUBSCRIBE = "UNSUBSCRIBE"
    MESSAGE = b"message"
    SUBSCRIBED = b"subscribe"
    UNSUBSCRIBED = b"unsubscribe"
    #: Channels per command (SSUBSCRIBE takes only channels of one slot).
    CHUNK = SUBSCRIBE_CHUNK

    def __init__(self, url: str, keys: Keys, tuning: Tuning, metrics: Metrics) -> None:
        self.keys = keys
        self.tuning = tuning
        self.metrics = metrics
        self.listener: LiveListener | None = None
        self._pool = aioredis.ConnectionPool.from_url(
            url,
            client_name=CLIENT_NAME,
            socket_connect_timeout=tuning.redis_connect_timeout_s,
            # Reads block until a message comes; liveness is the PING's job.
            socket_timeout=None,
            retry=Retry(NoBackoff(), 0),
        )
        #: Channels that should be subscribed (what a reconnect resubscribes).
        self._channels: set[str] = set()
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        #: Channels whose watcher gave up waiting for the confirmation.
        self._late: set[bytes] = set()
        self._outbox: list[tuple[str, str]] = []
        self._outbox_ready = asyncio.Event()
        self._pong = asyncio.Event()
        self._ready = False
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """Connected, and every watched channel has been asked for."""
        return self._ready

    def start(self, listener: LiveListener) -> None:
        self.listener = listener
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="live")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._pool.disconnect()

    # --- watching ------------------------------------------------------------------

    async def watch(self, stream_id: str) -> None:
        """SUBSCRIBE to a stream's channel; returns once Redis confirmed it.

        Also returns when the connection is down (the reconnect will subscribe
        and resync) or the confirmation is slow (it will resync this stream
        when the confirmation does arrive): either way nothing is lost.
        """
        channel = self.keys.live(stream_id)
        self._channels.add(channel)
        if not self._ready:
            return
        key = channel.encode()
        fut = self._confirm.get(key)
        if fut is None:
            fut = self._confirm[key] = asyncio.get_running_loop().create_future()
        self._send(self.SUBSCRIBE, channel)
        try:
            async with asyncio.timeout(self.tuning.subscribe_confirm_s):
                await asyncio.shield(fut)
        except TimeoutError:
            log.warning("stream %s: SUBSCRIBE not confirmed in time", stream_id)
            self._late.add(key)

    def unwatch(self, stream_id: str) -> None:
        channel = self.keys.live(stream_id)
        self._channels.discard(channel)
        self._late.discard(channel.encode())
        if self._ready:
            self._send(self.UNSUBSCRIBE, channel)

    def _send(self, command: str, channel: str) -> None:
        self._outbox.append((command, channel))
        self._outbox_ready.set()

    # --- the connection -------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self.tuning.backoff_min_s
        ever_up = False
        while True:
            conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            established = False
            try:
                async with asyncio.timeout(self.tuning.redis_connect_timeout_s):
                    await conn.connect()  # type: ignore[no-untyped-call]
                established = True
                if ever_up:
                    self.metrics.redis_reconnects += 1
                    log.info("pub/sub connection re-established")
                ever_up = True
                delay = self.tuning.backoff_min_s
                await self._serve(conn)
            except FAILURES as exc:
                # Failed attempts while Redis is down are expected: say it once.
                level = logging.WARNING if established else logging.DEBUG
                log.log(level, "pub/sub connection lost: %s", exc or type(exc).__name__)
                self._on_lost()
            finally:
                self._ready = False
                self._release_waiters()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.tuning.backoff_max_s)

    def _on_lost(self) -> None:
        """The connection failed or could not be made (a hook for the cluster)."""

    def _on_unsubscribed(self, channel: bytes) -> None:
        """Redis reported a channel unsubscribed (a hook: on a cluster, the server
        unsubscribes a shard channel whose slot moved away)."""

    def _on_error(self, exc: Exception) -> None:
        """Redis refused a command on the connection (a hook; here the connection
        is rebuilt, which resubscribes and resyncs everything)."""
        raise exc

    def _release_waiters(self) -> None:
        # Watchers stop waiting: the next connection resubscribes and resyncs.
        for fut in self._confirm.values():
            if not fut.done():
                fut.set_result(None)
        self._confirm.clear()
        self._late.clear()
        self._outbox.clear()

    async def _serve(self, conn: AbstractConnection) -> None:
        tasks = [
            asyncio.create_task(self._read(conn), name="live-read"),
            asyncio.create_task(self._write(conn), name="live-write"),
            asyncio.create_task(self._health(conn), name="live-health"),
        ]
        try:
            # Subscribe everything now watched, then ask the hub to re-read it all.
            self._ready = True
            channels = sorted(self._channels)
            futs: list[asyncio.Future[None]] = []
            for ch in channels:
                fut = asyncio.get_running_loop().create_future()
                self._confirm[ch.encode()] = fut
                futs.append(fut)
                self._outbox.append((self.SUBSCRIBE, ch))
            self._outbox_ready.set()
            if futs:
                confirmed = asyncio.create_task(self._confirmed(futs))
                await asyncio.wait(
                    [confirmed, *tasks],
                    timeout=self.tuning.subscribe_confirm_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not confirmed.done():
                    confirmed.cancel()
                    self._late.update(
                        ch.encode() for ch, f in zip(channels, futs, strict=True) if not f.done()
                    )
            assert self.listener is not None
            self.listener.resync(None)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended the connection
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _confirmed(futs: list[asyncio.Future[None]]) -> None:
        for fut in futs:
            await asyncio.shield(fut)

    async def _read(self, conn: AbstractConnection) -> None:
        assert self.listener is not None
        listener, keys = self.listener, self.keys
        while True:
            try:
                resp: Any = await conn.read_response(disconnect_on_error=False)
            except FAILURES as exc:
                if not isinstance(translate(exc), RedisRefused):
                    raise  # the connection failed: _supervise rebuilds it
                self._on_error(exc)  # an error answer to a command
                continue
            self._pong.set()  # any traffic proves the connection alive
            if not isinstance(resp, list) or not resp:
                continue  # "+PONG" outside subscribed mode
            kind = resp[0]
            if kind == self.MESSAGE:
                sid = keys.stream_id_from_live(resp[1].decode("utf-8", "replace"))
                if sid is not None:
                    listener.on_wakeup(sid, resp[2])
            elif kind == self.UNSUBSCRIBED:
                self._on_unsubscribed(resp[1])
            elif kind == self.SUBSCRIBED:
                fut = self._confirm.pop(resp[1], None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
                if resp[1] in self._late:
                    self._late.discard(resp[1])
                    sid = keys.stream_id_from_live(resp[1].decode("utf-8", "replace"))
                    if sid is not None:
                        listener.resync([sid])

    async def _write(self, conn: AbstractConnection) -> None:
        while True:
            await self._outbox_ready.wait()
            self._outbox_ready.clear()
            batch, self._outbox = self._outbox, []
            commands: list[tuple[str, ...]] = []
            i = 0
            while i < len(batch):
                # One command for each run of the same verb, keeping the order
                # (an UNSUBSCRIBE then SUBSCRIBE of one channel must stay so).
                command, j = batch[i][0], i
                while j < len(batch) and batch[j][0] == command and j - i < self.CHUNK:
                    j += 1
                args = [ch for _, ch in batch[i:j]]
                if command == "PING":
                    args = []
                commands.append((command, *args))
                i = j
            # All of them in one write.
            await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    async def _health(self, conn: AbstractConnection) -> None:
        interval, timeout = self.tuning.live_ping_interval_s, self.tuning.live_ping_timeout_s
        while True:
            await asyncio.sleep(interval)
            self._pong.clear()
            self._outbox.append(("PING", ""))
            self._outbox_ready.set()
            try:
                async with asyncio.timeout(timeout):
                    await self._pong.wait()
            except TimeoutError:
                raise _Dead(f"no reply to PING within {timeout:g} s") from None
