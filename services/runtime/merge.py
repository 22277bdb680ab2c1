"""The order a worker with several inputs takes them in: the order the log stored them.

Each input has its own fetch loop, so which of two pending messages on different inputs
reaches the worker first is a matter of timing. In a lockstep session only one bar's cascade
is in flight and every fetch is already waiting when a message is stored, so messages arrive
in stored order (the replay's order, docs/replay.md). After a server restart, or when the
worker starts, that does not hold: a bar and the fill it caused can both be pending, and the
input whose pull reaches the server first would win. So each batch is sorted by stored time,
and after an outage (or at start) the worker first waits until every input has completed a
fetch sent since then, so that everything pending is queued before any of it is decided.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable

from nats.aio.msg import Msg

MERGE_WAIT_S = 30.0  # an input whose fetches keep failing this long is not waited for

Queued = tuple[str, Msg]
"""(input stream, message)."""


def stored_ns(msg: Msg) -> int:
    """When JetStream stored the message (server wall clock, ns)."""
    return int(msg.metadata.timestamp.timestamp() * 1e9)


class InputMerge:
    def __init__(self, streams: tuple[str, ...]) -> None:
        self._rank = {stream: n for n, stream in enumerate(streams)}
        self._fetched = dict.fromkeys(streams, -1)
        self._merged = -1

    def fetched(
        self, stream: str, outages_before: int, outages_after: int, connected: bool
    ) -> None:
        """A fetch of ``stream`` ended (with messages or none, already queued); it counts
        when it was sent on a live connection and no outage began meanwhile."""
        if connected and outages_before == outages_after:
            self._fetched[stream] = outages_after

    def due(self, outages: int) -> bool:
        """Whether the next batch waits for every input first: a worker with several inputs,
        at its start or after an outage."""
        return len(self._rank) > 1 and self._merged != outages

    async def wait(self, outages: Callable[[], int], stop: asyncio.Event) -> None:
        deadline = time.monotonic() + MERGE_WAIT_S
        while not stop.is_set() and time.monotonic() < deadline:
            now = outages()
            if all(seen == now for seen in self._fetched.values()):
                break
            await asyncio.sleep(0.01)
        self._merged = outages()

    def order(self, batch: list[Queued]) -> list[Queued]:
        """A merge of the inputs by stored time (a tie goes to the input declared first).
        Each input keeps its own arrival order, even if the server's clock stepped back:
        the exactly-once check skips what is at or below an input's last sequence."""
        by_input: dict[str, list[Queued]] = {}
        for item in batch:
            by_input.setdefault(item[0], []).append(item)
        if len(by_input) < 2:
            return batch
        return list(
            heapq.merge(
                *by_input.values(), key=lambda item: (stored_ns(item[1]), self._rank[item[0]])
            )
        )
