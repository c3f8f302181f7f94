"""The gateway's live path on a Redis Cluster: sharded pub/sub, one connection per shard.

Workers publish a stream's wake-ups with ``SPUBLISH`` on its ``P:{ID}:live``
channel, which Redis delivers only within the shard that owns the channel's slot.
So the gateway holds one pub/sub connection per master that owns a watched
stream (:class:`ShardLive`, the one-Redis :class:`~gateway.live.Live` speaking
``SSUBSCRIBE``), never one per stream or client, and :class:`ClusterLive`
routes each watched stream to the shard that owns its slot.

The slot map changes under it (a slot migrated, a master failed and its replica
took over). The signs: Redis unsubscribes a shard channel whose slot left the
node (``sunsubscribe`` pushed unasked), answers a ``SSUBSCRIBE`` with
``MOVED``/``ASK``, or a shard's connection fails. Each makes :class:`ClusterLive`
read the slot map again (from the cluster client, which knows every node) and
move every stream whose slot changed owner: subscribe on the new owner, wait
for the confirmation, then ask the hub to re-read the stream from its last
delivered id, exactly as after a lost connection. While a shard is down the
map is read again every ``backoff_max_s`` until a new master owns its slots.
Nothing is lost meanwhile: the hub polls every watched stream while the live
path is not ``up``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.retry import Retry

from gateway.live import Live, LiveListener, LiveSource
from gateway.metrics import Metrics
from gateway.tuning import Tuning
from streamfan.cluster import EventsRedis, connect_events, detect_cluster, slot
from streamfan.errors import RedisUnavailable
from streamfan.keys import Keys
from streamfan.redis_edge import FAILURES
from streamfan.settings import Settings

log = logging.getLogger(__name__)


class ShardLive(Live):
    """:class:`Live` on one cluster node, in the sharded dialect."""

    SUBSCRIBE = "SSUBSCRIBE"
    UNSUBSCRIBE = "SUNSUBSCRIBE"
    MESSAGE = b"smessage"
    SUBSCRIBED = b"ssubscribe"
    UNSUBSCRIBED = b"sunsubscribe"
    CHUNK = 1

    def __init__(
        self, name: str, router: ClusterLive, keys: Keys, tuning: Tuning, metrics: Metrics
    ) -> None:
        super().__init__(f"redis://{name}", keys, tuning, metrics)
        self.name = name
        self.router = router

    @property
    def stream_ids(self) -> list[str]:
        out = []
        for channel in self._channels:
            sid = self.keys.stream_id_from_live(channel)
            if sid is not None:
                out.append(sid)
        return out

    @property
    def watching(self) -> bool:
        return bool(self._channels)

    def forget(self, stream_id: str) -> None:
        """Stop resubscribing a stream that moved to another shard. No SUNSUBSCRIBE:
        this node already dropped it, or is gone."""
        channel = self.keys.live(stream_id)
        self._channels.discard(channel)
        self._late.discard(channel.encode())
        fut = self._confirm.pop(channel.encode(), None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _on_lost(self) -> None:
        self.router.check()

    def _on_unsubscribed(self, channel: bytes) -> None:
        if channel.decode("utf-8", "replace") in self._channels:
            # Unasked: the slot left this node (migrated, or the node was demoted).
            self.router.check()

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, redis.exceptions.AskError | redis.exceptions.ClusterError):
            # A SSUBSCRIBE for a slot this node does not (or no longer) serve.
            self.router.check()
            return
        raise exc


class _ShardListener:
    """Passes one shard's wake-ups on; a resync of "all" means all of *its* streams."""

    def __init__(self, router: ClusterLive, shard: ShardLive) -> None:
        self.router = router
        self.shard = shard

    def on_wakeup(self, stream_id: str, payload: bytes) -> None:
        assert self.router.listener is not None
        self.router.listener.on_wakeup(stream_id, payload)

    def resync(self, stream_ids: list[str] | None) -> None:
        assert self.router.listener is not None
        self.router.listener.resync(self.shard.stream_ids if stream_ids is None else stream_ids)


