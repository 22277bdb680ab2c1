"""The IB marketdata worker against the TWS fake (real ib_async, real nats-server).

Exchange time runs 60 times faster than the wall (``ScaledClock``, shared by the fake and
the session): a one-minute bar lasts a second. The fake's week starts on Tuesday 2024-03-05;
stocks trade 04:00-20:00 New York time (``useRTH`` off), ES and EUR.USD nearly round the
clock. Every test checks what a consumer of the log sees: Instruments, closed bars that
follow each other by exactly one interval with none stored twice, and feed states.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest
from nats.js.api import DeliverPolicy
from rich.console import Console

from cli.status_commands import render
from cli.venue_commands import check_venue
from contracts.events import Bar, FeedStatus, Instrument
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from services.config import MarketConfig, load_config
from services.fleet_status import collect
from services.marketdata.ib.pacing import HistoryPacing
from services.marketdata.ib.quiet import CalendarWatchdog, Closed, closed_at
from services.marketdata.ib.session import IbSession
from services.venues.config import VenueConfig
from services.venues.ib.calendar import TradingCalendar
from tests.fakes.clock import ScaledClock
from tests.fakes.tws import TwsFake
from tests.up_process import fake_time_env

NS = 1_000_000_000
STEP = 60 * NS
RATE = 60.0
VENUE = "ibkr"
# Tuesday 2024-03-05 10:00:20 New York (15:00:20 UTC): every contract trading.
START = int(dt.datetime(2024, 3, 5, 15, 0, 20, tzinfo=dt.UTC).timestamp()) * NS
# Tuesday 19:58:20 New York: the stock's session ends at 20:00.
NEAR_CLOSE = int(dt.datetime(2024, 3, 6, 0, 58, 20, tzinfo=dt.UTC).timestamp()) * NS
# Wednesday 2024-03-06 23:58:20 Chicago: ES's front month rolls to June at midnight (8 days
# before March's last trading day, the 15th).
BEFORE_ROLL = int(dt.datetime(2024, 3, 7, 5, 58, 20, tzinfo=dt.UTC).timestamp()) * NS
CONTRACTS = [
    {"type": "stock", "symbol": "AAPL", "primary_exchange": "NASDAQ"},
    {"type": "future", "root": "ES", "exchange": "CME", "expiry": "front", "roll_days": 8},
    {"type": "fx", "pair": "EUR.USD"},
]


def venue_of(port: int) -> VenueConfig:
    return msgspec.convert(
        {
            "name": VENUE,
            "kind": "ib",
            "mode": "paper",
            "ib": {"host": "127.0.0.1", "port": port, "client_id": 7, "contracts": CONTRACTS},
        },
        VenueConfig,
    )


def session_of(
    bus: Bus,
    tws: TwsFake,
    symbols: list[str],
    backfill_bars: int = 0,
    reload_every_s: float = 3600.0,
) -> IbSession:
    market = MarketConfig(
        venue=VENUE, symbols=tuple(symbols), stall_grace_s=30.0, poll_every_s=5.0, lockstep=False
    )
    return IbSession(
        bus,
        venue_of(tws.port),
        market,
        tws.clock,
        backfill_bars=backfill_bars,
        heartbeat_s=1.0,
        reload_every_s=reload_every_s,
    )


@pytest.fixture
async def tws() -> AsyncIterator[TwsFake]:
    async with TwsFake(ScaledClock(START, RATE)) as fake:
        yield fake


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def events(bus: Bus, subjects: str) -> list[object]:
    stored = await read_caught_up(bus, "MARKET", subjects, DeliverPolicy.ALL)
    return [s.event for s in stored]


async def bars_of(bus: Bus, symbol: str) -> list[Bar]:
    return [
        e for e in await events(bus, "md.bar.ibkr.>") if isinstance(e, Bar) and e.symbol == symbol
    ]


def continuous(bars: list[Bar]) -> None:
    """One interval apart, none twice."""
    opens = [b.open_time for b in bars]
    assert opens == sorted(set(opens)), "a bar stored twice or out of order"
    holes = [(a, b) for a, b in itertools.pairwise(opens) if b - a != STEP]
    assert holes == [], f"holes: {holes[:3]}"


async def running(session: IbSession) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.create_task(session.run())
    await asyncio.sleep(0)
    return task


async def stopped(session: IbSession, task: asyncio.Task[object]) -> None:
    session.stop()
    await asyncio.wait_for(task, 10)


async def test_instruments_and_bars_for_a_stock_a_future_and_fx(tws: TwsFake, bus: Bus) -> None:
    symbols = ["AAPL", "ES", "EUR/USD"]
    session = session_of(bus, tws, symbols, backfill_bars=5)
    task = await running(session)

    async def enough() -> bool:
        counts = [len(await bars_of(bus, s)) for s in symbols]
        return min(counts) >= 9

    await until(enough, "9 bars of each symbol")
    await stopped(session, task)
    instruments = [
        e for e in await events(bus, "md.instrument.ibkr.>") if isinstance(e, Instrument)
    ]
    by_symbol = {i.symbol: i for i in instruments}
    assert len(instruments) == 3
    assert (by_symbol["AAPL"].kind, by_symbol["AAPL"].tick_size) == ("stock", 0.01)
    assert (by_symbol["ES"].kind, by_symbol["ES"].contract_size) == ("future", 50.0)
    assert by_symbol["ES"].expiry == "20240315"
    assert (by_symbol["EUR/USD"].kind, by_symbol["EUR/USD"].tick_size) == ("fx", 0.00005)
    first_open = START - START % STEP - 5 * STEP
    for symbol in symbols:
        bars = await bars_of(bus, symbol)
        continuous(bars)
        assert bars[0].open_time == first_open  # the start's backfill, from IB's history
    # Stream bars equal IB's own history of the same minutes: a backfill agrees with them.
    aapl = await bars_of(bus, "AAPL")
    live = aapl[-1]
    listing = next(x for x in tws.catalogue if x.symbol == "AAPL")
    row = tws.market.bar(listing, live.open_time, 60, live.close_time, False)
    assert row is not None and (row.open, row.close, row.high, row.low) == (
        live.open,
        live.close,
        live.high,
        live.low,
    )
    states = [e for e in await events(bus, "md.status.ibkr.>") if isinstance(e, FeedStatus)]
    last = {s.symbol: s.state for s in states}
    assert last == {s: "streaming" for s in symbols}

    # A worker restart after missed minutes: the gap is backfilled, Instruments unchanged.
    await asyncio.sleep(3.0)
    again = session_of(bus, tws, symbols)
    task = await running(again)
    stored = len(aapl)
    await until(lambda: _more(bus, "AAPL", stored + 5), "bars after the restart")
    await stopped(again, task)
    continuous(await bars_of(bus, "AAPL"))
    instruments = [
        e for e in await events(bus, "md.instrument.ibkr.>") if isinstance(e, Instrument)
    ]
    assert len(instruments) == 3


async def _more(bus: Bus, symbol: str, n: int) -> bool:
    return len(await bars_of(bus, symbol)) >= n


async def test_restart_and_link_loss_backfilled_and_resubscribed(tws: TwsFake, bus: Bus) -> None:
    symbols = ["AAPL", "ES"]
    session = session_of(bus, tws, symbols)
    task = await running(session)
    await until(lambda: _more(bus, "ES", 2), "first bars")

    # The daily restart: the port refuses connections for 150 exchange seconds.
    await tws.faults.restart(down_s=150)
    await until(lambda: _ready(session), "reconnected")
    stored = len(await bars_of(bus, "ES"))
    await until(lambda: _more(bus, "ES", stored + 3), "bars after the restart")
    assert session.result.reconnects == 1
    assert len(tws.sessions[8].streams) == 2  # subscriptions restored on the new socket

    # IB's own link: lost, then restored with market data lost (1101): subscribed again.
    tws.faults.lose_link()
    await asyncio.sleep(2.5)
    tws.faults.restore_link(data_lost=True)
    stored = len(await bars_of(bus, "ES"))
    await until(lambda: _more(bus, "ES", stored + 4), "bars after the link came back")
    assert len(tws.sessions[8].streams) == 2
    await stopped(session, task)
    for symbol in symbols:
        continuous(await bars_of(bus, symbol))
    states = [e for e in await events(bus, "md.status.ibkr.>") if isinstance(e, FeedStatus)]
    # Stale while IB was away (risk takes no entries then), streaming again once backfilled.
    assert {s.symbol for s in states if s.state == "stale"} == set(symbols)
    assert {s.symbol: s.state for s in states} == {s: "streaming" for s in symbols}
    assert session.history.requests >= 2


async def _ready(session: IbSession) -> bool:
    return hasattr(session, "connection") and session.connection.ready


async def test_a_pacing_violation_backs_off_and_the_backfill_completes(
    tws: TwsFake, bus: Bus
) -> None:
    tws.faults.pace_next_historical()
    session = session_of(bus, tws, ["AAPL"], backfill_bars=10)
    task = await running(session)
    await until(lambda: _more(bus, "AAPL", 13), "bars after the backoff")
    await stopped(session, task)
    bars = await bars_of(bus, "AAPL")
    continuous(bars)
    assert bars[0].open_time == START - START % STEP - 10 * STEP
    assert session.history.pacing.violations == 1


def test_pacing_rules() -> None:
    pacing = HistoryPacing()
    t = 1_000 * NS
    request = ("1", "end", "60 S", "1 min", "TRADES")
    assert pacing.wait_ns("1", request, t) == 0
    pacing.sent("1", request, t)
    assert pacing.wait_ns("1", request, t + NS) == 14 * NS  # identical within 15 s
    for n in range(4):
        pacing.sent("1", ("1", str(n)), t)
    assert pacing.wait_ns("1", ("1", "x"), t) == 2 * NS  # five for one contract in 2 s
    assert pacing.wait_ns("2", ("2", "x"), t) == 0
    for n in range(55):
        pacing.sent(str(10 + n), (str(n),), t + 3 * NS)
    assert pacing.wait_ns("99", ("99",), t + 4 * NS) == 596 * NS  # 60 in 10 minutes
    backoff = pacing.violated(t)
    assert 15.0 <= backoff <= 18.75
    assert pacing.wait_ns("99", ("99",), t) >= 596 * NS


def test_calendar_watchdog_expects_no_bar_while_closed() -> None:
    hours = "20240305:0400-20240305:2000;20240306:0400-20240306:2000"
    calendar = TradingCalendar.parse(hours, "US/Eastern")
    watchdog = CalendarWatchdog(STEP, 10 * NS, {"AAPL": calendar})
    close = int(dt.datetime(2024, 3, 6, 1, 0, tzinfo=dt.UTC).timestamp()) * NS  # 20:00 NY
    watchdog.bar_stored("AAPL", close)
    opens = int(dt.datetime(2024, 3, 6, 9, 0, tzinfo=dt.UTC).timestamp()) * NS  # 04:00 NY
    assert watchdog.expected("AAPL", close) == opens + STEP
    assert watchdog.due(opens) == []
    assert watchdog.due(opens + STEP + 10 * NS) == [("AAPL", opens + STEP)]
    watchdog.bar_stored("BTC", close)  # no calendar: every minute expected
    assert watchdog.due(close + STEP + 10 * NS) == [("BTC", close + STEP)]


def test_the_calendar_says_when_a_market_is_closed() -> None:
    hours = "20240305:0400-20240305:2000;20240306:0400-20240306:2000"
    calendar = TradingCalendar.parse(hours, "US/Eastern")
    close = int(dt.datetime(2024, 3, 6, 1, 0, tzinfo=dt.UTC).timestamp()) * NS  # 20:00 NY
    opens = int(dt.datetime(2024, 3, 6, 9, 0, tzinfo=dt.UTC).timestamp()) * NS  # 04:00 NY
    assert closed_at(calendar, close - NS) is None  # in the session
    assert closed_at(calendar, close) == Closed(close, opens)
    assert closed_at(calendar, opens - NS) == Closed(close, opens)
    assert closed_at(calendar, opens) is None
    assert closed_at(calendar, opens + 17 * 3600 * NS) == Closed(opens + 16 * 3600 * NS, None)
    first = int(dt.datetime(2024, 3, 5, 9, 0, tzinfo=dt.UTC).timestamp()) * NS
    assert closed_at(calendar, first - NS) is None  # before the first listed session: unsure
    assert closed_at(None, close) is None


async def test_a_closed_market_is_not_stale(bus: Bus) -> None:
    async with TwsFake(ScaledClock(NEAR_CLOSE, RATE)) as tws:
        session = session_of(bus, tws, ["AAPL"])
        task = await running(session)
        await until(lambda: _more(bus, "AAPL", 1), "the last bars of the day")
        close = NEAR_CLOSE - NEAR_CLOSE % STEP + 2 * STEP
        # Past the close + the grace + two more minutes of silence.
        await tws.clock.sleep_until(close + 2 * STEP + 15 * NS)
        await stopped(session, task)
    bars = await bars_of(bus, "AAPL")
    assert bars[-1].close_time == close
    states = [e for e in await events(bus, "md.status.ibkr.>") if isinstance(e, FeedStatus)]
    assert [s.state for s in states if s.state == "stale"] == []


# Wednesday 2024-03-06 04:00 New York (09:00 UTC): the stock's next session opens.
NEXT_OPEN = int(dt.datetime(2024, 3, 6, 9, 0, tzinfo=dt.UTC).timestamp()) * NS


async def test_a_closed_market_is_closed_until_the_first_bar_of_its_next_session(
    bus: Bus,
) -> None:
    async with TwsFake(ScaledClock(NEAR_CLOSE, RATE)) as tws:
        session = session_of(bus, tws, ["AAPL"])
        task = await running(session)
        close = NEAR_CLOSE - NEAR_CLOSE % STEP + 2 * STEP  # 20:00 New York

        async def closed() -> bool:
            found = await events(bus, "md.status.ibkr.>")
            return any(isinstance(e, FeedStatus) and e.state == "closed" for e in found)

        await until(closed, "the closed state after the session's end")
        assert (await bars_of(bus, "AAPL"))[-1].close_time == close
        # keel status shows the market closed, with the next open, not as an outage.
        report = await collect(bus, now_ns=tws.clock.now_ns())
        screen = Console(record=True, width=160)
        screen.print(render(report))
        assert "1 closed" in screen.export_text()
        [feed] = report.venues
        assert (feed.venue, feed.states) == (VENUE, {"closed": 1})
        assert [(r.state, r.reason) for r in feed.worst] == [
            ("closed", "market closed until 2024-03-06T09:00:00Z")
        ]
        # The night passes in a moment: exchange time jumps to a minute before the open.
        tws.clock.start_ns += NEXT_OPEN - STEP - tws.clock.now_ns()
        await until(lambda: _more_after(bus, "AAPL", NEXT_OPEN + STEP), "the session's bars")
        await stopped(session, task)
    states = [e for e in await events(bus, "md.status.ibkr.>") if isinstance(e, FeedStatus)]
    # The start's backfill of the forming bar, then the session's end and the next open.
    assert [s.state for s in states] == ["backfilling", "streaming", "closed", "streaming"]
    shut, opened = states[2], states[3]
    assert (shut.ts, shut.last_close) == (close, close)
    assert shut.reason == "market closed until 2024-03-06T09:00:00Z"
    assert (opened.ts, opened.reason) == (NEXT_OPEN + STEP, "stream delivers")
    bars = await bars_of(bus, "AAPL")
    night = [b for b in bars if close < b.close_time <= NEXT_OPEN]
    assert night == []  # the calendar says the night holds no bar: none fetched, none owed
    continuous([b for b in bars if b.close_time <= close])
    continuous([b for b in bars if b.close_time > close])
    assert session.history.requests == 1  # the start's backfill only


async def _more_after(bus: Bus, symbol: str, close_ns: int) -> bool:
    return any(b.close_time >= close_ns for b in await bars_of(bus, symbol))


async def test_a_symbol_not_configured_is_one_line(tws: TwsFake, bus: Bus) -> None:
    session = session_of(bus, tws, ["MSFT"])
    with pytest.raises(KeelError, match="MSFT not among its"):
        await asyncio.wait_for(session.run(), 10)


def ib_toml(port: int, symbols: list[str]) -> str:
    listed = ", ".join(f'"{s}"' for s in symbols)
    return f"""
