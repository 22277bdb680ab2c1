"""The order a worker with several inputs takes them in: the order the log stored them.

Each input has its own fetch loop, so which of two pending messages on different inputs
reaches the worker first is a matter of timing: a fill can arrive before the bar that caused
it while the bar's input is between two pulls, or at the start, or after a server restart.
So a message is decided only once no other input can still deliver one stored before it.
Each input has a **watermark**:

- none (unbounded) when its consumer has nothing undelivered and nothing on its way (the
  consumer's info: no pending messages, and its last delivery received or acknowledged);
- otherwise the stored time of the newest message received from it: a consumer delivers in
  sequence order and a stream stores in time order, so whatever it still holds is later.

Held messages at or before the lowest watermark are decided in stored-time order (a tie goes
to the input declared first); the rest wait. Only inputs whose newest message is older than
the newest held one are asked: one consumer-info request each.

It always moves on: the input with the lowest watermark either holds messages at or below
it (decided now) or has room under its ``max_ack_pending`` for the server to deliver more.
A delivery lost in flight comes again after the consumer's ``ack_wait``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from services.runtime.role import durable_name

Queued = tuple[str, Msg]
"""(input stream, message)."""

UNBOUNDED = 2**63
"""The watermark of an input that holds nothing more."""
STATE_WAIT_S = 0.5


def stored_ns(msg: Msg) -> int:
    """When JetStream stored the message (server wall clock, ns)."""
    return int(msg.metadata.timestamp.timestamp() * 1e9)


async def consumer_state(js: JetStreamContext, worker: str, stream: str) -> ConsumerInfo | None:
    """``worker``'s consumer of ``stream`` now; ``None`` when it cannot be read (the server
    away: the input's newest message then bounds the merge)."""
    try:
        async with asyncio.timeout(STATE_WAIT_S):
            return await js.consumer_info(stream, durable_name(worker, stream))
    except Exception:
        return None


class InputMerge:
    def __init__(self, streams: tuple[str, ...]) -> None:
        self._rank = {stream: n for n, stream in enumerate(streams)}
        self._newest: dict[str, tuple[int, int]] = {}  # stream -> (sequence, stored ns)
        self._held: dict[str, deque[tuple[int, Msg]]] = {s: deque() for s in streams}

    @property
    def holding(self) -> bool:
        return any(self._held.values())

    def hold(self, items: Iterable[Queued]) -> None:
        """Messages as their fetch loops received them; each input keeps its own order (a
        server clock that stepped back must not put a message behind its successor, which
        the exactly-once check would then skip)."""
        for stream, msg in items:
            seq, stored = msg.metadata.sequence.stream, stored_ns(msg)
            if seq > self._newest.get(stream, (0, -1))[0]:
                self._newest[stream] = (seq, stored)
            self._held[stream].append((stored, msg))

    def lagging(self) -> list[str]:
        """The inputs that might still hold a message stored before the newest held one."""
        held = [queue[-1][0] for queue in self._held.values() if queue]
        if len(self._rank) < 2 or not held:
            return []
        latest = max(held)
        return [s for s in self._rank if self._newest.get(s, (0, -1))[1] < latest]

    def watermark(self, stream: str, info: ConsumerInfo | None) -> int:
        """``info``: the input's consumer now; ``None`` when it could not be read."""
        seq, stored = self._newest.get(stream, (0, -1))
        if info is None or info.delivered is None or info.ack_floor is None:
            return stored
        delivered = info.delivered.stream_seq
        arrived = delivered <= seq or info.ack_floor.stream_seq >= delivered
        return UNBOUNDED if info.num_pending == 0 and arrived else stored

    async def marks(self, state: Callable[[str], Awaitable[ConsumerInfo | None]]) -> dict[str, int]:
        """The watermark of every lagging input, their consumers all asked at once."""
        lagging = self.lagging()
        infos = await asyncio.gather(*(state(stream) for stream in lagging))
        return {s: self.watermark(s, info) for s, info in zip(lagging, infos, strict=True)}

    def take(self, marks: dict[str, int]) -> list[Queued]:
        """The held messages at or before every watermark, in stored order."""
        bound = min(marks.values(), default=UNBOUNDED)
        taken: list[Queued] = []
        while True:
            heads = [
                (queue[0][0], self._rank[stream], stream)
                for stream, queue in self._held.items()
                if queue and queue[0][0] <= bound
            ]
            if not heads:
                return taken
            stream = min(heads)[2]
            taken.append((stream, self._held[stream].popleft()[1]))
