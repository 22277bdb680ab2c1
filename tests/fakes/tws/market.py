"""Bars of the TWS fake: 5-second candles from a ``PricePath``, inside each contract's sessions.

Every intraday bar (5 seconds to 8 hours) aggregates the same 5-second candles that the
real-time bars stream, so a backfill agrees with what was streamed; daily bars come from
a daily path. Bars exist only inside the contract's sessions (``useRTH``: liquid hours).
Requests are parsed as IB writes them: ``"5 mins"``, ``"1800 S"``, ``"20240305 15:00:00 UTC"``.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import msgspec

from tests.fakes.prices import PricePath, SymbolSpec, snap
from tests.fakes.tws.contracts import Listing, is_open

NS = 1_000_000_000
STEP_NS = 5 * NS
DAY_NS = 86_400 * NS
BAR_SECONDS = {
    "5 secs": 5,
    "10 secs": 10,
    "15 secs": 15,
    "30 secs": 30,
    "1 min": 60,
    "2 mins": 120,
    "3 mins": 180,
    "5 mins": 300,
    "10 mins": 600,
    "15 mins": 900,
    "20 mins": 1200,
    "30 mins": 1800,
    "1 hour": 3600,
    "2 hours": 7200,
    "3 hours": 10800,
    "4 hours": 14400,
    "8 hours": 28800,
    "1 day": 86400,
}
DURATION_SECONDS = {"S": 1, "D": 86_400, "W": 7 * 86_400, "M": 30 * 86_400, "Y": 365 * 86_400}
TWS_ZONE = "US/Eastern"


class BarRow(msgspec.Struct, frozen=True):
    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    wap: float
    count: int


class RequestError(Exception):
    """A historical request IB would refuse (error 321 with this text)."""


def bar_seconds(text: str) -> int:
    seconds = BAR_SECONDS.get(text.strip())
    if seconds is None:
        raise RequestError(f"Historical data bar size setting is invalid: {text!r}")
    return seconds


def duration_seconds(text: str) -> int:
    count, _, unit = text.strip().partition(" ")
    if not count.isdigit() or unit not in DURATION_SECONDS:
        raise RequestError(f"Invalid duration format: {text!r}")
    return int(count) * DURATION_SECONDS[unit]


def parse_end(text: str, now_ns: int) -> int:
    """``endDateTime``: empty is now; ``yyyymmdd hh:mm:ss [zone]`` or ``yyyymmdd-hh:mm:ss`` UTC."""
    text = text.strip()
    if not text:
        return now_ns
    try:
        if "-" in text[:9]:
            stamp = dt.datetime.strptime(text, "%Y%m%d-%H:%M:%S").replace(tzinfo=dt.UTC)
        else:
            day, clock, *zone = text.split()
            local = dt.datetime.strptime(f"{day} {clock}", "%Y%m%d %H:%M:%S")
            stamp = local.replace(tzinfo=ZoneInfo(zone[0] if zone else TWS_ZONE))
    except (ValueError, KeyError):
        raise RequestError(f"End date/time is invalid: {text!r}") from None
    return int(stamp.timestamp()) * NS


def bar_date(open_ns: int, seconds: int, format_date: int, zone: str) -> str:
    """A bar's date as IB writes it: ``yyyymmdd`` for days, else per ``formatDate``."""
    if seconds >= 86_400:
        return dt.datetime.fromtimestamp(open_ns / NS, ZoneInfo(zone)).strftime("%Y%m%d")
    if format_date == 2:
        return str(open_ns // NS)
    local = dt.datetime.fromtimestamp(open_ns / NS, ZoneInfo(zone))
    return f"{local:%Y%m%d %H:%M:%S} {zone}"


class Market:
    """Prices per contract (keyed by conId) on the injected clock's time."""

    def __init__(self, seed: int = 0) -> None:
        self.five = PricePath.synthetic(seed)
        self.daily = PricePath.synthetic(seed)
        self.known: set[int] = set()
        self.closed_bars: dict[tuple[int, int, int, bool], BarRow | None] = {}

    def _key(self, listing: Listing) -> str:
        if listing.conId not in self.known:
            spec = SymbolSpec(
                symbol=str(listing.conId),
                base=listing.symbol,
                quote=listing.currency,
                tick_size=listing.minTick,
                lot_size=listing.lot,
                price=listing.price,
            )
            self.five.register([spec], STEP_NS)
            self.daily.register([spec], DAY_NS)
            self.known.add(listing.conId)
        return str(listing.conId)

    def price(self, listing: Listing, now_ns: int) -> float:
        """The last trade price at ``now_ns``: the forming 5-second candle's close so far."""
        open_ns = now_ns - now_ns % STEP_NS
        fraction = (now_ns - open_ns) / STEP_NS
        return self.five.partial(self._key(listing), open_ns, fraction).close

    def candle(self, listing: Listing, open_ns: int, rth: bool = False) -> BarRow | None:
        """The 5-second bar opening at ``open_ns``, or None outside the sessions."""
        if not is_open(listing, open_ns, rth):
            return None
        c = self.five.candle(self._key(listing), open_ns)
        wap = snap((c.high + c.low + c.close) / 3, listing.minTick)
        return BarRow(open_ns, c.open, c.high, c.low, c.close, c.volume, wap, c.trades)

    def bar(
        self, listing: Listing, open_ns: int, seconds: int, upto_ns: int, rth: bool
    ) -> BarRow | None:
        """The bar ``[open_ns, open_ns + seconds)`` built from the 5-second candles that
        closed by ``upto_ns`` (so a forming bar is its part so far); None if it has none."""
        if seconds >= 86_400:
            return self._day(listing, open_ns)
        complete = upto_ns >= open_ns + seconds * NS
        key = (listing.conId, open_ns, seconds, rth)
        if complete and key in self.closed_bars:
            return self.closed_bars[key]
        row = self._aggregate(listing, open_ns, seconds, upto_ns, rth)
        if complete:
            if len(self.closed_bars) > 200_000:
                self.closed_bars.clear()
            self.closed_bars[key] = row
        return row

    def _aggregate(
        self, listing: Listing, open_ns: int, seconds: int, upto_ns: int, rth: bool
    ) -> BarRow | None:
        end = min(open_ns + seconds * NS, upto_ns - upto_ns % STEP_NS)
        parts = [
            row
            for t in range(open_ns, end, STEP_NS)
            if (row := self.candle(listing, t, rth)) is not None
        ]
        if not parts:
            return None
        volume = sum(p.volume for p in parts)
        wap = sum(p.wap * p.volume for p in parts) / volume if volume else parts[-1].close
        return BarRow(
            open_ns,
            parts[0].open,
            max(p.high for p in parts),
            min(p.low for p in parts),
            parts[-1].close,
            round(volume, 8),
            snap(wap, listing.minTick),
            sum(p.count for p in parts),
        )

    def _day(self, listing: Listing, open_ns: int) -> BarRow | None:
        """A weekday's daily bar (sessions there differ only in hours, not in days)."""
        day = dt.datetime.fromtimestamp(open_ns / NS, ZoneInfo(listing.timeZoneId)).date()
        if day.weekday() >= 5:
            return None
        c = self.daily.candle(self._key(listing), open_ns - open_ns % DAY_NS)
        wap = snap((c.high + c.low + c.close) / 3, listing.minTick)
        return BarRow(open_ns, c.open, c.high, c.low, c.close, c.volume * 4000, wap, c.trades * 500)

    def history(
        self, listing: Listing, end_ns: int, duration_s: int, seconds: int, now_ns: int, rth: bool
    ) -> list[BarRow]:
        """The bars opening in ``[end - duration, end)``; a bar still forming at ``now``
        is included as far as it goes, as IB does when the end is now."""
        step = seconds * NS
        if seconds >= 86_400:
            zone = ZoneInfo(listing.timeZoneId)
            last = dt.datetime.fromtimestamp(end_ns / NS, zone).date()
            days = max(1, duration_s // 86_400)
            opens = [
                int(dt.datetime.combine(last - dt.timedelta(days=i), dt.time(), zone).timestamp())
                * NS
                for i in range(days + days // 2 + 3, -1, -1)
            ]
            rows = [self._day(listing, t) for t in opens]
            return [r for r in rows if r is not None][-days:]
        first = (end_ns - duration_s * NS) // step * step
        rows = []
        for t in range(first, end_ns, step):
            row = self.bar(listing, t, seconds, min(end_ns, now_ns), rth)
            if row is not None:
                rows.append(row)
        return rows
