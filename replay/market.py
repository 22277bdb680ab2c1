"""Market inputs of a replay: bar files and recorded streams, merged in event-time order.

Ties (bars closing at the same time) keep the order of the sources as given on the command
line, then each source's own order, so a run's input sequence is fully determined by its
spec. Bars outside ``[start, end)`` (by open time) are skipped.

A time-sorted file streams (``iter_bars``: chunk by chunk, so memory stays flat however many
bars); a first pass over its times checks the order. An unsorted file is read whole and sorted
(``read_bars``), so memory grows with it.

A recorded stream (``MARKET``, or a subject filter such as ``md.bar.>``) is read whole and
replays **every** market event it holds (bars, quotes, trades, funding rates, instruments,
feed statuses) in **stored order**, the stream sequence: that is the order the live fleet
saw them, so a bar backfilled after a stale status replays after it, as it was decided
live. Other events than bars are windowed by ``ts``.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec

from contracts.events import Bar, Event, FeedStatus, FundingRate, Instrument, Quote, Trade
from contracts.subjects import symbol_token
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.streams import STREAM_BY_NAME
from services.marketdata.sources import is_time_sorted, iter_bars, read_bars

MARKET_TYPES: tuple[type[Event], ...] = (Bar, Quote, Trade, FundingRate, Instrument, FeedStatus)
"""What a recorded stream replays: every market event type ``md.>`` admits."""


class DataSource(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A bar file, or a recorded stream (``MARKET``) or subject filter (``md.bar.>``); a
    stream's ``symbol`` keeps that symbol's events."""

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


def load_stream(source: DataSource, url: str | None) -> list[Event]:
    """A recorded stream's market events in stored order (read whole)."""
    if url is None:
        raise KeelError(f"data {source.location!r} is a stream: it needs a NATS server")
    return asyncio.run(_stream_events(url, source))


def _load_file(source: DataSource, verify: bool, skipped: SkippedRows | None) -> Iterable[Bar]:
    """A file's bars in time order, streamed. ``verify`` checks a pinned file's sha256 (a
    full read); callers that pinned it moments ago (``keel backtest``, sweep workers) skip
    it. ``skipped`` collects the file's bad rows."""
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


async def _stream_events(url: str, source: DataSource) -> list[Event]:
    """Every stored market event on the source's subjects (of its symbol, when it names
    one), in stream order."""
    subject = "md.>" if source.location in STREAM_BY_NAME else source.location
    token = symbol_token(source.symbol) if source.symbol else None
    bus = await Bus.connect(url, name="replay-source")
    try:
        events = [
            item.event
            async for item in bus.read(subject, "MARKET")
            if isinstance(item, Stored)
            and isinstance(item.event, MARKET_TYPES)
            and (token is None or symbol_token(item.event.symbol) == token)
        ]
    finally:
        await bus.close()
    if not events:
        what = f"{subject} for {source.symbol}" if source.symbol else subject
        raise KeelError(f"no market events stored on {what}")
    return events


class MarketEvents:
    """The market events of a replay in replay order, an iterator read lazily. ``others``
    counts those that are not bars (a recorded stream's quotes, trades, funding rates,
    instruments and feed statuses in the window), so a run reports its bars apart."""

    __slots__ = ("_events", "others")

    def __init__(self, events: Iterator[Event], others: int) -> None:
        self._events = events
        self.others = others

    def __iter__(self) -> Iterator[Event]:
        return self._events

    def __next__(self) -> Event:
        return next(self._events)


def market_events(
    sources: Sequence[DataSource],
    url: str | None = None,
    start: int | None = None,
    end: int | None = None,
    verify: bool = True,
    skipped: SkippedRows | None = None,
) -> MarketEvents:
    """The market events in replay order, read lazily; callers count what they consume.

    Every source is opened (and a file checked) before this returns, and the first event is
    read: when the window holds nothing at all, ``KeelError`` is raised here. A reversed
    window is refused by name. ``skipped`` collects each file's bad rows (``SkippedRows``).
    """
    if start is not None and end is not None and start > end:
        raise KeelError("--start is after --end: the time range is reversed")
    windowed: list[Iterable[Event]] = []
    others, recorded_bars, files = 0, 0, False
    for source in sources:
        if source.is_stream:
            recorded = _recorded_window(load_stream(source, url), start, end)
            bars = sum(1 for event in recorded if type(event) is Bar)
            others += len(recorded) - bars
            recorded_bars += bars
            windowed.append(recorded)
        else:
            files = True
            windowed.append(_window(_load_file(source, verify, skipped), start, end))
    if not files and not recorded_bars:  # statuses or quotes alone are no market to trade
        raise KeelError("no bars in the requested data and time range")
    # A single source needs no merge: every layer costs each bar a generator step.
    if len(windowed) == 1:
        merged = iter(windowed[0])
    else:
        merged = heapq.merge(*windowed, key=lambda event: event.ts)
    first = next(merged, None)
    if first is None:
        raise KeelError("no bars in the requested data and time range")
    return MarketEvents(itertools.chain((first,), merged), others)


def _recorded_window(events: list[Event], start: int | None, end: int | None) -> list[Event]:
    """A recorded stream's events in ``[start, end)``, in stored order: bars by open time
    (as files), the others by ``ts``."""
    if start is None and end is None:
        return events
    lo = -1 if start is None else start
    hi = 1 << 63 if end is None else end
    return [e for e in events if lo <= (e.open_time if type(e) is Bar else e.ts) < hi]


def _window(bars: Iterable[Bar], start: int | None, end: int | None) -> Iterable[Bar]:
    """A file's bars opening in ``[start, end)``: all of them, untouched, without bounds."""
    if start is None and end is None:
        return bars
    lo = -1 if start is None else start
    hi = 1 << 63 if end is None else end
    return _bounded(bars, lo, hi)


def _bounded(bars: Iterable[Bar], lo: int, hi: int) -> Iterator[Bar]:
    """The bars opening in ``[lo, hi)``; a file's open times only grow, so it stops at hi."""
    for bar in bars:
        if bar.open_time >= hi:
            return
        if bar.open_time >= lo:
            yield bar
