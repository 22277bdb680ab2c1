"""The live feed's one way into the log: batches stored in the order they were handed over.

The stream loops never wait for an acknowledgement: a frame's bars and facts are handed over
as one batch (``send``) and a single task stores the batches in order with
``Bus.publish_many``, riding out server trouble like ``services.marketdata.feed`` (backoff,
one line per outage, a full store said once through ``StoreWatch``). Bar ids derive from the
bar, fact ids from their content, so a batch sent again after an outage adds nothing; past
the de-duplication window the last stored bar per subject says what is still to send.

A feed state (``status``) is fenced when the fleet runs in lockstep: everything before it is
stored and the fleet has caught up before it is stored, and the fleet catches up again before
anything after it. The fleet thus handles a status between the bars around it exactly where a
replay, which finishes each market event's consequences before the next, handles it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from contracts.envelope import Envelope, MarketFact, bar_envelope, content_id, market_envelope
from contracts.events import Bar, Event, FeedStatus
from contracts.subjects import subject_for
from contracts.system_events import DeadLetter
from eventstore.bus import Bus, Stored
from eventstore.retry import Interrupted, backoff, transient, wait_out
from services.runtime.heartbeat import StoreWatch

log = logging.getLogger("keel.marketdata")

Item = tuple[Event, Envelope]
Fence = Callable[[], Awaitable[object]]


class Publisher:
    """Ordered, acknowledged storage of what the session found, off the hot path."""

    def __init__(self, bus: Bus, name: str, watch: StoreWatch, stop: asyncio.Event) -> None:
        self.bus = bus
        self.name = name
        self.watch = watch
        self.stop = stop
        self.stored = 0
        self.fence: Fence | None = None  # the fleet's lockstep, when it runs in lockstep
        self._batch: list[Item] = []
        # (items, marker): marker None, a future to resolve once stored, or True for a fence
        self._queue: deque[tuple[list[Item], asyncio.Future[None] | bool | None]] = deque()
        self._ready = asyncio.Event()

    def bar(self, bar: Bar) -> None:
        self._batch.append((bar, bar_envelope(bar)))

    def fact(self, event: MarketFact) -> None:
        self._batch.append((event, market_envelope(event)))

    def status(self, event: FeedStatus) -> None:
        """A feed state: stored on its own between two waits for the fleet (with a fence)."""
        if self.fence is None:
            self.fact(event)
            return
        self.send()
        self._put([(event, market_envelope(event))], True)

    def dead_letter(self, ts: int, where: str, reason: str, payload: bytes = b"") -> None:
        """A frame or response that could not be used, kept with the reason."""
        letter = DeadLetter(ts=ts, worker=self.name, subject=where, reason=reason, payload=payload)
        envelope = Envelope.root(content_id("dlq", self.name, where, reason, ts, payload.hex()), ts)
        self._batch.append((letter, envelope))

    def send(self) -> None:
        """Hand the current batch to the storing task (no wait)."""
        if self._batch:
            self._put(self._batch, None)
            self._batch = []

    async def flush(self) -> None:
        """Send the current batch and wait until everything handed over is stored."""
        self.send()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._put([], done)
        await done

    def _put(self, items: list[Item], marker: asyncio.Future[None] | bool | None) -> None:
        self._queue.append((items, marker))
        self._ready.set()

    async def run(self) -> None:
        """Store batches in order until cancelled; a fenced one alone, between waits for the
        fleet."""
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            items, done = self._queue.popleft()
            waiting = []
            try:
                if done is True:
                    await self._fenced(items)
                    continue
                if done:
                    waiting.append(done)
                while self._queue and self._queue[0][1] is not True:
                    more, more_done = self._queue.popleft()
                    items = items + more
                    if more_done:
                        waiting.append(more_done)
                if items:
                    await self._store(items)
            except Interrupted:
                return
            finally:
                for future in waiting:
                    if isinstance(future, asyncio.Future) and not future.done():
                        future.set_result(None)

    async def _fenced(self, items: list[Item]) -> None:
        assert self.fence is not None
        await self.fence()
        await self._store(items)
        await self.fence()

    async def _store(self, items: list[Item]) -> None:
        todo = items
        attempt = 0
        while True:
            try:
                tally = await self.bus.publish_many(todo, on_full=self.watch.full)
            except Exception as exc:
                if not transient(exc):
                    raise
                attempt += 1
                self.bus.outage.trouble(f"{self.name}: publish", exc)
                await wait_out(backoff(attempt), self.stop)
                todo = await self._still_to_send(todo)
                continue
            self.bus.outage.cleared()
            await self.watch.cleared()
            self.stored += tally.stored
            return

    async def _still_to_send(self, items: list[Item]) -> list[Item]:
        """Past the de-duplication window, bars the log already holds are not sent again."""
        last: dict[str, int] = {}
        left: list[Item] = []
        for event, envelope in items:
            if isinstance(event, Bar):
                subject = subject_for(event)
                if subject not in last:
                    stored = await self.bus.retry(
                        f"{self.name}: read", lambda s=subject: self._last(s), stop=self.stop
                    )
                    last[subject] = (
                        stored.event.open_time
                        if stored is not None and isinstance(stored.event, Bar)
                        else -1
                    )
                if event.open_time <= last[subject]:
                    continue
            left.append((event, envelope))
        return left

    def _last(self, subject: str) -> Awaitable[Stored | None]:
        return self.bus.last_event("MARKET", subject)
