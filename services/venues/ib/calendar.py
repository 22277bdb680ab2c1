"""An exchange's trading calendar from IB's contract details, so a closed market is not
taken for a stalled feed.

IB writes sessions in the exchange's local time (``timeZoneId``), a day at a time, about a
week ahead: ``20261207:0930-20261207:1600;20261208:CLOSED``, an overnight future's
``20261206:1800-20261207:1700``, or the older ``20261207:0930-1600`` (several ranges of one
day separated by commas; an end at or before the start is on the next day). Every answer is
a pure function of the text and an explicit time in Unix nanoseconds.

Outside the listed days the calendar knows nothing and answers "open": expecting data there
means a feed that stops is still noticed. ``known`` tells the two apart; refresh the contract
details (IB's list moves forward daily) to know more.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import zoneinfo

import msgspec

NS = 1_000_000_000
_NEVER = 1 << 62

IB_ZONES: dict[str, str] = {
    "EST": "America/New_York",
    "EDT": "America/New_York",
    "CST": "America/Chicago",
    "CDT": "America/Chicago",
    "MST": "America/Denver",
    "PST": "America/Los_Angeles",
    "JST": "Asia/Tokyo",
    "CTT": "Asia/Shanghai",
    "HKT": "Asia/Hong_Kong",
    "IST": "Asia/Kolkata",
    "AET": "Australia/Sydney",
    "ECT": "Europe/Paris",
    "BST": "Europe/London",
}
"""IB's short zone names (TWS is Java: these are Java's short ids, read as the exchange's
local time with its daylight saving; zoneinfo's ``EST``/``MST`` are fixed offsets and would
be an hour off half the year). Every other name (``US/Eastern``, ``EST5EDT``, ``MET``,
``Europe/London``...) is an IANA name zoneinfo knows."""


class CalendarError(ValueError):
    """Session text or a zone name that cannot be read, in one line quoting it."""


class Session(msgspec.Struct, frozen=True):
    """Open from ``open_ns`` (included) to ``close_ns`` (excluded)."""

    open_ns: int
    close_ns: int


class TradingCalendar(msgspec.Struct, frozen=True):
    """Sorted, non-overlapping sessions (touching ones merged) and the span of listed
    days they describe: ``[first_ns, last_ns)``."""

    zone: str
    sessions: tuple[Session, ...]
    first_ns: int
    last_ns: int

    @classmethod
    def parse(cls, hours: str, zone_id: str) -> TradingCalendar:
        """IB's ``tradingHours`` (or ``liquidHours``) with its ``timeZoneId``."""
        zone = ib_zone(zone_id)
        sessions: list[Session] = []
        days: list[dt.date] = []
        for part in filter(None, (p.strip() for p in hours.split(";"))):
            day, found = _parse_part(part, zone)
            days.append(day)
            sessions.extend(found)
        if not days:
            raise CalendarError(f"trading hours {hours!r}: no days listed")
        first = _ns(dt.datetime.combine(min(days), dt.time(), zone))
        last = _ns(dt.datetime.combine(max(days) + dt.timedelta(days=1), dt.time(), zone))
        merged = _merge(sessions)
        if merged:
            first = min(first, merged[0].open_ns)
            last = max(last, merged[-1].close_ns)
        return cls(zone.key, tuple(merged), first, last)

    def known(self, t_ns: int) -> bool:
        """Whether ``t_ns`` falls in the listed days."""
        return self.first_ns <= t_ns < self.last_ns

    def is_open(self, t_ns: int) -> bool:
        if not self.known(t_ns):
            return True
        i = bisect.bisect_right(self.sessions, t_ns, key=_open) - 1
        return i >= 0 and t_ns < self.sessions[i].close_ns

    def next_open(self, t_ns: int) -> int | None:
        """The first session start after ``t_ns``; None when the listed days hold none."""
        i = bisect.bisect_right(self.sessions, t_ns, key=_open)
        return self.sessions[i].open_ns if i < len(self.sessions) else None

    def next_close(self, t_ns: int) -> int | None:
        """The first session end after ``t_ns``; None when the listed days hold none."""
        i = bisect.bisect_right(self.sessions, t_ns, key=_close)
        return self.sessions[i].close_ns if i < len(self.sessions) else None

    def expected_closes(self, after_ns: int, until_ns: int, interval_ns: int) -> int:
        """How many bars of ``interval_ns`` (aligned to the Unix epoch) close in
        ``(after_ns, until_ns]`` with some of their interval in a session: the bars a
        working feed delivers. Time outside the listed days counts as open."""
        if interval_ns <= 0:
            raise ValueError("interval_ns must be > 0")
        if until_ns <= after_ns:
            return 0
        spans = [(-_NEVER, self.first_ns)]
        spans.extend((s.open_ns, s.close_ns) for s in self.sessions)
        spans.append((self.last_ns, _NEVER))
        ranges: list[tuple[int, int]] = []
        for open_ns, close_ns in spans:
            # A bar closing at c covers [c - interval, c): it meets [open, close) when
            # open < c < close + interval.
            low = max(after_ns, open_ns)
            high = min(until_ns, close_ns + interval_ns - 1)
            if high > low:
                first, last = low // interval_ns + 1, high // interval_ns
                if last >= first:
                    ranges.append((first, last))
        count, reached = 0, None
        for first, last in sorted(ranges):
            if reached is not None:
                first = max(first, reached + 1)
            if last >= first:
                count += last - first + 1
            reached = last if reached is None else max(reached, last)
        return count


