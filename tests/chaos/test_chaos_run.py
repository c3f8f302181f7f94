"""A short seeded chaos run in the suite: every fault kind once, every reader exact.

The run is the real ``python -m chaos`` in its own process (it starts its own Redis,
mock upstream, two workers and two gateways), so the suite checks what an operator
would run. Its longer default (``python -m chaos``) and its figures are in
docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from chaos.plan import PROCESS_FAULTS

ROOT = Path(__file__).resolve().parents[2]


#: The process faults of the suite's run: every kind, Redis killed and paused too
#: (workers and gateways ride a Redis outage out; an exit fails the run).
FAULTS = PROCESS_FAULTS


def test_a_short_seeded_chaos_run_keeps_every_reader_exact(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, "-m", "chaos", "--seed", "1", "--duration", "16", "--streams", "8",
         "--readers", "2", "--faults", ",".join(FAULTS),
         "--run-dir", str(tmp_path / "run"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    assert summary["problems"] == [] and summary["process_exits"] == []
    assert summary["replies_exact"] == summary["streams"] == 8
    assert summary["readers_exact"] == summary["readers"] == 16
    assert summary["duplicates"] == 0 and summary["gaps"] == 0
    # every process fault happened at least once, so the run tested what it claims
    kinds = {kind for kind, n in summary["faults"].items() if n > 0}
    assert set(FAULTS) <= kinds
    assert any(kind.startswith("upstream ") for kind in kinds)
