"""External events in a replay: JSONL files merged with the bars by event time.

An events file holds one event per line, exactly as the log stores it (what ``keel publish
ext`` publishes, what ``keel tap 'ext.>' --json`` prints): a JSON object with its ``type``
(``ListingAnnouncement``, ``SocialSentiment``, ``PromoAnnouncement``, or ``ParamsTuned``: a
calibration change, as the calibration worker publishes it on ``gov.tune.>``) and ``ts``.
Each goes to the roles that subscribe to its subject, exactly as on the bus. Blank lines
are skipped; any other line that is not such an event stops the run with its line number.

Merge order: by event time (a bar's ``ts`` is its close time); **ties put bars first** (a
bar closing at the moment an announcement is seen was complete before anyone could react
to it), then the events in file order (files in the order given, each file's own order).
Events outside the run's window ``[start, end)`` (by ``ts``) are skipped.

A time-sorted file streams: a first pass validates every line and checks the order, the
run then reads it again lazily, so memory stays flat. An unsorted file is read whole and
sorted by ``ts`` (stable: equal times keep their file order).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec

from contracts.events import (
    Event,
    External,
    ListingAnnouncement,
    ParamsTuned,
    PromoAnnouncement,
    SocialSentiment,
)
from eventstore.errors import KeelError
from replay.market import file_digest

Fed = External | ParamsTuned
"""An event a replay takes from an events file."""

_decoder = msgspec.json.Decoder(
    ListingAnnouncement | SocialSentiment | PromoAnnouncement | ParamsTuned
)


class EventFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An events file of a run, pinned by content like a bar file."""

    location: str
    sha256: str = ""

    def with_digest(self) -> EventFile:
        path = Path(self.location)
        if not path.is_file():
            raise KeelError(f"events {self.location}: no such file")
        return msgspec.structs.replace(self, sha256=file_digest(path))


def _lines(path: Path) -> Iterator[tuple[int, Fed]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise KeelError(f"events {path}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, _decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise KeelError(f"events {path}:{number}: {exc}") from None


def _is_sorted(path: Path) -> bool:
    """A full validating pass; True when the times never decrease."""
    last = None
    ordered = True
    for _, event in _lines(path):
        if last is not None and event.ts < last:
            ordered = False
        last = event.ts
    return ordered


def read_events(source: EventFile, verify: bool = True) -> Iterable[Fed]:
    """A file's events in time order (streamed when the file is sorted). Every line is
    validated before this returns, so a bad file fails before the run starts."""
    path = Path(source.location)
    if not path.is_file():
        raise KeelError(f"events {source.location}: no such file")
    if verify and source.sha256 and file_digest(path) != source.sha256:
        raise KeelError(f"events {source.location} changed since the run was recorded")
    if _is_sorted(path):
        return (event for _, event in _lines(path))
    return sorted((event for _, event in _lines(path)), key=lambda e: e.ts)


def with_events(
    bars: Iterable[Event],
    sources: Sequence[EventFile],
    start: int | None = None,
    end: int | None = None,
    verify: bool = True,
) -> Iterable[Event]:
    """``bars`` (the market events, already in replay order) merged with the files'
    events; the market events alone, untouched, when there are no event files."""
    if not sources:
        return bars
    lo = -1 if start is None else start
    hi = 1 << 63 if end is None else end
    streams = [read_events(source, verify) for source in sources]
    events = (e for e in heapq.merge(*streams, key=_ts) if lo <= e.ts < hi)
    return Merged(bars, events)


def _ts(event: Event) -> int:
    return event.ts


class Merged:
    """Market and external events in one stream (ties: market events first); counts the
    external events so a run can report bars and events apart."""

    def __init__(self, bars: Iterable[Event], events: Iterable[Fed]) -> None:
        self._bars = bars
        self._events = events
        self.external = 0

    def __iter__(self) -> Iterator[Event]:
        return heapq.merge(self._bars, self._counted(), key=_ts)

    def _counted(self) -> Iterator[Fed]:
        for event in self._events:
            self.external += 1
            yield event


def external_count(stream: Iterable[Event]) -> int:
    """How many external events a (consumed) replay stream held."""
    return stream.external if isinstance(stream, Merged) else 0
