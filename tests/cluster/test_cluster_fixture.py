"""The suite's Redis Cluster: three masters that split every slot, and one
stream's keys on one of them."""

from __future__ import annotations

import redis

from cli.redis_cluster import SLOTS, RedisCluster
from streamfan.keys import Keys


def test_the_session_cluster_has_three_masters_covering_every_slot(
    redis_cluster: RedisCluster, cluster_url: str
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    with masters[0].client() as r:
        slots = r.execute_command("CLUSTER", "SLOTS")
        assert b"cluster_state:ok" in r.execute_command("CLUSTER", "INFO")
    assert sum(int(s[1]) - int(s[0]) + 1 for s in slots) == SLOTS
    assert len({int(s[2][1]) for s in slots}) == 3


def test_one_streams_keys_share_a_slot_and_streams_spread_over_the_masters(
    cluster_url: str,
) -> None:
    keys = Keys()
    with redis.RedisCluster.from_url(cluster_url) as r:
        for sid in ("a", "b", "c", "stream-42"):
            names = [keys.meta(sid), keys.events(sid), keys.live(sid), keys.lease(sid)]
            assert len({r.keyslot(k) for k in names}) == 1
        owners = {r.get_node_from_key(keys.meta(f"s{i}")).port for i in range(30)}
    assert len(owners) == 3
