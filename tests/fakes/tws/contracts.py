"""The fake's contract catalogue: what ``reqContractDetails`` finds, with IB's own details.

Stocks route through SMART with a primary exchange (AAPL on NASDAQ, BRK B on NYSE), ES
futures list the next four quarterly expiries on CME (third Friday, multiplier 50, tick 0.25)
plus a continuous ``CONTFUT`` that resolves to the front month, and EUR.USD trades on
IDEALPRO. Session templates (no holidays) give both the ``tradingHours``/``liquidHours``
strings in IB's format (``20240305:0930-20240305:1600;20240309:CLOSED``) and whether a bar
time is inside a session, so the bars the fake serves and the hours it advertises agree.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Iterator
from zoneinfo import ZoneInfo

import msgspec

NS = 1_000_000_000
STOCK_ORDER_TYPES = (
    "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AON,AVGCOST,BASKET,BENCHPX,COND,CONDORDER,DARKONLY,"
    "DARKPOLL,DAY,DEACT,DEACTDIS,DEACTEOD,DIS,GAT,GTC,GTD,GTT,HID,IBKRATS,ICE,IMB,IOC,LIT,LMT,"
    "LOC,MIDPX,MIT,MKT,MOC,MTL,NGCOMB,NODARK,NONALGO,OCA,OPG,OPGREROUT,PEGBENCH,PEGMID,POSTATS,"
    "POSTONLY,PREOPGRTH,PRICECHK,REL,REL2MID,RELPCTOFS,RPI,RTH,SCALE,SCALEODD,SCALERST,SIZECHK,"
    "SNAPMID,SNAPMKT,SNAPREL,STP,STPLMT,SWEEP,TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,WHATIF"
)
FUTURE_ORDER_TYPES = (
    "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AVGCOST,BASKET,BENCHPX,COND,CONDORDER,DAY,DEACT,"
    "DEACTDIS,DEACTEOD,GAT,GTC,GTD,GTT,HID,ICE,IOC,LIT,LMT,LTH,MIT,MKT,MTL,NGCOMB,NONALGO,OCA,"
    "PEGBENCH,SCALE,SCALERST,SNAPMID,SNAPMKT,SNAPREL,STP,STPLMT,TRAIL,TRAILLIT,TRAILLMT,"
    "TRAILMIT,WHATIF"
)
FX_ORDER_TYPES = (
    "ACTIVETIM,AD,ADJUST,ALERT,ALGO,ALLOC,AVGCOST,BASKET,CASHQTY,COND,CONDORDER,DAY,DEACT,"
    "DEACTDIS,DEACTEOD,GAT,GTC,GTD,GTT,IOC,LIT,LMT,MIT,MKT,NONALGO,OCA,REL,RELPCTOFS,SCALE,"
    "SCALERST,STP,STPLMT,TRAIL,TRAILLIT,TRAILLMT,TRAILMIT,WHATIF"
)
MONTH_CODES = {3: "H", 6: "M", 9: "U", 12: "Z"}
ROLL_DAYS = 8


class Listing(msgspec.Struct, frozen=True):
    """One contract as IB describes it; ``calendar`` names its session template."""

    conId: int
    symbol: str
    secType: str
    exchange: str
    currency: str
    localSymbol: str
    tradingClass: str
    minTick: float
    longName: str
    timeZoneId: str
    calendar: str
    price: float
    primaryExchange: str = ""
    marketName: str = ""
    multiplier: str = ""
    lastTradeDate: str = ""
    lastTradeTime: str = ""
    contractMonth: str = ""
    industry: str = ""
    category: str = ""
    subcategory: str = ""
    orderTypes: str = STOCK_ORDER_TYPES
    validExchanges: str = ""
    underConId: int = 0
    underSymbol: str = ""
    underSecType: str = ""
    marketRuleIds: str = ""
    stockType: str = ""
    secIds: tuple[tuple[str, str], ...] = ()
    minSize: float = 1.0
    sizeIncrement: float = 1.0
    suggestedSizeIncrement: float = 1.0
    lot: float = 1.0
    margin_rate: float = 0.5
    margin_per_unit: float = 0.0

    @property
    def factor(self) -> float:
        """The contract multiplier as a number (1 for stocks and FX)."""
        return float(self.multiplier) if self.multiplier else 1.0


def third_friday(year: int, month: int) -> dt.date:
    first = dt.date(year, month, 1)
    return first + dt.timedelta(days=(4 - first.weekday()) % 7 + 14)


def es_futures(today: dt.date, count: int = 4) -> list[Listing]:
    """The next ``count`` quarterly E-mini S&P 500 futures not yet expired on ``today``."""
    out: list[Listing] = []
    year, month = today.year, (today.month + 2) // 3 * 3
    while len(out) < count:
        expiry = third_friday(year, month)
        if expiry >= today:
            out.append(
                Listing(
                    conId=495_000_000 + (year - 2000) * 100 + month,
                    symbol="ES",
                    secType="FUT",
                    exchange="CME",
                    currency="USD",
                    localSymbol=f"ES{MONTH_CODES[month]}{year % 10}",
                    tradingClass="ES",
                    marketName="ES",
                    minTick=0.25,
                    multiplier="50",
                    lastTradeDate=expiry.strftime("%Y%m%d"),
                    lastTradeTime="08:30",
                    contractMonth=f"{year}{month:02d}",
                    longName="E-mini S&P 500",
                    timeZoneId="US/Central",
                    calendar="cme_equity",
                    price=5100.0,
                    orderTypes=FUTURE_ORDER_TYPES,
                    validExchanges="CME,QBALGO",
                    underConId=11004968,
                    underSymbol="ES",
                    underSecType="IND",
                    marketRuleIds="67,67",
                    margin_per_unit=12_650.0,
                )
            )
        year, month = (year + 1, 3) if month == 12 else (year, month + 3)
    return out


def default_listings(now_ns: int) -> list[Listing]:
    today = dt.datetime.fromtimestamp(now_ns / NS, ZoneInfo("US/Central")).date()
    stocks = [
        Listing(
            conId=265598,
            symbol="AAPL",
            secType="STK",
            exchange="SMART",
            primaryExchange="NASDAQ",
            currency="USD",
            localSymbol="AAPL",
            tradingClass="NMS",
            marketName="NMS",
            minTick=0.01,
            longName="APPLE INC",
            industry="Technology",
            category="Computers",
            subcategory="Computers",
            timeZoneId="US/Eastern",
            calendar="us_stock",
            price=190.0,
            validExchanges="SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,ISLAND,DRCTEDGE,BEX,BATS,"
            "EDGEA,BYX,IEX,EDGX,FOXRIVER,PEARL,NYSENAT,LTSE,MEMX,IBEOS,OVERNIGHT,TPLUS0,PSX",
            marketRuleIds="26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26",
            stockType="COMMON",
            secIds=(("ISIN", "US0378331005"),),
            minSize=0.0001,
            sizeIncrement=0.0001,
            suggestedSizeIncrement=100.0,
        ),
        Listing(
            conId=72063691,
            symbol="BRK B",
            secType="STK",
            exchange="SMART",
            primaryExchange="NYSE",
            currency="USD",
            localSymbol="BRK B",
            tradingClass="BRK B",
            marketName="BRK B",
            minTick=0.01,
            longName="BERKSHIRE HATHAWAY INC-CL B",
            industry="Financial",
            category="Insurance",
            subcategory="Property&Casualty Insurance",
            timeZoneId="US/Eastern",
            calendar="us_stock",
            price=410.0,
            validExchanges="SMART,AMEX,NYSE,CBOE,PHLX,ISE,CHX,ARCA,ISLAND,DRCTEDGE,BEX,BATS,"
            "EDGEA,BYX,IEX,EDGX,FOXRIVER,PEARL,NYSENAT,LTSE,MEMX,IBEOS,OVERNIGHT,TPLUS0,PSX",
            marketRuleIds="26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26,26",
            stockType="COMMON",
            secIds=(("ISIN", "US0846707026"),),
            minSize=0.0001,
            sizeIncrement=0.0001,
            suggestedSizeIncrement=100.0,
        ),
    ]
    fx = Listing(
        conId=12087792,
        symbol="EUR",
        secType="CASH",
        exchange="IDEALPRO",
        currency="USD",
        localSymbol="EUR.USD",
        tradingClass="EUR.USD",
        marketName="EUR.USD",
        minTick=0.00005,
        longName="European Monetary Union Euro",
        timeZoneId="US/Eastern",
        calendar="idealpro",
        price=1.085,
        orderTypes=FX_ORDER_TYPES,
        validExchanges="IDEALPRO",
        marketRuleIds="239",
        minSize=1.0,
        sizeIncrement=1.0,
        suggestedSizeIncrement=1.0,
        lot=1000.0,
        margin_rate=0.03,
    )
    return [*stocks, *es_futures(today), fx]


class Query(msgspec.Struct, frozen=True):
    """The contract fields of a request, as ib_async sends them."""

    conId: int = 0
    symbol: str = ""
    secType: str = ""
    lastTradeDateOrContractMonth: str = ""
    strike: str = ""
    right: str = ""
    multiplier: str = ""
    exchange: str = ""
    primaryExchange: str = ""
    currency: str = ""
    localSymbol: str = ""
    tradingClass: str = ""

    @classmethod
    def from_fields(cls, fields: list[str]) -> Query:
        conid, *rest = fields[:12]
        return cls(int(conid or 0), *rest)


class Catalogue:
    """The listings, and IB's matching of a request's contract fields against them."""

    def __init__(self, listings: Iterable[Listing]) -> None:
        self.by_conid = {listing.conId: listing for listing in listings}

    def add(self, listing: Listing) -> None:
        self.by_conid[listing.conId] = listing

    def front(self, symbol: str, exchange: str, today: dt.date) -> Listing | None:
        """The future a ``CONTFUT`` means: the first expiring more than ``ROLL_DAYS`` on."""
        roll = (today + dt.timedelta(days=ROLL_DAYS)).strftime("%Y%m%d")
        futures = sorted(
            (x for x in self.by_conid.values() if x.secType == "FUT" and x.symbol == symbol),
            key=lambda x: x.lastTradeDate,
        )
        live = [x for x in futures if x.lastTradeDate > roll and exchange in ("", x.exchange)]
        return live[0] if live else None

    def match(self, q: Query, today: dt.date) -> list[Listing]:
        if q.secType == "CONTFUT":
            front = self.front(q.symbol, q.exchange, today)
            return [msgspec.structs.replace(front, secType="CONTFUT")] if front else []
        if q.conId:
            found = self.by_conid.get(q.conId)
            return [found] if found else []
        return [x for x in self.by_conid.values() if self._fits(x, q)]

    @staticmethod
    def _fits(x: Listing, q: Query) -> bool:
        if q.localSymbol and q.localSymbol != x.localSymbol:
            return False
        if q.symbol and q.symbol != x.symbol:
            return False
        if not (q.symbol or q.localSymbol):
            return False
        if q.secType and q.secType != x.secType:
            return False
        if q.currency and q.currency != x.currency:
            return False
        if q.primaryExchange and q.primaryExchange != x.primaryExchange:
            return False
        if q.exchange and q.exchange not in (x.exchange, *x.validExchanges.split(",")):
            return False
        if q.lastTradeDateOrContractMonth and not x.lastTradeDate.startswith(
            q.lastTradeDateOrContractMonth
        ):
            return False
        if q.multiplier and float(q.multiplier) != x.factor:
            return False
        return not (q.tradingClass and q.tradingClass != x.tradingClass)

    def __iter__(self) -> Iterator[Listing]:
        return iter(self.by_conid.values())


Window = tuple[dt.datetime, dt.datetime]


def _at(day: dt.date, hhmm: str, tz: ZoneInfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(int(hhmm[:2]), int(hhmm[2:])), tz)


def windows(listing: Listing, day: dt.date, rth: bool) -> list[Window]:
    """The sessions that start on local ``day`` (``rth``: the liquid hours only)."""
    tz = ZoneInfo(listing.timeZoneId)
    weekday = day.weekday()
    nxt = day + dt.timedelta(days=1)
    if listing.calendar == "us_stock":
        if weekday >= 5:
            return []
        return (
            [(_at(day, "0930", tz), _at(day, "1600", tz))]
            if rth
            else [(_at(day, "0400", tz), _at(day, "2000", tz))]
        )
    if listing.calendar == "cme_equity":
        if rth:
            return [(_at(day, "0830", tz), _at(day, "1500", tz))] if weekday < 5 else []
        return [(_at(day, "1700", tz), _at(nxt, "1600", tz))] if weekday in (6, 0, 1, 2, 3) else []
    if weekday in (6, 0, 1, 2, 3):
        return [(_at(day, "1715", tz), _at(nxt, "1700", tz))]
    return []


def local_day(listing: Listing, ts_ns: int) -> dt.date:
    return dt.datetime.fromtimestamp(ts_ns / NS, ZoneInfo(listing.timeZoneId)).date()


def is_open(listing: Listing, ts_ns: int, rth: bool = False) -> bool:
    """Whether the instant ``ts_ns`` lies inside a session (sessions start and end on whole
    minutes, so the answer is the same for every instant of a minute)."""
    return _open_minute(listing, ts_ns // (60 * NS), rth)


@functools.lru_cache(maxsize=200_000)
def _open_minute(listing: Listing, minute: int, rth: bool) -> bool:
    when = dt.datetime.fromtimestamp(minute * 60, ZoneInfo(listing.timeZoneId))
    day = when.date()
    for d in (day - dt.timedelta(days=1), day):
        if any(start <= when < end for start, end in windows(listing, d, rth)):
            return True
    return False


def hours(listing: Listing, ts_ns: int, rth: bool, days: int = 7) -> str:
    """IB's hours string for the week from the local day of ``ts_ns``."""
    first = local_day(listing, ts_ns)
    parts: list[str] = []
    for i in range(days):
        day = first + dt.timedelta(days=i)
        spans = windows(listing, day, rth)
        label = day.strftime("%Y%m%d")
        if not spans:
            parts.append(f"{label}:CLOSED")
        for start, end in spans:
            parts.append(f"{start:%Y%m%d:%H%M}-{end:%Y%m%d:%H%M}")
    return ";".join(parts)
