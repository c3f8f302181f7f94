"""The streamfan worker: an arq function that streams one upstream reply into Redis.

``arq worker.WorkerSettings`` runs it (so does ``streamfan worker``). The
settings are read from ``STREAMFAN_*`` when ``WorkerSettings`` is first looked up,
not at import, so importing ``worker.publisher`` never parses configuration.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        from worker.app import make_worker_settings

        return type("WorkerSettings", (), make_worker_settings())
    raise AttributeError(name)
