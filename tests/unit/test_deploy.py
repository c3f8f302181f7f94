"""deploy/compose.cluster.yaml: the event streams on a Redis Cluster, checked statically.

No Docker in CI: these read the file. What a cluster does is tested on a real
one (tests/cluster, tests/gateway/test_cluster*.py, tests/integration/test_cluster_*.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _services(name: str) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / name).read_text())["services"]
    return services


def _nodes() -> dict[str, Any]:
    return {
        n: s
        for n, s in _services("compose.cluster.yaml").items()
        if n.startswith("events-") and n != "events-init"
    }


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_cluster_node_runs_cluster_enabled_with_aof_and_restarts() -> None:
    nodes = _nodes()
    assert len(nodes) == 6
    for name, node in nodes.items():
        command = node["command"]
        assert _flag(command, "--cluster-enabled") == "yes", name
        assert _flag(command, "--appendonly") == "yes", name
        # Clients get names, not container IPs that change on a restart.
        assert _flag(command, "--cluster-announce-hostname") == name
        assert _flag(command, "--cluster-preferred-endpoint-type") == "hostname"
        assert node["restart"] == "unless-stopped", name
        assert "healthcheck" in node, name


def test_the_init_creates_the_cluster_from_exactly_the_nodes_defined() -> None:
    init = _services("compose.cluster.yaml")["events-init"]
    listed = {n.split(":")[0] for n in init["environment"]["EVENTS_NODES"].split()}
    assert listed == set(_nodes())
    assert set(init["depends_on"]) == set(_nodes())
    assert init["restart"] == "no"  # one shot: it must not loop once the cluster exists
    assert "--cluster create" in " ".join(init["command"])


def test_workers_and_gateways_put_events_on_the_cluster_and_keep_the_queue() -> None:
    base, cluster = _services("compose.yaml"), _services("compose.cluster.yaml")
    for name in ("worker", "gateway"):
        env = cluster[name]["environment"]
        host = env["STREAMFAN_EVENTS_REDIS_URL"].split("//")[1].split(":")[0]
        assert host in _nodes(), name
        assert "STREAMFAN_REDIS_URL" not in env  # the arq queue stays on the base file's Redis
        assert cluster[name]["depends_on"]["events-init"]["condition"] == (
            "service_completed_successfully"
        )
        assert name in base