[market]
venue = "{VENUE}"
symbols = [{listed}]
interval = "1m"

[[venues]]
name = "{VENUE}"
kind = "ib"
mode = "paper"

[venues.ib]
port = {port}
client_id = 11

[[venues.ib.contracts]]
type = "stock"
symbol = "AAPL"
primary_exchange = "NASDAQ"

[[venues.ib.contracts]]
type = "fx"
pair = "EUR.USD"
"""


async def test_keel_run_marketdata_streams_an_ib_venue(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    async with TwsFake(ScaledClock(START, RATE)) as tws:
        config = tmp_path / "ib.toml"
        config.write_text(ib_toml(tws.port, ["AAPL", "EUR/USD"]))
        feed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.app", "run", "marketdata", "--config", str(config),
            cwd=tmp_path, env=fake_time_env(nats_server.url, tws.clock),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        try:
            await until(lambda: _more(bus, "EUR/USD", 2), "bars from keel run marketdata", 40)
            assert 12 in tws.sessions  # the feed's client id: the venue's + 1
            feed.send_signal(signal.SIGINT)
            output, _ = await asyncio.wait_for(feed.communicate(), 30)
        finally:
            if feed.returncode is None:
                feed.kill()
                await feed.wait()
    text = output.decode(errors="replace")
    assert feed.returncode == 0, text
    assert "Traceback" not in text
    assert "marketdata: ibkr (ib): stored" in text
    continuous(await bars_of(bus, "AAPL"))


async def test_venue_check_of_an_ib_venue(tmp_path: Path) -> None:
    async with TwsFake(ScaledClock(time.time_ns(), 1.0)) as tws:
        config = tmp_path / "ib.toml"
        config.write_text(ib_toml(tws.port, ["AAPL", "EUR/USD"]))
        rows = await check_venue(load_config(config), VENUE, 5.0, 1000.0)
    outcomes = {r.check: r.outcome for r in rows}
    assert outcomes == {
        "entry": "ok",
        "connect": "ok",
        "accounts": "ok",
        "clock": "ok",
        "contracts": "ok",
        "interval": "ok",
        "history": "ok",
        "credentials": "n/a",
    }, rows
    detail = {r.check: r.detail for r in rows}
    assert "server version 178" in detail["connect"]
    assert "AAPL (AAPL 265598)" in detail["contracts"]
    # Nobody listening: one line, the checks after it not run.
    config.write_text(ib_toml(tws.port, ["AAPL"]))
    rows = await check_venue(load_config(config), VENUE, 2.0, 1000.0)
    outcomes = {r.check: r.outcome for r in rows}
    assert outcomes["connect"] == "FAIL" and outcomes["history"] == "-"


async def test_a_contract_ib_does_not_know_is_one_line(tws: TwsFake, bus: Bus) -> None:
    venue = msgspec.convert(
        {
            "name": VENUE,
            "kind": "ib",
            "ib": {
                "port": tws.port,
                "contracts": [{"type": "stock", "symbol": "NOPE", "primary_exchange": "NYSE"}],
            },
        },
        VenueConfig,
    )
    market = MarketConfig(venue=VENUE, symbols=("NOPE",), lockstep=False)
    session = IbSession(bus, venue, market, tws.clock)
    with pytest.raises(KeelError, match="IB does not know NOPE"):
        await asyncio.wait_for(session.run(), 10)


async def test_the_front_month_rolls_and_is_streamed(bus: Bus) -> None:
    async with TwsFake(ScaledClock(BEFORE_ROLL, RATE)) as tws:
        session = session_of(bus, tws, ["ES"], reload_every_s=60.0)
        task = await running(session)
        midnight = BEFORE_ROLL - BEFORE_ROLL % STEP + 2 * STEP
        await tws.clock.sleep_until(midnight + 2 * STEP)
        stored = len(await bars_of(bus, "ES"))
        await until(lambda: _more(bus, "ES", stored + 2), "bars of the new front month")
        await stopped(session, task)
    instruments = [
        e for e in await events(bus, "md.instrument.ibkr.>") if isinstance(e, Instrument)
    ]
    assert [i.expiry for i in instruments] == ["20240315", "20240621"]
    assert session.stream.subscriptions["ES"].contract.lastTradeDateOrContractMonth == "20240621"
    continuous(await bars_of(bus, "ES"))
