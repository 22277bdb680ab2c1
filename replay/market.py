"""Market inputs of a replay: bar files and recorded streams, merged in event-time order.

Ties (bars closing at the same time) keep the order of the sources as given on the command
line, then each source's own order, so a run's input sequence is fully determined by its
spec. Bars outside ``[start, end)`` (by open time) are skipped.

A time-sorted file streams (``iter_bars``: chunk by chunk, so memory stays flat however many
bars); a first pass over its times checks the order. An unsorted file is read whole and sorted
(``read_bars``), so memory grows with it. Recorded streams are read whole and sorted.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec

from contracts.events import Bar
from contracts.subjects import bars_of_symbol
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.streams import STREAM_BY_NAME
from services.marketdata.sources import is_time_sorted, iter_bars, read_bars


class DataSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bar file, or a recorded stream (``MARKET``) or subject filter (``md.bar.>``)."""

    location: str
    symbol: str | None = None
    venue: str = "local"
    interval: str | None = None
    sha256: str = ""

    @property
    def is_stream(self) -> bool:
        return not Path(self.location).exists() and (
            self.location in STREAM_BY_NAME or self.location.startswith("md.")
        )

    def with_digest(self) -> DataSource:
        """Pin a file's content so a later ``keel replay`` can tell it changed."""
        if self.is_stream:
            return self
        path = Path(self.location)
        if path.is_dir():
            raise KeelError(f"data {self.location} is a directory, not a bar file")
        if not path.is_file():
            raise KeelError(f"data {self.location}: no such file, stream or subject")
        return msgspec.structs.replace(self, sha256=file_digest(path))


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SkippedRows = list[tuple[str, Sequence[str]]]
"""Per bar file, its skipped rows (``"row N: reason"``); a streamed file's list grows as it is
read, so it is complete once the replay has consumed the file."""


def load_source(
    source: DataSource, url: str | None, verify: bool = True, skipped: SkippedRows | None = None
) -> Iterable[Bar]:
    """A source's bars in time order: a file streams, a recorded stream is read whole.

    ``verify`` checks a pinned file's sha256 (a full read); callers that pinned it moments
    ago (``keel backtest``, sweep workers) skip it. ``skipped`` collects the file's bad rows."""
    if source.is_stream:
        if url is None:
            raise KeelError(f"data {source.location!r} is a stream: it needs a NATS server")
        return asyncio.run(_stream_bars(url, source))
    path = Path(source.location)
    if not path.exists():
        raise KeelError(f"data {source.location}: no such file, stream or subject")
    if verify and source.sha256 and file_digest(path) != source.sha256:
        raise KeelError(f"data {source.location} changed since the run was recorded")
    symbol = source.symbol or path.stem
    if not is_time_sorted(path):  # rare: sorted in memory, as the stream would skip rows
        bar_file = read_bars(path, venue=source.venue, symbol=symbol, interval=source.interval)
        if skipped is not None:
            skipped.append((source.location, bar_file.skipped))
        return bar_file.bars
    stream = iter_bars(path, venue=source.venue, symbol=symbol, interval=source.interval)
    if skipped is not None:
        skipped.append((source.location, stream.skipped))
    return stream


async def _stream_bars(url: str, source: DataSource) -> list[Bar]:
    """Every stored bar on the source's subjects, ordered by event time then subject."""
    if source.location in STREAM_BY_NAME:
        subject = bars_of_symbol(source.symbol) if source.symbol else "md.bar.>"
    else:
        subject = source.location
    bus = await Bus.connect(url, name="replay-source")
    try:
        bars = [
            item.event
            async for item in bus.read(subject, "MARKET")
            if isinstance(item, Stored) and isinstance(item.event, Bar)
        ]
    finally:
        await bus.close()
    if not bars:
        raise KeelError(f"no bars stored on {subject}")
    bars.sort(key=lambda b: (b.ts, b.venue, b.symbol, b.interval))
    return bars


def market_events(
    sources: Sequence[DataSource],
    url: str | None = None,
    start: int | None = None,
    end: int | None = None,
    verify: bool = True,
    skipped: SkippedRows | None = None,
) -> Iterator[Bar]:
    """The bars in replay order, read lazily; callers count what they consume.

    Every source is opened (and a file checked) before this returns, and the first bar is
    read: when the window holds no bar at all, ``KeelError`` is raised here. A reversed
    window is refused by name. ``skipped`` collects each file's bad rows (``SkippedRows``).
    """
    if start is not None and end is not None and start > end:
        raise KeelError("--start is after --end: the time range is reversed")
    windowed = [
        _window(
            load_source(source, url, verify, skipped),
            start,
            end,
            sorted_opens=not source.is_stream,
        )
        for source in sources
    ]
    # A single source needs no merge: every layer costs each bar a generator step.
    if len(windowed) == 1:
        merged = iter(windowed[0])
    else:
        merged = heapq.merge(*windowed, key=lambda bar: bar.ts)
    first = next(merged, None)
    if first is None:
        raise KeelError("no bars in the requested data and time range")
    return itertools.chain((first,), merged)


def _window(
    bars: Iterable[Bar], start: int | None, end: int | None, *, sorted_opens: bool
) -> Iterable[Bar]:
    """The bars opening in ``[start, end)``: all of them, untouched, without bounds."""
    if start is None and end is None:
        return bars
    lo = -1 if start is None else start
    hi = 1 << 63 if end is None else end
    return _bounded(bars, lo, hi, sorted_opens=sorted_opens)


def _bounded(bars: Iterable[Bar], lo: int, hi: int, *, sorted_opens: bool) -> Iterator[Bar]:
    """The bars opening in ``[lo, hi)``; a file's open times only grow, so it stops at hi."""
    for bar in bars:
        if bar.open_time >= hi:
            if sorted_opens:
                return
            continue
        if bar.open_time >= lo:
            yield bar