@functools.lru_cache(maxsize=256)
def ib_zone(zone_id: str) -> zoneinfo.ZoneInfo:
    """IB's ``timeZoneId`` as a zone; an unknown name is a ``CalendarError``."""
    name = zone_id.strip().split(" ")[0] if zone_id else ""
    try:
        return zoneinfo.ZoneInfo(IB_ZONES.get(name, name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise CalendarError(f"time zone {zone_id!r} is not one IB or zoneinfo knows") from exc


def _parse_part(part: str, zone: zoneinfo.ZoneInfo) -> tuple[dt.date, list[Session]]:
    day_text, colon, rest = part.partition(":")
    day = _date(day_text, part)
    if not colon:
        raise CalendarError(f"trading hours {part!r}: expected DATE:HHMM-... or DATE:CLOSED")
    if rest == "CLOSED":
        return day, []
    sessions: list[Session] = []
    if "," in rest or rest.count(":") == 0:
        for span in rest.split(","):
            start_text, dash, end_text = span.partition("-")
            if not dash:
                raise CalendarError(f"trading hours {part!r}: expected HHMM-HHMM")
            start = _at(day, start_text, zone, part)
            end = _at(day, end_text, zone, part)
            if end <= start:
                end = _at(day + dt.timedelta(days=1), end_text, zone, part)
            sessions.append(Session(start, end))
        return day, sessions
    start_text, dash, end_text = part.partition("-")
    end_day_text, colon, end_time = end_text.partition(":")
    if not dash or not colon:
        raise CalendarError(f"trading hours {part!r}: expected DATE:HHMM-DATE:HHMM")
    start = _at(day, start_text.partition(":")[2], zone, part)
    end = _at(_date(end_day_text, part), end_time, zone, part)
    if end <= start:
        raise CalendarError(f"trading hours {part!r}: the session ends before it starts")
    return day, [Session(start, end)]


def _open(session: Session) -> int:
    return session.open_ns


def _close(session: Session) -> int:
    return session.close_ns


def _date(text: str, part: str) -> dt.date:
    try:
        if len(text) != 8 or not text.isdigit():
            raise ValueError(text)
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError as exc:
        raise CalendarError(f"trading hours {part!r}: {text!r} is not a YYYYMMDD date") from exc


def _at(day: dt.date, hhmm: str, zone: zoneinfo.ZoneInfo, part: str) -> int:
    if len(hhmm) != 4 or not hhmm.isdigit():
        raise CalendarError(f"trading hours {part!r}: {hhmm!r} is not HHMM")
    hour, minute = int(hhmm[:2]), int(hhmm[2:])
    if hour == 24 and minute == 0:
        return _ns(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), zone))
    if hour > 23 or minute > 59:
        raise CalendarError(f"trading hours {part!r}: {hhmm!r} is not a time of day")
    return _ns(dt.datetime.combine(day, dt.time(hour, minute), zone))


def _ns(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * NS


def _merge(sessions: list[Session]) -> list[Session]:
    merged: list[Session] = []
    for session in sorted(sessions, key=_open):
        if merged and session.open_ns <= merged[-1].close_ns:
            last = merged[-1]
            merged[-1] = Session(last.open_ns, max(last.close_ns, session.close_ns))
        else:
            merged.append(session)
    return merged
