"""The trading calendar read from IB's ``tradingHours``/``liquidHours`` and ``timeZoneId``:
open or not at a time, the next open and close, and how many bar closes a working feed
delivers between two times (none while the market is closed: not a stall)."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.venues.ib.calendar import CalendarError, TradingCalendar, ib_zone

MINUTE = 60_000_000_000
HOUR = 60 * MINUTE
NY = ZoneInfo("America/New_York")
CHICAGO = ZoneInfo("America/Chicago")

# A week of a US stock's regular hours as IB writes them (Friday to the next Friday).
STOCK = ";".join(
    [
        "20261204:0930-20261204:1600",
        "20261205:CLOSED",
        "20261206:CLOSED",
        "20261207:0930-20261207:1600",
        "20261208:0930-20261208:1600",
        "20261209:0930-20261209:1300",  # a half day
        "20261210:0930-20261210:1600",
        "20261211:0930-20261211:1600",
    ]
)
# CME equity futures: Sunday 17:00 to Friday 16:00 Chicago, an hour's break each day.
ES = ";".join(
    [
        "20261205:CLOSED",
        "20261206:1700-20261207:1600",
        "20261207:1700-20261208:1600",
        "20261208:1700-20261209:1600",
    ]
)


def at(zone: dt.tzinfo, *parts: int) -> int:
    year, month, day, *clock = parts
    return int(dt.datetime(year, month, day, *clock, tzinfo=zone).timestamp()) * 1_000_000_000


def test_a_stock_is_open_in_its_session_and_closed_outside() -> None:
    calendar = TradingCalendar.parse(STOCK, "US/Eastern")
    assert not calendar.is_open(at(NY, 2026, 12, 7, 9, 29, 59))
    assert calendar.is_open(at(NY, 2026, 12, 7, 9, 30))
    assert calendar.is_open(at(NY, 2026, 12, 7, 15, 59, 59))
    assert not calendar.is_open(at(NY, 2026, 12, 7, 16, 0))  # the close is excluded
    assert not calendar.is_open(at(NY, 2026, 12, 5, 12, 0))  # CLOSED: Saturday
    assert not calendar.is_open(at(NY, 2026, 12, 9, 13, 30))  # after the half day
    # The first and last listed days bound what the calendar knows.
    assert calendar.known(at(NY, 2026, 12, 4, 0, 0)) and calendar.known(at(NY, 2026, 12, 11, 23))
    assert not calendar.known(at(NY, 2026, 12, 3, 23, 59))
    assert not calendar.known(at(NY, 2026, 12, 12, 0, 0))


def test_next_open_and_close_step_over_closed_days() -> None:
    calendar = TradingCalendar.parse(STOCK, "US/Eastern")
    friday_evening = at(NY, 2026, 12, 4, 17, 0)
    assert calendar.next_open(friday_evening) == at(NY, 2026, 12, 7, 9, 30)
    assert calendar.next_close(friday_evening) == at(NY, 2026, 12, 7, 16, 0)
    in_session = at(NY, 2026, 12, 9, 11, 0)
    assert calendar.next_close(in_session) == at(NY, 2026, 12, 9, 13, 0)
    assert calendar.next_open(in_session) == at(NY, 2026, 12, 10, 9, 30)
    assert calendar.next_open(at(NY, 2026, 12, 11, 10, 0)) is None  # beyond the listed days
    assert calendar.next_close(at(NY, 2026, 12, 11, 16, 0)) is None


def test_overnight_future_sessions_span_midnight_with_a_daily_break() -> None:
    calendar = TradingCalendar.parse(ES, "US/Central")
    assert not calendar.is_open(at(CHICAGO, 2026, 12, 6, 16, 59))  # Sunday before the open
    assert calendar.is_open(at(CHICAGO, 2026, 12, 6, 23, 0))
    assert calendar.is_open(at(CHICAGO, 2026, 12, 7, 0, 30))  # after midnight: same session
    assert not calendar.is_open(at(CHICAGO, 2026, 12, 7, 16, 30))  # the daily break
    assert calendar.next_open(at(CHICAGO, 2026, 12, 7, 16, 30)) == at(CHICAGO, 2026, 12, 7, 17)
    assert calendar.next_close(at(CHICAGO, 2026, 12, 7, 3, 0)) == at(CHICAGO, 2026, 12, 7, 16)


def test_the_older_format_with_several_ranges_a_day_and_one_past_midnight() -> None:
    calendar = TradingCalendar.parse(
        "20090507:0700-1200,1300-1600;20090508:CLOSED;20090510:1800-1700", "EST5EDT"
    )
    assert calendar.is_open(at(NY, 2009, 5, 7, 11, 59)) and calendar.is_open(at(NY, 2009, 5, 7, 13))
    assert not calendar.is_open(at(NY, 2009, 5, 7, 12, 30))
    assert not calendar.is_open(at(NY, 2009, 5, 8, 12, 0))
    # 1800-1700: the end is at or before the start, so it is the next day's.
    assert calendar.is_open(at(NY, 2009, 5, 11, 3, 0))
    assert calendar.next_close(at(NY, 2009, 5, 10, 19, 0)) == at(NY, 2009, 5, 11, 17, 0)


def test_daylight_saving_is_the_exchanges_own() -> None:
    hours = "20260306:0930-20260306:1600;20260309:0930-20260309:1600"  # US clocks change 8 Mar
    utc = dt.UTC
    for zone_id in ("US/Eastern", "America/New_York", "EST5EDT", "EST"):
        calendar = TradingCalendar.parse(hours, zone_id)
        assert calendar.sessions[0].open_ns == at(utc, 2026, 3, 6, 14, 30)
        assert calendar.sessions[1].open_ns == at(utc, 2026, 3, 9, 13, 30)


@pytest.mark.parametrize(
    ("zone_id", "name"),
    [
        ("US/Eastern", "US/Eastern"),
        ("EST", "America/New_York"),  # IB's EST keeps summer time; zoneinfo's would not
        ("CST", "America/Chicago"),
        ("MET", "MET"),
        ("JST", "Asia/Tokyo"),
        ("Europe/London", "Europe/London"),
    ],
)
def test_ibs_zone_names_map_to_zoneinfo(zone_id: str, name: str) -> None:
    assert ib_zone(zone_id).key == name


@pytest.mark.parametrize(
    ("hours", "zone_id", "message"),
    [
        ("20261207:0930-20261207:1600", "Mars/Olympus", "time zone 'Mars/Olympus'"),
        ("", "US/Eastern", "no days listed"),
        ("2026120:0930-1600", "US/Eastern", "'2026120' is not a YYYYMMDD date"),
        ("20261207:0930-20261207:2500", "US/Eastern", "'2500' is not a time of day"),
        ("20261207:930-1600", "US/Eastern", "'930' is not HHMM"),
        ("20261207:OPEN", "US/Eastern", "expected HHMM-HHMM"),
        ("20261207", "US/Eastern", "expected DATE:HHMM-... or DATE:CLOSED"),
        ("20261207:1600-20261207:0930", "US/Eastern", "ends before it starts"),
    ],
)
def test_unreadable_hours_are_one_line(hours: str, zone_id: str, message: str) -> None:
    with pytest.raises(CalendarError) as error:
        TradingCalendar.parse(hours, zone_id)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_expected_bar_closes_count_only_bars_that_meet_a_session() -> None:
    calendar = TradingCalendar.parse(STOCK, "US/Eastern")
    monday = (at(NY, 2026, 12, 7, 0, 0), at(NY, 2026, 12, 8, 0, 0))
    assert calendar.expected_closes(*monday, MINUTE) == 390  # 09:30-16:00
    # Hourly bars align to UTC hours: 14:30-21:00 UTC meets the bars closing 15:00...21:00.
    assert calendar.expected_closes(*monday, HOUR) == 7
    weekend = (at(NY, 2026, 12, 4, 16, 0), at(NY, 2026, 12, 7, 9, 30))
    assert calendar.expected_closes(*weekend, MINUTE) == 0  # closed: silence is no stall
    assert calendar.expected_closes(*weekend, 5_000_000_000) == 0
    half_day = (at(NY, 2026, 12, 9, 0, 0), at(NY, 2026, 12, 10, 0, 0))
    assert calendar.expected_closes(*half_day, MINUTE) == 210
    # Outside the listed days nothing is known: every bar is expected.
    after = at(NY, 2026, 12, 12, 0, 0)
    assert calendar.expected_closes(after, after + HOUR, MINUTE) == 60
    assert calendar.expected_closes(after, after, MINUTE) == 0


def test_a_bar_over_the_daily_break_is_counted_once() -> None:
    calendar = TradingCalendar.parse(ES, "US/Central")
    day = (at(CHICAGO, 2026, 12, 7, 0, 0), at(CHICAGO, 2026, 12, 8, 0, 0))
    assert calendar.expected_closes(*day, MINUTE) == 24 * 60 - 60
    assert calendar.expected_closes(*day, 4 * HOUR) == 6  # the break is inside one 4h bar


def _brute(calendar: TradingCalendar, after: int, until: int, step: int) -> int:
    """Bars closing in (after, until] with an open minute inside them."""
    first = after // step + 1
    last = until // step
    count = 0
    for k in range(first, last + 1):
        close = k * step
        if any(calendar.is_open(t) for t in range(close - step, close, MINUTE)):
            count += 1
    return count


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 7 * 24 * 60),
    length=st.integers(0, 36 * 60),
    minutes=st.sampled_from([1, 5, 15, 60, 240]),
    hours=st.sampled_from([STOCK, ES]),
)
def test_expected_closes_equal_a_count_bar_by_bar(
    start: int, length: int, minutes: int, hours: str
) -> None:
    calendar = TradingCalendar.parse(hours, "US/Eastern")
    origin = at(NY, 2026, 12, 3, 0, 0)  # a day before the listed ones: the unknown counts too
    after = origin + start * MINUTE
    until = after + length * MINUTE
    step = minutes * MINUTE
    assert calendar.expected_closes(after, until, step) == _brute(calendar, after, until, step)
    middle = after + (length // 2) * MINUTE
    assert calendar.expected_closes(after, until, step) == calendar.expected_closes(
        after, middle, step
    ) + calendar.expected_closes(middle, until, step)
