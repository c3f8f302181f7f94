"""Output shared by the scenarios: percentiles, the table, the JSON file, progress lines."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def progress(message: str) -> None:
    """One line on stderr (long runs show where they are)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (NaN if empty)."""
    if not sorted_values:
        return math.nan
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def summary(values: Sequence[float]) -> dict[str, float]:
    """count, p50, p90, p99, max and mean of ``values``."""
    s = sorted(values)
    return {
        "count": len(s),
        "p50": percentile(s, 50),
        "p90": percentile(s, 90),
        "p99": percentile(s, 99),
        "max": float(s[-1]) if s else math.nan,
        "mean": sum(s) / len(s) if s else math.nan,
    }


def quantiles(values: Sequence[float], points: int = 101) -> list[float]:
    """``points`` evenly spaced percentiles (0 … 100) of ``values``: a CDF for plots."""
    s = sorted(values)
    if not s:
        return []
    return [float(s[round(i * (len(s) - 1) / (points - 1))]) for i in range(points)]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (prints well in a terminal and pastes into the docs)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def write_json(scenario: str, data: dict[str, Any], out_dir: Path | None = None) -> Path:
    """``bench/results/SCENARIO-YYYYmmdd-HHMMSS.json`` (and ``SCENARIO-latest.json``)."""
    directory = out_dir or RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = directory / f"{scenario}-{stamp}.json"
    text = json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n"
    path.write_text(text)
    (directory / f"{scenario}-latest.json").write_text(text)
    return path


def _default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def all_finite(obj: Any) -> bool:
    """True if every number in ``obj`` (nested) is finite (used by the smoke tests)."""
    if isinstance(obj, bool):
        return True
    if isinstance(obj, int | float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(all_finite(v) for v in obj)
    return True