class ClusterLive:
    """The hub's live path on a cluster (the interface of :class:`~gateway.live.Live`)."""

    def __init__(self, r: RedisCluster, keys: Keys, tuning: Tuning, metrics: Metrics) -> None:
        self.r = r
        self.keys = keys
        self.tuning = tuning
        self.metrics = metrics
        self.listener: LiveListener | None = None
        self._shards: dict[str, ShardLive] = {}
        #: Watched stream -> the node it is subscribed on.
        self._where: dict[str, str] = {}
        self._check = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        """Every shard with watched streams connected, and no move pending."""
        return not self._check.is_set() and all(
            shard.up for shard in self._shards.values() if shard.watching
        )

    @property
    def shards(self) -> dict[str, ShardLive]:
        return self._shards

    def start(self, listener: LiveListener) -> None:
        self.listener = listener
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="cluster-live")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for shard in list(self._shards.values()):
            await shard.stop()
        self._shards.clear()

    async def watch(self, stream_id: str) -> None:
        """SSUBSCRIBE on the shard that owns the stream; returns once confirmed
        (or when that shard is down or slow: see :meth:`Live.watch`)."""
        name = self._owner(stream_id) or self._where.get(stream_id)
        if name is None:
            # No node known for the slot (mid-failover): the next check places it.
            self._where[stream_id] = ""
            self.check()
            return
        self._where[stream_id] = name
        await self._shard(name).watch(stream_id)

    def unwatch(self, stream_id: str) -> None:
        name = self._where.pop(stream_id, None)
        shard = self._shards.get(name or "")
        if shard is not None:
            shard.unwatch(stream_id)

    def check(self) -> None:
        """Read the slot map again soon and move the streams whose slot moved."""
        self._check.set()

    # --- following the slot map ---------------------------------------------------------

    def _owner(self, stream_id: str) -> str | None:
        try:
            node = self.r.nodes_manager.get_node_from_slot(slot(self.keys.live(stream_id)))
        except FAILURES:
            return None  # no node known for the slot now (mid-failover)
        return str(node.name) if node is not None else None

    def _shard(self, name: str) -> ShardLive:
        shard = self._shards.get(name)
        if shard is None:
            shard = self._shards[name] = ShardLive(name, self, self.keys, self.tuning, self.metrics)
            shard.start(_ShardListener(self, shard))
        return shard

    async def _follow(self) -> None:
        while True:
            await self._check.wait()
            try:
                await self.r.nodes_manager.initialize()
            except FAILURES:
                log.debug("cluster slot map unavailable; trying again", exc_info=True)
            else:
                self._check.clear()
                await self._move()
            if any(s.watching and not s.up for s in self._shards.values()):
                # A shard is down: a failover may be under way; look again shortly.
                self._check.set()
            if self._check.is_set():
                await asyncio.sleep(self.tuning.backoff_max_s)

    async def _move(self) -> None:
        moved: list[tuple[str, str]] = []
        for sid, name in list(self._where.items()):
            owner = self._owner(sid)
            if owner is None or owner == name:
                continue
            old = self._shards.get(name)
            if old is not None:
                old.forget(sid)
            self._where[sid] = owner
            moved.append((sid, owner))
        if moved:
            log.info("cluster: %d watched streams moved to another shard", len(moved))
        await asyncio.gather(*(self._shard(owner).watch(sid) for sid, owner in moved))
        if moved:
            assert self.listener is not None
            self.listener.resync([sid for sid, _ in moved])
        for name, shard in list(self._shards.items()):
            if not shard.watching:
                del self._shards[name]
                await shard.stop()


async def open_cluster(
    settings: Settings, tuning: Tuning, metrics: Metrics, client_name: str
) -> tuple[RedisCluster, ClusterLive] | None:
    """The read client and live path for the event keys if they are on a cluster,
    else None (also when the node does not answer now: then it is taken for one
    Redis, as before, and the gateway starts anyway)."""
    url = settings.events_url
    try:
        clustered = await detect_cluster(url, socket_connect_timeout=tuning.redis_connect_timeout_s)
    except RedisUnavailable:
        log.warning("events Redis %s does not answer; assuming it is not a cluster", url)
        return None
    if not clustered:
        return None
    r = await connect_events(
        url,
        # Per node. redis-py's cluster client fails a command that finds them all
        # busy instead of queueing it, so gateway.history lets read_pool_size
        # reads run at once; the margin is for cancels, which do not queue there.
        max_connections=settings.read_pool_size + 4,
        socket_timeout=tuning.redis_read_timeout_s,
        socket_connect_timeout=tuning.redis_connect_timeout_s,
        client_name=client_name,
    )
    assert isinstance(r, RedisCluster)
    return r, ClusterLive(r, settings.keys, tuning, metrics)


async def open_events(
    settings: Settings, tuning: Tuning, metrics: Metrics, client_name: str
) -> tuple[EventsRedis, LiveSource, int | None]:
    """The gateway's read client and live path for the event keys, on a cluster or
    on one Redis, and how many reads may run at once (None: the pool queues them)."""
    clustered = await open_cluster(settings, tuning, metrics, client_name)
    if clustered is not None:
        # On a cluster the reads wait for a turn in gateway.history, not in a pool.
        return clustered[0], clustered[1], settings.read_pool_size
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.events_url,
        max_connections=settings.read_pool_size,
        timeout=tuning.pool_wait_s,
        socket_timeout=tuning.redis_read_timeout_s,
        socket_connect_timeout=tuning.redis_connect_timeout_s,
        client_name=client_name,
        # One immediate retry on a fresh connection: after a Redis restart the
        # pooled sockets are dead, and every read here is idempotent.
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[redis.exceptions.ConnectionError],
    )
    live = Live(settings.events_url, settings.keys, tuning, metrics)
    return aioredis.Redis(connection_pool=pool), live, None
