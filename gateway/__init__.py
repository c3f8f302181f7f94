"""The streamfan gateway: WebSocket fan-out and replay of Redis event streams.

``Gateway`` (in :mod:`gateway.server`) is the whole server; ``docs/protocol.md``
is its wire protocol.
"""

from __future__ import annotations

from gateway.server import Gateway
from gateway.tuning import Tuning

__all__ = ["Gateway", "Tuning"]
