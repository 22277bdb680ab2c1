"""``keel venue check`` as a subprocess against the exchange fakes (each check's row, exit 0;
an unknown symbol, a 503 and a missing credential fail their row with exit 1 and no
traceback; a name not configured and a Kraken testnet are one line, exit 2), and the live
venue sections of ``keel status`` read from FeedStatus events and bars on a real server."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from contracts.envelope import Envelope, bar_envelope, content_id, market_envelope
from contracts.events import Bar, FeedStatus
from contracts.venue_events import VenueStatus
from eventstore.bus import Bus
from eventstore.server import EmbeddedServer
from services.config import MarketConfig
from services.fleet_status import WORST_SHOWN, collect
from services.marketdata.live.session import LiveSession
from services.venues.config import VenueConfig
from tests.conftest import keel
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange, default_symbols, start_fake
from tests.test_cli import assert_one_error, table_row

S = 1_000_000_000
MINUTE = 60 * S
NO_SERVER = "nats://127.0.0.1:1"
"""``keel venue check`` talks to the exchange only; no NATS server is needed."""
SKINS = {
    "binance": "tests/fakes/binance.py",
    "binanceusdm": "tests/fakes/binance.py",
    "bybit": "tests/fakes/bybit.py",
    "kraken": "tests/fakes/kraken.py",
    "krakenfutures": "tests/fakes/krakenfutures.py",
}
ROOT = Path(__file__).resolve().parents[1]
EXCHANGES = [e for e, path in SKINS.items() if (ROOT / path).exists()]
CHECKS = (
    "entry",
    "REST reachable",
    "markets loaded",
    "symbols",
    "interval",
    "websocket",
    "rate limit",
)


def write_config(path: Path, fake: FakeExchange, symbols: list[str], **entry: Any) -> Path:
    """A JSON fleet config (``load_config`` reads JSON as it reads TOML) whose market is the
    fake's venue ``x``."""
    config = {
        "market": {"venue": "x", "symbols": symbols, "interval": "1m"},
        "venues": [{**fake.venue_entry("x"), **entry}],
    }
    path.write_bytes(msgspec.json.encode(config))
    return path


async def venue_check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, in a thread so the fake in this event loop keeps answering."""
    return await asyncio.to_thread(
        keel, NO_SERVER, "venue", "check", "x", "--config", str(config), "--timeout", "10", *args
    )


async def fake_of(exchange_id: str, n: int = 3) -> FakeExchange:
    """The fake on wall time (rate 1: the skew check compares with the real clock), with a
    forming-candle frame every second so the websocket check does not wait long."""
    clock = ScaledClock(time.time_ns(), 1.0)
    return await start_fake(exchange_id, default_symbols(exchange_id, n), clock, updates_per_bar=60)


# --- keel venue check --------------------------------------------------------------------


def test_a_skin_exists() -> None:
    """The parametrized tests below run against every fake that exists; Binance's at least."""
    assert "binance" in EXCHANGES
    assert importlib.util.find_spec("tests.fakes.binance") is not None


@pytest.mark.parametrize("exchange_id", EXCHANGES)
async def test_every_check_passes_against_the_fake(exchange_id: str, tmp_path: Path) -> None:
    fake = await fake_of(exchange_id)
    try:
        symbols = list(fake.specs)[:2]
        result = await venue_check(write_config(tmp_path / "live.json", fake, symbols))
    finally:
        await fake.stop()
    both = result.stdout + result.stderr
    assert result.returncode == 0, both
    assert "Traceback" not in both
    for check in CHECKS:
        assert table_row(result.stdout, check)[1] == "ok", both
    assert "2 configured, every one listed and active" in result.stdout
    assert f"{len(fake.specs)} markets" in table_row(result.stdout, "markets loaded")[2]
    skew = table_row(result.stdout, "clock skew")
    assert skew[1] in ("ok", "n/a"), both
    assert "first frame in" in table_row(result.stdout, "websocket")[2]
    assert table_row(result.stdout, "credentials")[1] == "n/a"
    assert "all 9 checks passed" in result.stdout
    assert fake.requests  # the answers came from the fake, by REST


