"""Publishing bars into the log, append-only per subject.

A bar whose open time is not after the last stored bar on its subject is skipped, and each
bar's id derives from (venue, symbol, interval, open time), so ingesting the same file twice
or restarting a feed adds nothing, however long after the de-duplication window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable

import msgspec

from contracts.envelope import bar_envelope
from contracts.events import Bar
from contracts.subjects import subject_for
from eventstore.barrier import Barrier
from eventstore.bus import Bus, Stored
from eventstore.lag import SETTLE_STREAMS

CHUNK = 2048


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
) -> FeedResult:
    """Publish bars in order; with ``between_steps`` each time step is sent on its own and
    the callable (a pause, or a wait for the fleet to catch up) is awaited before the next."""
    result = FeedResult()
    last_open: dict[str, int] = {}
    chunk: list[Bar] = []

    async def flush() -> None:
        tally = await bus.publish_many((b, bar_envelope(b)) for b in chunk)
        result.stored += tally.stored
        result.duplicates += tally.duplicates
        if progress:
            progress(len(chunk))
        chunk.clear()

    for bar in bars:
        if stop is not None and stop.is_set():
            break
        subject = subject_for(bar)
        if subject not in last_open:
            stored = await bus.last_event("MARKET", subject)
            last_open[subject] = stored.event.open_time if _is_bar(stored) else -1
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
    return result


def _is_bar(stored: Stored | None) -> bool:
    return stored is not None and isinstance(stored.event, Bar)


def pause(seconds: float, stop: asyncio.Event | None = None) -> Callable[[], Awaitable[None]]:
    """Wait ``seconds`` between time steps (cut short by ``stop``)."""

    async def wait() -> None:
        if stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    return wait


def lockstep(bus: Bus, consumers: set[str], timeout: float = 30.0) -> Callable[[], Awaitable[bool]]:
    """Wait until the named workers have acknowledged everything stored for them: a live
    session whose processing order is the replay's (see docs/replay.md)."""
    barrier = Barrier(bus, SETTLE_STREAMS, consumers=consumers)
    started = False

    async def wait() -> bool:
        nonlocal started
        if not started:
            await barrier.start()
            started = True
        return await barrier.wait(timeout)

    return wait
