"""``python -m bench plot``: the charts in ``docs/img/`` from ``bench/results/*-latest.json``.

Needs matplotlib (the ``bench`` extra). Draws:

``fanout-throughput.svg``   delivered events/s (max phase) and p99 delivery latency
                            (half phase) against clients per stream, for streamfan,
                            the ceiling and the naive server on the same axes;
``fanout-latency.svg``      the delivery latency distribution (CDF) at the largest C
                            measured (1,000 by default): half phase solid, fixed
                            (LLM-rate) phase dashed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.report import RESULTS_DIR, progress

IMG_DIR = Path(__file__).resolve().parent.parent / "docs" / "img"
COLORS = {"streamfan": "#1f77b4", "sse": "#9467bd", "ceiling": "#2ca02c", "naive": "#d62728"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the JSON is")
    p.add_argument("--img", type=Path, default=IMG_DIR, help="where the SVGs go")


def load(results: Path, scenario: str) -> dict[str, Any] | None:
    path = results / f"{scenario}-latest.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _dig(row: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = row
    for key in path:
        value = value[key]
    return float(value)


def plot_fanout(data: dict[str, Any], img: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    servers = sorted({r["server"] for r in rows}, key=list(COLORS).index)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for server in servers:
        for ax, phase, figure in (
            (ax1, "max", ("events_per_s",)),
            (ax2, "half", ("latency_ms", "p99")),
        ):
            pts = sorted(
                (r["clients_per_stream"], _dig(r, figure))
                for r in rows
                if r["server"] == server and r["phase"] == phase
            )
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=server, color=COLORS.get(server))
    ax1.set(xscale="log", yscale="log", xlabel="clients per stream", ylabel="events/s delivered")
    ax1.set_title("maximum delivered events/s")
    ax2.set(xscale="log", yscale="log", xlabel="clients per stream", ylabel="p99 latency (ms)")
    ax2.set_title("p99 delivery latency at half of streamfan's max")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    m = data["machine"]
    fig.suptitle(f"fanout — {m['cpu_model']}, {m['cores']} cores, Python {m['python']}", size=9)
    fig.tight_layout()
    out = [img / "fanout-throughput.svg"]
    fig.savefig(out[0])
    plt.close(fig)

    top = max(r["clients_per_stream"] for r in rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"half": "-", "fixed": "--"}
    for r in rows:
        q = r["latency_quantiles_ms"]
        if r["phase"] in styles and r["clients_per_stream"] == top and q:
            ax.plot(
                q,
                [i / (len(q) - 1) for i in range(len(q))],
                styles[r["phase"]],
                label=f"{r['server']} {r['phase']}, {r['offered_rate_per_stream']:.0f} ev/s/stream",
                color=COLORS.get(r["server"]),
            )
    ax.set(xscale="log", xlabel="delivery latency (ms)", ylabel="fraction of events")
    ax.set_title(f"delivery latency distribution at C={top:,}", size=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.append(img / "fanout-latency.svg")
    fig.savefig(out[1])
    plt.close(fig)
    return out


def main(args: argparse.Namespace) -> list[Path]:
    args.img.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    fanout = load(args.results, "fanout")
    if fanout is None:
        progress(f"no fanout-latest.json in {args.results}: nothing to plot")
    else:
        made += plot_fanout(fanout, args.img)
    for path in made:
        progress(f"wrote {path}")
    return made
