"""Scenario ``clients``: which Redis Cluster client, measured on streamfan's two hot paths.

For each candidate library, in a child process of its own (so one library's
threads and imports cannot bill another), against a local 3-master cluster:

* **append**: the worker's batched append, one ``EVALSHA`` of the sharded
  ``APPEND_MANY`` for one stream's record (one ``XADD`` and one ``SPUBLISH``),
  routed by the stream's slot; ``--appends`` calls one after another, then the
  same number with ``--inflight`` calls in flight at once (as under load).
  Reported: the client process's CPU (all its threads: a Rust core counts) per
  call, and the wall time per call.
* **wake-up**: the gateway's live path, ``SSUBSCRIBE`` to ``--channels`` channels
  spread over the shards, while a separate process ``SPUBLISH``\\ es
  ``--messages`` messages to them; reported: the subscriber's CPU per delivered
  message.

Candidates: ``redis-py`` (5.x, already a dependency: its asyncio ``RedisCluster``
for commands; it has no sharded pub/sub, so the wake-ups are read the way
``gateway.cluster_live`` reads them, one raw connection per shard), ``coredis``
(``RedisCluster``, ``sharded_pubsub``) and ``valkey-glide``
(``GlideClusterClient``, ``ssubscribe``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import subprocess
import sys
import time
from typing import Any

import redis

from bench import report
from bench.machine import machine_info
from cli.redis_cluster import RedisCluster
from streamfan import scripts
from streamfan.cluster import sharded
from streamfan.keys import Keys

LIBS = ("redis-py", "coredis", "glide")
KEYS = Keys("bench")
STREAMS = 64
#: The worker's batched append as it runs on a cluster (wake-up by SPUBLISH).
SHARDED_APPEND_MANY = sharded(scripts.APPEND_MANY)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--libs", default=",".join(LIBS), help="candidates to measure")
    p.add_argument("--appends", type=int, default=5000, help="script calls per phase")
    p.add_argument("--inflight", type=int, default=64, help="concurrent calls, second phase")
    p.add_argument("--channels", type=int, default=64, help="sharded channels subscribed")
    p.add_argument("--messages", type=int, default=20000, help="wake-ups published")


#: The module each candidate imports (``.[bench]`` installs the two beyond redis-py).
MODULES = {"redis-py": "redis", "coredis": "coredis", "glide": "glide"}


def main(args: argparse.Namespace) -> None:
    libs = args.libs.split(",")
    missing = [lib for lib in libs if importlib.util.find_spec(MODULES[lib]) is None]
    if missing:
        raise SystemExit(
            f"not installed: {', '.join(missing)} (pip install -e '.[bench]', or --libs redis-py)"
        )
    with contextlib.ExitStack() as stack:
        # --redis-url: a node of a running cluster; else a local 3-master one.
        url = args.redis_url or stack.enter_context(RedisCluster(masters=3)).url
        rows = []
        for lib in libs:
            report.progress(f"clients: {lib}")
            out = subprocess.run(
                [sys.executable, "-m", "bench.clients", lib, url, *_child_argv(args)],
                check=True,
                stdout=subprocess.PIPE,
                text=True,
            )
            rows.append({"lib": lib, **json.loads(out.stdout.strip().splitlines()[-1])})
    print(
        report.table(
            ["lib", "µs CPU/append (1)", f"µs CPU/append ({args.inflight})", "µs CPU/wake-up"],
            [
                [r["lib"], r["append_cpu_us"], r["append_inflight_cpu_us"], r["wakeup_cpu_us"]]
                for r in rows
            ],
        )
    )
    report.write_json(
        "clients",
        {
            "scenario": "clients",
            "command": "python -m bench clients " + " ".join(args.argv),
            "machine": machine_info(),
            "settings": {
                "redis_url": url,
                "appends": args.appends,
                "inflight": args.inflight,
                "channels": args.channels,
                "messages": args.messages,
            },
            "rows": rows,
        },
        args.out,
    )


def _child_argv(args: argparse.Namespace) -> list[str]:
    return [str(args.appends), str(args.inflight), str(args.channels), str(args.messages)]


# --- the child: one library ---------------------------------------------------------


def _prepare(url: str) -> list[str]:
    """Meta of STREAMS running streams (attempt 1): what APPEND_MANY appends to."""
    sids = [f"s{i}" for i in range(STREAMS)]
    with redis.RedisCluster.from_url(url) as r:
        for sid in sids:
            r.delete(KEYS.events(sid))
            r.hset(KEYS.meta(sid), mapping={"attempt": 1, "status": "running", "seq": 0})
    return sids


def _record(sid: str) -> bytes:
    event = b'{"type":"delta","choices":[{"index":0,"delta":{"content":"hello"}}]}'
    return f"{KEYS.base(sid)} 1 ".encode() + b"\n" + event


async def _timed(calls: int, inflight: int, call: Any, sids: list[str]) -> tuple[float, float]:
    """(CPU µs, wall µs) per call of ``call(sid)``, ``inflight`` at a time."""
    queue = list(range(calls))

    async def lane() -> None:
        while queue:
            i = queue.pop()
            await call(sids[i % len(sids)])

    await asyncio.gather(*(call(sid) for sid in sids))  # warm: scripts loaded, slots known
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


def _publish(url: str, channels: list[str], messages: int) -> subprocess.Popen[bytes]:
    code = (
        "import sys, redis\n"
        "from redis.crc import key_slot\n"
        "url, n, chans = sys.argv[1], int(sys.argv[2]), sys.argv[3:]\n"
        "rc = redis.RedisCluster.from_url(url)\n"
        "pipes = {}\n"
        "for i in range(n):\n"
        "    ch = chans[i % len(chans)]\n"
        "    node = rc.get_node_from_key(ch)\n"
        "    p = pipes.get(node.name)\n"
        "    if p is None:\n"
        "        p = pipes[node.name] = redis.Redis(node.host, node.port).pipeline(False)\n"
        "    p.execute_command('SPUBLISH', ch, b'0-0\\n1-0\\n{}')\n"
        "    if len(p) >= 500: p.execute()\n"
        "for p in pipes.values(): p.execute()\n"
    )
    return subprocess.Popen([sys.executable, "-c", code, url, str(messages), *channels])


class _Counter:
    """Counts delivered messages; starts the publisher once subscribed."""

    def __init__(self, url: str, channels: list[str], messages: int) -> None:
        self.url, self.channels, self.messages = url, channels, messages
        self.got = 0
        self.cpu = 0.0
        self.proc: subprocess.Popen[bytes] | None = None

    def subscribed(self) -> None:
        self.proc = _publish(self.url, self.channels, self.messages)

    def tick(self) -> bool:
        """One message delivered; True once all were."""
        if self.got == 0:
            self.cpu = time.process_time()
        self.got += 1
        if self.got == self.messages:
            self.cpu = time.process_time() - self.cpu
            return True
        return False


async def _wakeups(url: str, channels: list[str], messages: int, consume: Any) -> float:
    """Subscriber CPU µs per delivered message; ``consume(counter)`` subscribes,
    calls ``counter.subscribed()`` and ``counter.tick()`` per message until it is done."""
    counter = _Counter(url, channels, messages)
    await consume(counter)
    assert counter.proc is not None
    counter.proc.wait()
    return counter.cpu / (messages - 1) * 1e6


async def _redis_py(url: str, n: int, inflight: int, nch: int, msgs: int) -> dict[str, float]:
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster as AsyncCluster

    sids = _prepare(url)
    r = AsyncCluster.from_url(url)
    script = r.register_script(SHARDED_APPEND_MANY)

    async def call(sid: str) -> Any:
        return await script([KEYS.meta(sid)], [1000, int(time.time() * 1000), _record(sid)])

    out = await _all(n, inflight, call, sids)

    async def consume(counter: _Counter) -> None:
        # One raw connection per shard, as gateway.cluster_live holds them.
        by_node: dict[tuple[str, int], list[str]] = {}
        for ch in counter.channels:
            node = r.get_node_from_key(ch)
            by_node.setdefault((node.host, node.port), []).append(ch)
        conns = []
        for (host, port), chans in by_node.items():
            conn = aioredis.Connection(host=host, port=port)
            await conn.connect()
            # One command per channel: SSUBSCRIBE's channels must share a slot.
            for ch in chans:
                await conn.send_command("SSUBSCRIBE", ch)
            for _ in chans:
                await conn.read_response()
            conns.append(conn)
        done = asyncio.Event()

        async def read(conn: aioredis.Connection) -> None:
            while True:
                await conn.read_response()
                if counter.tick():
                    done.set()

        tasks = [asyncio.create_task(read(c)) for c in conns]
        counter.subscribed()
        await done.wait()
        for t in tasks:
            t.cancel()
        for c in conns:
            await c.disconnect()

    out["wakeup_cpu_us"] = await _wakeups(url, _channels(nch), msgs, consume)
    await r.aclose()
    return out


async def _coredis(url: str, n: int, inflight: int, nch: int, msgs: int) -> dict[str, float]:
    import coredis

    sids = _prepare(url)
    host, port = url.split("//", 1)[1].split(":")
    async with coredis.RedisCluster(host, int(port)) as r:
        script = r.register_script(SHARDED_APPEND_MANY)

        async def call(sid: str) -> Any:
            return await script(
                keys=[KEYS.meta(sid)], args=[1000, int(time.time() * 1000), _record(sid)]
            )

        out = await _all(n, inflight, call, sids)

        async def consume(counter: _Counter) -> None:
            async with r.sharded_pubsub(ignore_subscribe_messages=True) as ps:
                await ps.subscribe(*counter.channels)
                counter.subscribed()
                async for _msg in ps:
                    if counter.tick():
                        break

        out["wakeup_cpu_us"] = await _wakeups(url, _channels(nch), msgs, consume)
    return out


async def _glide(url: str, n: int, inflight: int, nch: int, msgs: int) -> dict[str, float]:
    from glide import GlideClusterClient, GlideClusterClientConfiguration, NodeAddress, Script

    sids = _prepare(url)
    host, port = url.split("//", 1)[1].split(":")
    config = GlideClusterClientConfiguration([NodeAddress(host, int(port))])
    r = await GlideClusterClient.create(config)
    script = Script(SHARDED_APPEND_MANY)

    async def call(sid: str) -> Any:
        now = str(int(time.time() * 1000))
        return await r.invoke_script(
            script, keys=[KEYS.meta(sid)], args=[b"1000", now, _record(sid)]
        )

    out = await _all(n, inflight, call, sids)
    await r.close()

    async def consume(counter: _Counter) -> None:
        sub = await GlideClusterClient.create(
            GlideClusterClientConfiguration([NodeAddress(host, int(port))])
        )
        await sub.ssubscribe(set(counter.channels), timeout_ms=5000)
        counter.subscribed()
        while True:
            await sub.get_pubsub_message()
            if counter.tick():
                break
        await sub.close()

    out["wakeup_cpu_us"] = await _wakeups(url, _channels(nch), msgs, consume)
    return out


def _channels(n: int) -> list[str]:
    return [KEYS.live(f"c{i}") for i in range(n)]


async def _all(n: int, inflight: int, call: Any, sids: list[str]) -> dict[str, float]:
    cpu1, wall1 = await _timed(n, 1, call, sids)
    cpun, walln = await _timed(n, inflight, call, sids)
    reply = await call(sids[0])
    if reply[0][0] not in (b"ok", "ok"):
        raise RuntimeError(f"APPEND_MANY refused the record: {reply!r}")
    return {
        "append_cpu_us": round(cpu1, 1),
        "append_wall_us": round(wall1, 1),
        "append_inflight_cpu_us": round(cpun, 1),
        "append_inflight_wall_us": round(walln, 1),
    }


def _child(argv: list[str]) -> None:
    lib, url = argv[0], argv[1]
    n, inflight, nch, msgs = (int(a) for a in argv[2:6])
    run = {"redis-py": _redis_py, "coredis": _coredis, "glide": _glide}[lib]
    out = asyncio.run(run(url, n, inflight, nch, msgs))
    out["wakeup_cpu_us"] = round(out["wakeup_cpu_us"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    _child(sys.argv[1:])
