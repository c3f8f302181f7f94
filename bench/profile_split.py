"""Where a worker's CPU went, from py-spy's folded stacks (``py-spy record -f raw``).

Each sample is put in the category of its *outermost* frame that names one,
so a lease renewal's Redis call counts as "lease", a stream's append as
"append", and what matches nothing (the event loop's own callbacks, task
switches, the job loop) as "loop". Samples of the idle selector and of other
threads (the metrics server) are left out: the shares are of busy samples.
``python -m bench ingest --profile DIR`` stores this split in each row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

#: (category, substrings of a frame that put a sample in it), outermost match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "lease renewals + arq polling",
        (
            "_keep_lease",
            "arqhold",
            "start_jobs",
            "_poll_iteration",
            "heart_beat",
            "control.py",
            "Attempt.run ",
            "record_health",
        ),
    ),
    (
        "upstream read (httpx/httpcore/h11/anyio)",
        ("httpx/", "httpcore/", "h11/", "anyio/", "sniffio/", "Upstream._reads"),
    ),
    ("SSE decode + translate", ("worker/sse.py", "worker/translate.py")),
    (
        "Redis append (writer, batcher, redis-py)",
        ("worker/batcher.py", "redis/", "AttemptWriter", "publisher.py"),
    ),
    ("metrics", ("prometheus_client",)),
)
REST = "event loop, task switches, job loop"
_IDLE_LEAF = "select (selectors.py"
_OTHER_THREAD = "serve_forever"


def category(frames: list[str]) -> str:
    for frame in frames:
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return REST


def split(lines: Iterable[str]) -> dict[str, float]:
    """{category: share of busy samples}, largest first; empty if nothing was busy."""
    counts: Counter[str] = Counter()
    for line in lines:
        stack, _, n = line.rstrip("\n").rpartition(" ")
        frames = [f for f in stack.split(";") if f.strip()]
        if not frames or not n.isdigit():
            continue
        if _IDLE_LEAF in frames[-1] or any(_OTHER_THREAD in f for f in frames):
            continue
        counts[category(frames)] += int(n)
    total = sum(counts.values())
    return {name: c / total for name, c in counts.most_common()} if total else {}


def split_file(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    with path.open(encoding="utf-8", errors="replace") as f:
        return split(f)
