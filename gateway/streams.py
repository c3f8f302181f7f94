"""What the hub keeps per watched stream, and per subscriber of it.

A :class:`StreamState` is the stream's :class:`~streamfan.recovery.Fanout`
(its shared live position and who is in step, ahead or pending — decided in
:mod:`streamfan.recovery`) plus what only this gateway's I/O needs: the frame
prefix encoded once, the task that subscribed its channel, when it last moved.
A :class:`Subscription` is one socket's subscription to one stream.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from streamfan import protocol
from streamfan.recovery import Fanout
from streamfan.store import StreamMeta

if TYPE_CHECKING:
    from gateway.batch import Sink


class Subscription:
    __slots__ = ("active", "answered", "peer", "state", "stream_id")

    def __init__(self, peer: Sink, stream_id: str, state: StreamState) -> None:
        self.peer = peer
        self.stream_id = stream_id
        self.state = state
        self.active = True
        #: ``subscribed`` went out: a later error answers no request (``reply_to`` null).
        self.answered = False


class StreamState(Fanout[Subscription]):
    __slots__ = ("activity", "cache", "meta", "prefix", "watched")

    def __init__(self, stream_id: str, watched: asyncio.Task[None]) -> None:
        super().__init__(stream_id=stream_id)
        self.prefix = protocol.event_prefix(stream_id)
        #: Done once Redis confirmed the SUBSCRIBE to the stream's channel.
        self.watched = watched
        self.activity = 0.0
        #: The meta as last read by a subscriber's catch-up (model, created_at).
        self.meta: StreamMeta | None = None
        #: What a wire format derives once per stream (a chunk's constant head).
        self.cache: dict[object, bytes] = {}
