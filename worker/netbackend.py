"""The network backend under the worker's httpx client: asyncio's own transports.

httpx drives httpcore, and httpcore a network backend; the default one goes
through anyio, whose socket stream on asyncio pauses the transport after every
read and resumes it on the next (an ``epoll_ctl`` pair per network read) and
opens a cancel scope per read for its timeout. At an LLM's pace every network
read is one chunk, and in the worker's profile at 300 streams that machinery
was a quarter of all CPU (docs/benchmarks.md, "Worker").

:class:`AsyncioBackend` does the same job with a plain :class:`asyncio.Protocol`
that keeps reading (it pauses only when a megabyte is waiting unread), hands a
read everything buffered, and keeps one timer per connection for the read
timeout, re-armed only when it fires early. Everything above it (httpcore's
pool, keep-alive and h11, httpx's client, errors and timeouts) is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.request
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

#: Unread bytes at which the socket stops being read until the reader catches up.
HIGH_WATER = 1 << 20


class _Stream(asyncio.Protocol, httpcore.AsyncNetworkStream):
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf: list[bytes] = []
        self.size = 0
        self.eof = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False
        self.writable = asyncio.Event()
        self.writable.set()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf.append(data)
        self.size += len(data)
        if self.size >= HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self.writable.set()
        self._wake()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_timer(self) -> None:
        self.timer = None
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        now = self.loop.time()
        if now >= self.deadline:
            waiter.set_exception(httpcore.ReadTimeout("timed out reading from the upstream"))
        else:  # armed for an earlier read's deadline: wait out this one's
            self.timer = self.loop.call_at(self.deadline, self._on_timer)

    # httpcore.AsyncNetworkStream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if not self.buf and not self.eof:
            waiter = self.waiter = self.loop.create_future()
            if timeout is not None:
                self.deadline = self.loop.time() + timeout
                # One timer per connection, re-armed when it fires before the
                # deadline: a timer per read would be pushed onto and cancelled
                # from the loop's heap thousands of times a second.
                if self.timer is None or self.timer.when() > self.deadline:
                    if self.timer is not None:
                        self.timer.cancel()
                    self.timer = self.loop.call_at(self.deadline, self._on_timer)
            try:
                await waiter
            finally:
                self.waiter = None
        if not self.buf:
            if self.error is not None:
                raise httpcore.ReadError(str(self.error) or type(self.error).__name__)
            return b""
        data = self.buf[0] if len(self.buf) == 1 else b"".join(self.buf)
        if len(data) > max_bytes:
            data, rest = data[:max_bytes], data[max_bytes:]
            self.buf = [rest]
            self.size = len(rest)
        else:
            self.buf = []
            self.size = 0
        if self.paused and self.size < HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        if self.transport is None or self.transport.is_closing():
            raise httpcore.WriteError("the connection is closed")
        self.transport.write(buffer)
        if not self.writable.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await self.writable.wait()
            except TimeoutError:
                raise httpcore.WriteTimeout("timed out writing to the upstream") from None
        if self.error is not None:
            raise httpcore.WriteError(str(self.error) or type(self.error).__name__)

    async def aclose(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
    ) -> httpcore.AsyncNetworkStream:
        assert self.transport is not None
        try:
            async with asyncio.timeout(timeout):
                tls = await self.loop.start_tls(
                    self.transport, self, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            await self.aclose()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        if tls is None:
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self.transport = tls
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks before reusing a kept-alive connection: readable while
            # idle means the server closed it (or sent something unasked).
            return bool(self.buf) or self.eof
        if self.transport is None:
            return None
        if info == "ssl_object":
            return self.transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self.transport.get_extra_info("sockname")
        if info == "server_addr":
            return self.transport.get_extra_info("peername")
        if info == "socket":
            return self.transport.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on asyncio transports (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        stream = _Stream()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: stream, host, port, local_addr=local)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        sock = stream.get_extra_info("socket")
        for option in socket_options or ():
            with contextlib.suppress(OSError):
                sock.setsockopt(*option)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = _Stream()
        try:
            async with asyncio.timeout(timeout):
                await loop.create_unix_connection(lambda: stream, path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"timed out connecting to {path}") from None
        except OSError as exc:
            raise httpcore.ConnectError(str(exc) or type(exc).__name__) from exc
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP transport, its httpcore pool on :class:`AsyncioBackend`.

    httpx takes no network backend, but its transport is a thin wrapper around
    an ``httpcore.AsyncConnectionPool`` (``_pool``), which does: the pool is
    rebuilt here with the same settings and this backend. httpx still maps
    httpcore's errors to its own around every request.
    """

    def __init__(self, *, limits: httpx.Limits) -> None:
        super().__init__(limits=limits)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )


def transport_for(limits: httpx.Limits) -> httpx.AsyncBaseTransport | None:
    """:class:`AsyncioTransport`, or None (httpx's own) when the environment names a proxy.

    httpx honours ``HTTPS_PROXY`` and friends only for a client without an explicit
    transport; a deployment behind a proxy keeps that.
    """
    if any(k in ("http", "https", "all") for k in urllib.request.getproxies()):
        return None
    return AsyncioTransport(limits=limits)
