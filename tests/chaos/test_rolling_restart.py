"""Replicas behind the deployment's nginx: a rolling restart of every gateway and every worker.

Two gateways behind nginx configured from ``deploy/nginx.conf`` and two workers;
readers connect only through nginx, so whichever gateway nginx picks serves any
stream. During the run every gateway, then every worker, is restarted in turn
(SIGTERM, wait for it to hand over and exit, start its replacement). Nothing may
be lost or repeated, and nginx's access log — in the deployment's own format —
must hold no token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_rolling_restart_behind_nginx_loses_nothing(tmp_path: Path) -> None:
    out, run_dir = tmp_path / "summary.json", tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--seed", "2", "--duration", "20", "--streams", "8",
         "--readers", "2", "--front", "nginx", "--faults", "restart_gateways,restart_workers",
         "--run-dir", str(run_dir), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    assert summary["faults"]["restart_gateways"] == summary["faults"]["restart_workers"] == 1
    assert summary["replies_exact"] == summary["streams"] == 8
    assert summary["readers_exact"] == summary["readers"] == 16
    assert summary["duplicates"] == 0 and summary["gaps"] == 0
    assert summary["process_exits"] == [] and summary["problems"] == []
    access = (run_dir / "nginx-access.log").read_text()
    assert "GET /ws " in access  # the readers did come through nginx
    assert "token" not in access
