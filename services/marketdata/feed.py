"""Publishing bars into the log, append-only per subject.

A bar whose open time is not after the last stored bar on its subject is skipped, and each
bar's id derives from (venue, symbol, interval, open time), so ingesting the same file twice
or restarting a feed adds nothing, however long after the de-duplication window.

A running feed (``Feed``) rides out server trouble the way a worker does: reads and publishes
retry with capped backoff (one log line per outage), a window is re-sent under the same ids,
and after a long outage the last stored bar per subject decides what is still to send. A
full store is said once (a status on ``sys.status.<feed>``) and the bars wait, unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable

import msgspec

from contracts.envelope import bar_envelope
from contracts.events import Bar
from contracts.subjects import subject_for
from eventstore.barrier import Barrier
from eventstore.bus import Bus, Stored
from eventstore.lag import SETTLE_STREAMS
from eventstore.retry import Interrupted, backoff, transient, wait_out
from services.runtime.heartbeat import StoreWatch, publish_heartbeat

CHUNK = 2048
HEARTBEAT_S = 2.0  # the workers' interval (WorkerOptions.heartbeat_s), which keel status assumes
STOP_GRACE_S = 0.5  # after a stop signal, how long the current chunk may take before it is cut

log = logging.getLogger("keel.marketdata")


class FeedResult(msgspec.Struct):
    stored: int = 0
    duplicates: int = 0
    stale: int = 0


async def publish_bars(
    bus: Bus,
    bars: Iterable[Bar],
    *,
    between_steps: Callable[[], Awaitable[object]] | None = None,
    progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
    into: FeedResult | None = None,
    watch: StoreWatch | None = None,
) -> FeedResult:
    """Publish bars in order; with ``between_steps`` each time step is sent on its own and
    the callable (a pause, or a wait for the fleet to catch up) is awaited before the next.
    Counts go to ``into`` when given (readable even if the run is cancelled).

    With ``watch`` (a running feed) server trouble and a full store are waited out, until
    ``stop``; without (``keel ingest``) they raise."""
    result = FeedResult() if into is None else into
    last_open: dict[str, int] = {}
    chunk: list[Bar] = []

    async def last_bar(subject: str) -> int:
        def read() -> Awaitable[Stored | None]:
            return bus.last_event("MARKET", subject)

        stored = await (bus.retry("marketdata: read", read, stop=stop) if watch else read())
        return stored.event.open_time if _is_bar(stored) else -1

    async def flush() -> None:
        todo = list(chunk)
        attempt = 0
        while True:
            try:
                tally = await bus.publish_many(
                    ((b, bar_envelope(b)) for b in todo), on_full=watch.full if watch else None
                )
            except Exception as exc:
                if watch is None or not transient(exc):
                    raise
                attempt += 1
                bus.outage.trouble("marketdata: publish", exc)
                await wait_out(backoff(attempt), stop)
                # Past the de-duplication window: the log says which bars are still to send.
                stored = {subject: await last_bar(subject) for subject in _subjects(todo)}
                left = [b for b in todo if b.open_time > stored[subject_for(b)]]
                result.stored += len(todo) - len(left)
                todo = left
                continue
            break
        if watch is not None:
            await watch.cleared()
        result.stored += tally.stored
        result.duplicates += tally.duplicates
        if progress:
            progress(len(chunk))
        chunk.clear()

    try:
        if between_steps is not None:
            await between_steps()  # a restarted feed: the fleet first settles what is stored
        for bar in bars:
            if stop is not None and stop.is_set():
                break
            subject = subject_for(bar)
            if subject not in last_open:
                last_open[subject] = await last_bar(subject)
            if bar.open_time <= last_open[subject]:
                result.stale += 1
                if progress:
                    progress(1)
                continue
            last_open[subject] = bar.open_time
            if between_steps and chunk and chunk[-1].ts != bar.ts:
                await flush()
                await between_steps()
            chunk.append(bar)
            if len(chunk) >= CHUNK:
                await flush()
        if chunk:
            await flush()
    except Interrupted:
        pass  # stopped while the server was away: a restarted feed resumes after the last bar
    return result


def _subjects(bars: list[Bar]) -> set[str]:
    return {subject_for(b) for b in bars}


def _is_bar(stored: Stored | None) -> bool:
    return stored is not None and isinstance(stored.event, Bar)


def pause(seconds: float, stop: asyncio.Event | None = None) -> Callable[[], Awaitable[None]]:
    """Wait ``seconds`` between time steps (cut short by ``stop``)."""

    async def wait() -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()

    return wait


def lockstep(bus: Bus, consumers: set[str], timeout: float = 30.0) -> Callable[[], Awaitable[bool]]:
    """Wait until the named workers have acknowledged everything stored for them: a live
    session whose processing order is the replay's (see docs/replay.md). It never moves on
    before they have: a worker down for longer than ``timeout`` is said in one line, and the
    feed keeps waiting for it (a stop signal still ends the feed)."""
    barrier = Barrier(bus, SETTLE_STREAMS, consumers=consumers)
    started = False

    async def wait() -> bool:
        nonlocal started
        if not started:
            await barrier.start()
            started = True
        late = False
        while not await barrier.wait(timeout):
            if not late:
                log.warning(
                    "lockstep: the fleet has not caught up within %.0fs; waiting for it", timeout
                )
                late = True
        if late:
            log.warning("lockstep: the fleet caught up; feeding again")
        return True

    return wait


class Feed:
    """A feed run the way a worker runs: a heartbeat on ``sys.heartbeat.<name>`` every
    ``heartbeat_s`` (``keel status`` shows a stalled or dead feed), and a prompt stop.

    ``stop()`` (the signal handler) ends the run within ``STOP_GRACE_S`` even while a publish
    waits on a server that is down: the publish is cancelled. Nothing is lost by that, since
    bar ids are deterministic and a restarted feed resumes after the last stored bar.
    """

    def __init__(self, name: str = "marketdata", heartbeat_s: float = HEARTBEAT_S) -> None:
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = asyncio.Event()
        self.processed = 0
        self.cut = False

    def stop(self) -> None:
        self.stopping.set()

    async def run(
        self,
        bus: Bus,
        bars: Iterable[Bar],
        *,
        between_steps: Callable[[], Awaitable[object]] | None = None,
    ) -> FeedResult:
        result = FeedResult()

        def count(n: int) -> None:
            self.processed += n

        watch = StoreWatch(bus, self.name, self.instance)

        async def publish() -> FeedResult:
            await watch.resume()
            return await publish_bars(
                bus,
                bars,
                between_steps=between_steps,
                progress=count,
                stop=self.stopping,
                into=result,
                watch=watch,
            )

        beating = asyncio.create_task(self._heartbeat(bus))
        feeding = asyncio.create_task(publish())
        stopped = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({feeding, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not feeding.done():
                done, _ = await asyncio.wait({feeding}, timeout=STOP_GRACE_S)
                if not done:
                    self.cut = True
                    feeding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeding
        finally:
            for task in (feeding, stopped, beating):
                task.cancel()
            await asyncio.gather(feeding, stopped, beating, return_exceptions=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE_S):
                    await self._beat(bus, "stopped")
        return result

    async def _beat(self, bus: Bus, status: str, seq: int = 0) -> None:
        await publish_heartbeat(bus, self.name, self.instance, status, seq, self.processed)

    async def _heartbeat(self, bus: Bus) -> None:
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            # Bounded: a beat the server never acknowledges must not delay the next one.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    await self._beat(bus, "running", seq)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    await self.stopping.wait()