async def test_an_unknown_symbol_fails_its_row(tmp_path: Path) -> None:
    fake = await fake_of("binance")
    try:
        config = write_config(tmp_path / "live.json", fake, ["BTC/USDT", "NOPE/USDT"])
        result = await venue_check(config)
    finally:
        await fake.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    row = table_row(result.stdout, "symbols")
    assert row[1] == "FAIL"
    assert "NOPE/USDT: the venue does not list it" in result.stdout
    assert table_row(result.stdout, "markets loaded")[1] == "ok"
    assert "1 of 9 checks failed" in result.stdout


async def test_an_exchange_answering_503_fails_the_rest_row(tmp_path: Path) -> None:
    fake = await fake_of("binance")
    try:
        fake.faults.http_errors.append(503)
        result = await venue_check(write_config(tmp_path / "live.json", fake, ["BTC/USDT"]))
    finally:
        await fake.stop()
    both = result.stdout + result.stderr
    assert result.returncode == 1, both
    assert "Traceback" not in both
    rest = table_row(result.stdout, "REST reachable")
    assert rest[1] == "FAIL"
    assert "ExchangeNotAvailable" in rest[2]
    assert table_row(result.stdout, "clock skew")[1] == "-"
    # the 503 was one answer: the checks after it still ran
    assert table_row(result.stdout, "markets loaded")[1] == "ok"
    assert table_row(result.stdout, "websocket")[1] == "ok"


async def test_a_universe_and_an_interval_not_offered(tmp_path: Path) -> None:
    fake = await fake_of("binanceusdm", 5)
    try:
        config = tmp_path / "live.json"
        market = {"venue": "x", "universe": "usdt_perpetuals", "interval": "2m"}
        config.write_bytes(
            msgspec.json.encode({"market": market, "venues": [fake.venue_entry("x")]})
        )
        result = await venue_check(config)
    finally:
        await fake.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    assert table_row(result.stdout, "symbols")[1:] == [
        "ok",
        "universe usdt_perpetuals: 5 active markets",
    ]
    interval = table_row(result.stdout, "interval")
    assert interval[1] == "FAIL"
    assert interval[2].startswith("2m not offered (offered: ")
    assert "1 of 9 checks failed" in result.stdout


async def test_a_silent_websocket_fails_within_the_timeout(tmp_path: Path) -> None:
    """The socket opens and answers pings but sends no data: the check gives up after
    ``--timeout`` and says so."""
    fake = await fake_of("binance")
    try:
        fake.faults.silent = True
        config = write_config(tmp_path / "live.json", fake, ["BTC/USDT"])
        result = await asyncio.to_thread(
            keel, NO_SERVER, "venue", "check", "x", "--config", str(config), "--timeout", "2"
        )
    finally:
        await fake.stop()
    both = result.stdout + result.stderr
    assert result.returncode == 1, both
    assert "Traceback" not in both
    assert table_row(result.stdout, "websocket")[1:] == [
        "FAIL",
        "watch_ohlcv BTC/USDT: no answer within 2 s",
    ]
    assert table_row(result.stdout, "markets loaded")[1] == "ok"


async def test_a_missing_credential_is_named_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_VC_KEY", "present-key-value-93f1")
    monkeypatch.delenv("KEEL_VC_SECRET", raising=False)
    fake = await fake_of("binance")
    try:
        credentials = {"api_key_env": "KEEL_VC_KEY", "secret_env": "KEEL_VC_SECRET"}
        config = write_config(tmp_path / "live.json", fake, ["BTC/USDT"], credentials=credentials)
        result = await venue_check(config)
    finally:
        await fake.stop()
    both = result.stdout + result.stderr
    assert result.returncode == 1, both
    assert table_row(result.stdout, "credential api_key")[1:] == [
        "ok",
        "present (from $KEEL_VC_KEY)",
    ]
    assert table_row(result.stdout, "credential secret")[1:] == [
        "FAIL",
        "missing: KEEL_VC_SECRET not set",
    ]
    assert "present-key-value-93f1" not in both


