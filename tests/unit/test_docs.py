"""The docs and deploy files say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from streamfan.settings import ENV_PREFIX, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_the_operations_settings_table_lists_every_setting_with_its_default() -> None:
    text = (ROOT / "docs/operations.md").read_text()
    table = text.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip().strip("`") for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1] if cells[1] != "—" else ""
    assert rows == {variable: default for variable, default, _doc in settings_table()}


def _settings_named_in(text: str) -> set[str]:
    return set(re.findall(r"\b" + ENV_PREFIX + r"[A-Z0-9_]+", text))


def test_deploy_files_are_valid_yaml_and_use_only_settings_that_exist() -> None:
    known = {variable for variable, _d, _doc in settings_table()}
    files = [*sorted((ROOT / "deploy").rglob("*.yaml"))]
    assert files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        unknown = _settings_named_in(path.read_text()) - known
        assert not unknown, f"{path.name} names settings that do not exist: {unknown}"


def test_the_compose_file_runs_redis_with_aof_workers_gateways_and_a_proxy() -> None:
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert {"redis", "worker", "gateway", "proxy"} <= services.keys()
    assert "--appendonly" in services["redis"]["command"]
    assert services["worker"]["command"] == ["worker", "--processes", "auto"]
    assert services["gateway"]["command"][0] == "gateway"


def test_the_kubernetes_workers_run_one_supervisor_per_pod() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/worker.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[:2] == ["worker", "--processes"]
    # One process per CPU requested: the manifest's two numbers agree.
    assert int(args[2]) == int(container["resources"]["requests"]["cpu"])


def test_the_kubernetes_gateway_probes_readyz_and_healthz() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/gateway.yaml").read_text()))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert any(d["kind"] == "Service" for d in docs)
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= doc.keys()


def test_every_long_running_compose_service_restarts_when_its_process_exits() -> None:
    services = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())["services"]
    for name, service in services.items():
        assert service.get("restart") == "unless-stopped", name


def test_the_worker_readiness_probes_in_compose_and_kubernetes_ask_its_readyz() -> None:
    services = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())["services"]
    worker = services["worker"]
    port = worker["environment"]["STREAMFAN_WORKER_METRICS_PORT"]
    assert f":{port}/readyz" in " ".join(worker["healthcheck"]["test"])
    assert worker["environment"]["STREAMFAN_HOST"] == "0.0.0.0"
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/worker.yaml").read_text()))
    container = docs[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STREAMFAN_HOST"] == "0.0.0.0"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["probes"] == int(env["STREAMFAN_WORKER_METRICS_PORT"])
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probes"}


def test_no_liveness_probe_asks_readyz_so_a_redis_outage_never_restarts_a_pod() -> None:
    for path in sorted((ROOT / "deploy/k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                live = container.get("livenessProbe", {}).get("httpGet", {})
                assert live.get("path") != "/readyz", f"{path.name}: {container['name']}"


def test_the_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    import orjson

    from gateway.metrics import PREFIX as GATEWAY
    from worker.metrics import PREFIX as WORKER

    dashboard = orjson.loads((ROOT / "deploy/grafana-dashboard.json").read_bytes())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in re.findall(r"streamfan_\w+", e)}
    documented = (ROOT / "docs/protocol.md").read_text() + (ROOT / "worker/metrics.py").read_text()
    for name in names:
        assert name.startswith((GATEWAY, WORKER)), name
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert base.removeprefix(GATEWAY).removeprefix(WORKER) in documented, name
