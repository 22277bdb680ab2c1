"""Publishing bars into the log, append-only per subject.

A bar whose open time is not after the last stored bar on its subject is skipped, and each
bar's id derives from (venue, symbol, interval, open time), so ingesting the same file twice
or restarting a feed adds nothing, however long after the de-duplication window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

import msgspec

from contracts.envelope import Envelope, content_id
from contracts.events import Bar
from contracts.subjects import subject_for
from eventstore.bus import Bus, Stored

CHUNK = 2048


class FeedResult(msgspec.Struct):
    stored: int = 0
    duplicates: int = 0
    stale: int = 0


def bar_envelope(bar: Bar) -> Envelope:
    return Envelope.root(
        content_id("bar", bar.venue, bar.symbol, bar.interval, bar.open_time), bar.ts
    )


async def publish_bars(
    bus: Bus,
    bars: Iterable[Bar],
    *,
    pace_s: float = 0.0,
    progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> FeedResult:
    """Publish bars in order; with ``pace_s`` each time step is sent and then waited for."""
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
        if pace_s and chunk and chunk[-1].ts != bar.ts:
            await flush()
            await _sleep(pace_s, stop)
        chunk.append(bar)
        if len(chunk) >= CHUNK:
            await flush()
    if chunk:
        await flush()
    return result


def _is_bar(stored: Stored | None) -> bool:
    return stored is not None and isinstance(stored.event, Bar)


async def _sleep(seconds: float, stop: asyncio.Event | None) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
