"""A local Redis Cluster for the test suite and the benchmarks.

``masters`` nodes of the embedded ``valkey-server`` (see :mod:`cli.redis_server`)
with ``cluster-enabled yes`` on free loopback ports, the 16,384 slots split
evenly between them, and ``replicas`` replicas per master when a test needs a
failover. Built by hand (``CLUSTER ADDSLOTSRANGE``, ``MEET``, ``REPLICATE``)
rather than with ``valkey-cli --cluster create``, which waits in whole seconds.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import redis

from cli.redis_server import RedisServer
from streamfan.errors import StreamfanError

SLOTS = 16384


def free_ports(host: str, n: int) -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class ClusterNode(RedisServer):
    """One ``valkey-server`` with cluster mode on."""

    def __init__(self, *, host: str, port: int, bus_port: int, node_timeout_ms: int) -> None:
        super().__init__(host=host, port=port)
        self.node_timeout_ms = node_timeout_ms
        # The bus port is a free port of its own: the default (port + 10000)
        # may be taken, or past 65535 for an ephemeral port.
        self.bus_port = bus_port

    def _args(self) -> list[str]:
        return [
            *super()._args(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(Path(self.data_dir) / "nodes.conf"),
            "--cluster-port",
            str(self.bus_port),
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            # A replica may take over however long it was cut off: the tests
            # kill masters on purpose and want the promotion, not a stall.
            "--cluster-replica-validity-factor",
            "0",
            # Keep serving the slots that are still covered while one is not.
            "--cluster-require-full-coverage",
            "no",
            # A replica syncs at once instead of waiting 5 s for others to join.
            "--repl-diskless-sync-delay",
            "0",
        ]

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=5)

    def node_id(self) -> str:
        with self.client() as r:
            return str(r.execute_command("CLUSTER", "MYID").decode())


class RedisCluster:
    """``start()``, ``url`` (any master), ``nodes``, ``masters()``, ``flush()``, ``close()``."""

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 0,
        host: str = "127.0.0.1",
        node_timeout_ms: int = 2000,
    ) -> None:
        self.host = host
        self.n_masters = masters
        self.n_nodes = masters * (1 + replicas)
        self.node_timeout_ms = node_timeout_ms
        self.nodes = self._new_nodes()

    def _new_nodes(self) -> list[ClusterNode]:
        ports = free_ports(self.host, 2 * self.n_nodes)
        return [
            ClusterNode(
                host=self.host,
                port=ports[2 * i],
                bus_port=ports[2 * i + 1],
                node_timeout_ms=self.node_timeout_ms,
            )
            for i in range(self.n_nodes)
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url.rsplit("/", 1)[0]

    def start(self, timeout_s: float = 30.0) -> RedisCluster:
        for attempt in range(3):
            try:
                for node in self.nodes:
                    node.start()
                break
            except StreamfanError as exc:
                # A port free when chosen may be taken by the time a node binds
                # it (other processes start servers too): choose again.
                self.close()
                if attempt == 2 or "already in use" not in str(exc):
                    raise
                self.nodes = self._new_nodes()
        try:
            self._form(time.monotonic() + timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def _form(self, deadline: float) -> None:
        masters = self.nodes[: self.n_masters]
        per = SLOTS // len(masters)
        for i, node in enumerate(masters):
            last = SLOTS - 1 if i == len(masters) - 1 else (i + 1) * per - 1
            with node.client() as r:
                r.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per, last)
        with self.nodes[0].client() as r:
            for node in self.nodes[1:]:
                r.execute_command("CLUSTER", "MEET", node.host, node.port, node.bus_port)
        ids = [node.node_id() for node in self.nodes]
        self._wait(deadline, "every node to know every other", self._all_known)
        for j, replica in enumerate(self.nodes[len(masters) :]):
            with replica.client() as r:
                r.execute_command("CLUSTER", "REPLICATE", ids[j % len(masters)])
        self._wait(deadline, "cluster_state:ok on every node", self._all_ok)

    def _all_known(self) -> bool:
        for node in self.nodes:
            with node.client() as r:
                lines = r.execute_command("CLUSTER", "NODES").decode().splitlines()
            if len(lines) < len(self.nodes) or any("handshake" in line for line in lines):
                return False
        return True

    def _all_ok(self) -> bool:
        for node in self.nodes:
            with node.client() as r:
                info = r.execute_command("CLUSTER", "INFO").decode()
                if "cluster_state:ok" not in info:
                    return False
                # Every node must route every slot to its master (replicas included).
                slots = r.execute_command("CLUSTER", "SLOTS")
                if sum(int(s[1]) - int(s[0]) + 1 for s in slots) != SLOTS:
                    return False
                replicas = len(self.nodes) // self.n_masters - 1
                if any(len(s) - 3 != replicas for s in slots):
                    return False
        return True

    @staticmethod
    def _wait(deadline: float, what: str, done: Callable[[], bool]) -> None:
        while not done():
            if time.monotonic() > deadline:
                raise StreamfanError(f"cluster: timed out waiting for {what}")
            time.sleep(0.02)  # waits-on-time-ok: polling the nodes' gossip

    def masters(self) -> list[ClusterNode]:
        """The nodes that serve slots now (after a failover, a former replica)."""
        out = []
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            with node.client() as r:
                role = r.execute_command("ROLE")[0]
            if role == b"master":
                out.append(node)
        return out

    def owner(self, slot: int) -> ClusterNode:
        """The master that serves ``slot`` now, as a live master sees it."""
        with self.masters()[0].client() as r:
            for first, last, master, *_ in r.execute_command("CLUSTER", "SLOTS"):
                if int(first) <= slot <= int(last):
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise StreamfanError(f"slot {slot} is not served")

    def migrate_slot(self, slot: int, target: ClusterNode, *, batch: int = 100) -> None:
        """Move ``slot`` and its keys to ``target``, as ``valkey-cli --cluster
        reshard`` does: IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE."""
        source = self.owner(slot)
        src_id, dst_id = source.node_id(), target.node_id()
        with source.client() as src, target.client() as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", *keys)
            dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        for node in self.masters():
            if node not in (source, target):
                with node.client() as r:
                    r.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)

    def flush(self) -> None:
        for node in self.masters():
            with node.client() as r:
                r.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
