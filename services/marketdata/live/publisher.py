"""The live feed's one way into the log: batches stored in the order they were handed over.

The stream loops never wait for an acknowledgement: a frame's bars and facts are handed over
as one batch (``send``) and a single task stores the batches in order with
``Bus.publish_many``, riding out server trouble like ``services.marketdata.feed`` (backoff,
one line per outage, a full store said once through ``StoreWatch``). Bar ids derive from the
bar, fact ids from their content, so a batch sent again after an outage adds nothing; past
the de-duplication window the last stored bar per subject says what is still to send.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from contracts.envelope import Envelope, MarketFact, bar_envelope, content_id, market_envelope
from contracts.events import Bar, DeadLetter, Event
from contracts.subjects import subject_for
from eventstore.bus import Bus, Stored
from eventstore.retry import Interrupted, backoff, transient, wait_out
from services.runtime.heartbeat import StoreWatch

log = logging.getLogger("keel.marketdata")

Item = tuple[Event, Envelope]


class Publisher:
    """Ordered, acknowledged storage of what the session found, off the hot path."""

    def __init__(self, bus: Bus, name: str, watch: StoreWatch, stop: asyncio.Event) -> None:
        self.bus = bus
        self.name = name
        self.watch = watch
        self.stop = stop
        self.stored = 0
        self._batch: list[Item] = []
        self._queue: asyncio.Queue[tuple[list[Item], asyncio.Future[None] | None]] = asyncio.Queue()

    def bar(self, bar: Bar) -> None:
        self._batch.append((bar, bar_envelope(bar)))

    def fact(self, event: MarketFact) -> None:
        self._batch.append((event, market_envelope(event)))

    def dead_letter(self, ts: int, where: str, reason: str, payload: bytes = b"") -> None:
        """A frame or response that could not be used, kept with the reason."""
        letter = DeadLetter(ts=ts, worker=self.name, subject=where, reason=reason, payload=payload)
        envelope = Envelope.root(content_id("dlq", self.name, where, reason, ts, payload.hex()), ts)
        self._batch.append((letter, envelope))

    def send(self) -> None:
        """Hand the current batch to the storing task (no wait)."""
        if self._batch:
            self._queue.put_nowait((self._batch, None))
            self._batch = []

    async def flush(self) -> None:
        """Send the current batch and wait until everything handed over is stored."""
        self.send()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(([], done))
        await done

    async def run(self) -> None:
        """Store batches in order until cancelled."""
        while True:
            items, done = await self._queue.get()
            waiting = [done] if done else []
            while not self._queue.empty():
                more, more_done = self._queue.get_nowait()
                items = items + more
                if more_done:
                    waiting.append(more_done)
            try:
                if items:
                    await self._store(items)
            except Interrupted:
                return
            finally:
                for future in waiting:
                    if not future.done():
                        future.set_result(None)

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