async def test_a_skew_above_the_limit_fails(tmp_path: Path) -> None:
    """The fake's exchange clock runs a minute ahead of the wall."""
    clock = ScaledClock(time.time_ns() + MINUTE, 1.0)
    fake = await start_fake("binance", default_symbols("binance", 2), clock, updates_per_bar=60)
    try:
        result = await venue_check(write_config(tmp_path / "live.json", fake, ["BTC/USDT"]))
    finally:
        await fake.stop()
    assert result.returncode == 1, result.stdout + result.stderr
    skew = table_row(result.stdout, "clock skew")
    assert skew[1] == "FAIL"
    assert skew[2].startswith("+60")


def test_a_venue_not_configured_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "live.toml"
    config.write_text(
        '[[venues]]\nname = "binance"\nexchange = "binance"\n\n'
        '[[venues]]\nname = "bybit"\nexchange = "bybit"\n'
    )
    result = keel(NO_SERVER, "venue", "check", "kraken", "--config", str(config))
    assert result.returncode == 2
    assert_one_error(result, "no venue 'kraken'", "configured: binance, bybit")


def test_kraken_spot_with_a_testnet_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "live.toml"
    config.write_text('[[venues]]\nname = "kraken"\nexchange = "kraken"\nsandbox = true\n')
    result = keel(NO_SERVER, "venue", "check", "kraken", "--config", str(config))
    assert result.returncode == 2
    assert_one_error(result, "venues.kraken.sandbox", "kraken has no testnet")


# --- keel status: the live venues --------------------------------------------------------


def bar_at(venue: str, symbol: str, close_ns: int) -> Bar:
    return Bar(
        ts=close_ns,
        venue=venue,
        symbol=symbol,
        interval="1m",
        open_time=close_ns - MINUTE,
        close_time=close_ns,
        open=100.0,
        high=101.0,
        low=99.0,
        close=100.5,
        volume=2.0,
    )


async def publish_feed(bus: Bus, now: int) -> None:
    """Venue ``binance``: 200 symbols, three of them in trouble; ``sim`` has bars only."""
    last = now - now % MINUTE
    items: list[Any] = []
    for i in range(200):
        symbol = f"C{i:03d}/USDT:USDT"
        items.append(
            FeedStatus(ts=last - 5 * MINUTE, venue="binance", symbol=symbol, state="backfilling")
        )
        items.append(FeedStatus(ts=last, venue="binance", symbol=symbol, state="streaming"))
        items.append(bar_at("binance", symbol, last))
    stale_close = last - 3 * MINUTE
    items += [
        bar_at("binance", "BTC/USDT:USDT", stale_close),
        FeedStatus(
            ts=stale_close + MINUTE,
            venue="binance",
            symbol="BTC/USDT:USDT",
            state="stale",
            reason="no closed bar by close + 10s",
            last_close=stale_close,
        ),
        bar_at("binance", "ETH/USDT:USDT", last - MINUTE),
        FeedStatus(ts=last - MINUTE, venue="binance", symbol="ETH/USDT:USDT", state="polling"),
        FeedStatus(ts=last, venue="binance", symbol="LUNA/USDT:USDT", state="delisted"),
        bar_at("sim", "BTC/USDT", last),
    ]
    pairs = [(e, bar_envelope(e) if isinstance(e, Bar) else market_envelope(e)) for e in items]
    tally = await bus.publish_many(pairs)
    assert tally.stored == len(pairs), tally


async def test_status_shows_each_live_venue(bus: Bus, nats_server: EmbeddedServer) -> None:
    now = time.time_ns()
    await publish_feed(bus, now)
    last = now - now % MINUTE
    report = await collect(bus, now_ns=now)
    assert [v.venue for v in report.venues] == ["binance"]
    venue = report.venues[0]
    assert venue.mode == "paper"
    assert venue.symbols == 203
    assert venue.states == {"stale": 1, "polling": 1, "streaming": 200, "delisted": 1}
    assert venue.lag_s == pytest.approx((now - last) / S, abs=1e-3)
    assert len(venue.worst) == WORST_SHOWN
    stale, polling = venue.worst[0], venue.worst[1]
    assert (stale.symbol, stale.state) == ("BTC/USDT:USDT", "stale")
    assert stale.lag_s == pytest.approx((now - last + 3 * MINUTE) / S, abs=1e-3)
    assert stale.reason == "no closed bar by close + 10s"
    assert (polling.symbol, polling.state) == ("ETH/USDT:USDT", "polling")
    assert not report.empty

    shown = await asyncio.to_thread(keel, nats_server.url, "status")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "Venue binance" in out
    assert "mode PAPER  203 symbols: 1 stale, 1 polling, 200 streaming, 1 delisted" in out
    assert "Venue sim" not in out
    assert re.search(r"BTC/USDT:USDT +stale +\S+ +3m \d\ds +no closed bar by close \+ 10s", out)
    assert re.search(r"ETH/USDT:USDT +polling", out)
    assert "worst 5 of 203" in out
    assert out.count("C0") <= WORST_SHOWN

    as_json = await asyncio.to_thread(keel, nats_server.url, "status", "--json")
    venues = json.loads(as_json.stdout.splitlines()[-1])["venues"]
    assert venues[0]["states"]["stale"] == 1


async def test_status_of_a_live_session(bus: Bus) -> None:
    """The live marketdata session on the Binance fake (exchange time 60x the wall): its
    feed statuses and bars make the venue's panel."""
    clock = ScaledClock(time.time_ns(), 60.0)
    symbols = default_symbols("binance", 2)
    fake = await start_fake("binance", symbols, clock)
    venue = VenueConfig(**fake.venue_entry("x"))
    market = MarketConfig(venue="x", symbols=tuple(s.symbol for s in symbols), lockstep=False)
    session = LiveSession(bus, venue, market, clock, backfill_bars=3)
    try:
        running = asyncio.create_task(session.run())
        await clock.sleep(180)
        session.stop()
        await asyncio.wait_for(running, 30)
    finally:
        await fake.stop()
    report = await collect(bus, now_ns=clock.now_ns())
    assert [v.venue for v in report.venues] == ["x"]
    feed = report.venues[0]
    assert (feed.mode, feed.symbols) == ("paper", 2)
    assert feed.states == {"streaming": 2}, feed
    assert feed.lag_s is not None and feed.lag_s < 120, feed
    assert {row.symbol for row in feed.worst} == {s.symbol for s in symbols}


async def test_status_shows_a_gateway_venues_mode_and_its_halt(
    bus: Bus, nats_server: EmbeddedServer
) -> None:
    now = time.time_ns()
    await publish_feed(bus, now)
    halted = VenueStatus(
        ts=now,
        venue="binance",
        mode="sandbox",
        state="halted",
        reason="position BTC/USDT:USDT: venue 0.5, Keel 0.3",
        discrepancies=1,
    )
    ready = VenueStatus(ts=now, venue="kraken", mode="live", state="running")
    for event in (halted, ready):
        assert await bus.publish(event, Envelope.root(content_id("status", event.venue), now))
    report = await collect(bus, now_ns=now)
    by_name = {v.venue: v for v in report.venues}
    assert (by_name["binance"].mode, by_name["binance"].gateway) == ("sandbox", "halted")
    assert (by_name["kraken"].mode, by_name["kraken"].symbols) == ("live", 0)
    shown = await asyncio.to_thread(keel, nats_server.url, "status")
    assert shown.returncode == 0, shown.stderr
    out = " ".join(shown.stdout.split())
    assert "mode SANDBOX 203 symbols" in out
    assert "gateway halted (position BTC/USDT:USDT: venue 0.5, Keel 0.3)" in out
    assert "mode LIVE 0 symbols" in out
