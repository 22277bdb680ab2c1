"""The live marketdata worker's pure decisions: markets, closed candles, bars from trades,
continuity, the stall watchdog, feed states and thinning (services/marketdata/live/)."""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import Bar, Instrument
from services.marketdata.live.candles import (
    Candle,
    ClosedCandles,
    MalformedFrame,
    candle_from_ccxt,
    to_bar,
)
from services.marketdata.live.continuity import Continuity
from services.marketdata.live.instruments import (
    DECIMAL_PLACES,
    SIGNIFICANT_DIGITS,
    TICK_SIZE,
    InstrumentBook,
    MalformedMarket,
    VenueMarket,
    instrument_of,
    select_symbols,
    venue_markets,
)
from services.marketdata.live.thinning import QuoteThrottle, TradeFilter
from services.marketdata.live.trade_bars import TradeBars
from services.marketdata.live.watchdog import FeedStates, Watchdog

MIN = 60_000_000_000
MS = 1_000_000
T0 = 1_700_000_040_000 * MS  # a minute boundary

# ccxt 4.5 unified markets as its parse_market builds them (TICK_SIZE precision mode), with
# the ``info`` of the exchange left out.
BINANCE_SPOT = {
    "id": "BTCUSDT",
    "symbol": "BTC/USDT",
    "base": "BTC",
    "quote": "USDT",
    "settle": None,
    "type": "spot",
    "spot": True,
    "margin": True,
    "swap": False,
    "future": False,
    "option": False,
    "active": True,
    "contract": False,
    "linear": None,
    "inverse": None,
    "contractSize": None,
    "expiry": None,
    "precision": {"amount": 1e-05, "price": 0.01, "base": 1e-08, "quote": 1e-08},
    "limits": {
        "leverage": {"min": None, "max": None},
        "amount": {"min": 1e-05, "max": 9000.0},
        "price": {"min": 0.01, "max": 1000000.0},
        "cost": {"min": 5.0, "max": 9000000.0},
    },
}
BINANCEUSDM_PERP = {
    "id": "BTCUSDT",
    "symbol": "BTC/USDT:USDT",
    "base": "BTC",
    "quote": "USDT",
    "settle": "USDT",
    "type": "swap",
    "spot": False,
    "margin": False,
    "swap": True,
    "future": False,
    "option": False,
    "active": True,
    "contract": True,
    "linear": True,
    "inverse": False,
    "contractSize": 1.0,
    "expiry": None,
    "precision": {"amount": 0.001, "price": 0.1, "base": None, "quote": None},
    "limits": {
        "leverage": {"min": None, "max": None},
        "amount": {"min": 0.001, "max": 1000.0},
        "price": {"min": 556.8, "max": 4529764.0},
        "cost": {"min": 100.0, "max": None},
    },
}
BYBIT_LINEAR = {
    "id": "ETHUSDT",
    "symbol": "ETH/USDT:USDT",
    "base": "ETH",
    "quote": "USDT",
    "settle": "USDT",
    "type": "swap",
    "spot": False,
    "swap": True,
    "future": False,
    "option": False,
    "active": True,
    "contract": True,
    "linear": True,
    "inverse": False,
    "contractSize": 1.0,
    "precision": {"amount": 0.01, "price": 0.01},
    "limits": {
        "leverage": {"min": 1.0, "max": 100.0},
        "amount": {"min": 0.01, "max": 7240.0},
        "price": {"min": 0.01, "max": 199999.98},
        "cost": {"min": 5.0, "max": None},
    },
}
KRAKENFUTURES_PF = {
    "id": "PF_XBTUSD",
    "symbol": "BTC/USD:USD",
    "base": "BTC",
    "quote": "USD",
    "settle": "USD",
    "type": "swap",
    "spot": False,
    "swap": True,
    "future": False,
    "option": False,
    "index": False,
    "active": True,
    "contract": True,
    "linear": True,
    "inverse": False,
    "contractSize": 1.0,
    "precision": {"amount": 0.0001, "price": 1.0},
    "limits": {
        "leverage": {"min": None, "max": None},
        "amount": {"min": None, "max": None},
        "price": {"min": None, "max": None},
        "cost": {"min": None, "max": None},
    },
}
# The older DECIMAL_PLACES shape (ccxt's static market fixtures): precision in decimals.
DECIMAL_SPOT = {
    "id": "XRPUSDT",
    "symbol": "XRP/USDT",
    "base": "XRP",
    "quote": "USDT",
    "settle": None,
    "type": "spot",
    "spot": True,
    "swap": False,
    "active": True,
    "contract": False,
    "linear": None,
    "inverse": None,
    "contractSize": None,
    "precision": {"amount": 0, "price": 4, "base": 8, "quote": 8},
    "limits": {"amount": {"min": 1, "max": 9222449}, "cost": {"min": 5, "max": 9000000}},
}


def market(template: dict[str, Any], /, **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(template)
    out.update(changes)
    return out


def perp(symbol: str, **changes: Any) -> dict[str, Any]:
    base, rest = symbol.split("/")
    quote, settle = rest.split("-")[0].split(":")
    return (
        market(
            BINANCEUSDM_PERP, id=base + quote, symbol=symbol, base=base, quote=quote, settle=settle
        )
        | changes
    )


# -- instruments ---------------------------------------------------------------------------


def test_binance_spot_market_becomes_a_spot_instrument() -> None:
    venue_market = VenueMarket.from_ccxt(BINANCE_SPOT, TICK_SIZE)
    instrument = instrument_of("binance", venue_market, T0)
    assert instrument == Instrument(
        ts=T0,
        venue="binance",
        symbol="BTC/USDT",
        base="BTC",
        quote="USDT",
        kind="spot",
        tick_size=0.01,
        lot_size=1e-05,
        min_notional=5.0,
        contract_size=1.0,
        max_leverage=0.0,
        settle="",
        active=True,
    )


def test_perpetuals_of_binanceusdm_bybit_and_krakenfutures() -> None:
    usdm = instrument_of("binanceusdm", VenueMarket.from_ccxt(BINANCEUSDM_PERP, TICK_SIZE), T0)
    assert (usdm.kind, usdm.settle, usdm.tick_size, usdm.lot_size) == (
        "perpetual",
        "USDT",
        0.1,
        0.001,
    )
    assert (usdm.min_notional, usdm.contract_size, usdm.max_leverage) == (100.0, 1.0, 0.0)
    bybit = instrument_of("bybit", VenueMarket.from_ccxt(BYBIT_LINEAR, TICK_SIZE), T0)
    assert (bybit.max_leverage, bybit.min_notional, bybit.lot_size) == (100.0, 5.0, 0.01)
    kraken = instrument_of("kf", VenueMarket.from_ccxt(KRAKENFUTURES_PF, TICK_SIZE), T0)
    assert (kraken.kind, kraken.settle, kraken.tick_size, kraken.min_notional) == (
        "perpetual",
        "USD",
        1.0,
        0.0,
    )


def test_decimal_places_precision_gives_exact_steps() -> None:
    xrp = VenueMarket.from_ccxt(DECIMAL_SPOT, DECIMAL_PLACES)
    assert (xrp.tick_size, xrp.lot_size) == (0.0001, 1.0)
    btc = VenueMarket.from_ccxt(market(DECIMAL_SPOT, precision={"amount": 5, "price": 2}), 2)
    assert (btc.tick_size, btc.lot_size) == (0.01, 1e-05)
    tens = VenueMarket.from_ccxt(market(DECIMAL_SPOT, precision={"amount": -1, "price": 7}), 2)
    assert (tens.tick_size, tens.lot_size) == (1e-07, 10.0)
    assert VenueMarket.from_ccxt(DECIMAL_SPOT, SIGNIFICANT_DIGITS).tick_size == 0.0


def test_unsupported_markets_are_refused_with_a_reason() -> None:
    inverse = perp("BTC/USD:BTC", linear=False, inverse=True, contractSize=100.0)
    dated = perp("BTC/USDT:USDT-251226", type="future", swap=False, future=True)
    option = perp("ETH/USDT:USDT-251226-800-C", type="option", swap=False, option=True)
    index = market(KRAKENFUTURES_PF, symbol="in_xbtusd", type="index", active=None)
    reasons = {
        m["symbol"]: VenueMarket.from_ccxt(m, TICK_SIZE).refusal
        for m in (inverse, dated, option, index)
    }
    assert reasons == {
        "BTC/USD:BTC": "inverse perpetuals are not supported yet",
        "BTC/USDT:USDT-251226": "dated futures are not supported yet",
        "ETH/USDT:USDT-251226-800-C": "options are not supported",
        "in_xbtusd": "market type 'index' is not supported",
    }
    with pytest.raises(ValueError, match="inverse perpetuals"):
        instrument_of("binance", VenueMarket.from_ccxt(inverse, TICK_SIZE), T0)


def test_active_only_false_when_ccxt_says_false() -> None:
    assert VenueMarket.from_ccxt(market(BINANCE_SPOT, active=None), TICK_SIZE).active
    delisted = VenueMarket.from_ccxt(market(BINANCE_SPOT, active=False), TICK_SIZE)
    assert instrument_of("binance", delisted, T0).active is False


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"symbol": None}, "symbol is missing"),
        ({"base": ""}, "base is missing"),
        ({"quote": 3}, "quote is 3, not text"),
        ({"precision": {"price": "abc", "amount": 0.1}}, "precision.price"),
        ({"precision": {"price": math.nan, "amount": 0.1}}, "precision.price"),
        ({"precision": [1, 2]}, "precision is [1, 2], not a table"),
        ({"limits": {"cost": {"min": -5.0}}}, "limits.cost.min"),
        ({"limits": {"leverage": 20}}, "limits.leverage is 20"),
        ({"contractSize": "many"}, "contractSize"),
    ],
)
def test_malformed_market_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedMarket, match="^market .*" + field.replace("[", r"\[")) as info:
        VenueMarket.from_ccxt(market(BINANCE_SPOT, **changes), TICK_SIZE)
    assert "\n" not in str(info.value)


def test_decimal_places_refuses_fractional_decimals() -> None:
    with pytest.raises(MalformedMarket, match=r"precision\.price is 2\.5, not a count of decimals"):
        VenueMarket.from_ccxt(market(DECIMAL_SPOT, precision={"price": 2.5}), DECIMAL_PLACES)


def test_venue_markets_keeps_the_good_ones_and_lists_the_bad() -> None:
    raw = {
        "BTC/USDT": BINANCE_SPOT,
        "BAD/USDT": market(BINANCE_SPOT, symbol="BAD/USDT", base=None),
        "BTC/USDT:USDT": BINANCEUSDM_PERP,
    }
    converted, problems = venue_markets(raw, TICK_SIZE)
    assert list(converted) == ["BTC/USDT", "BTC/USDT:USDT"]
    assert problems == ("market BAD/USDT: base is missing",)


def listing() -> dict[str, VenueMarket]:
    raw = [
        BINANCE_SPOT,
        BINANCEUSDM_PERP,
        perp("ETH/USDT:USDT"),
        perp("SOL/USDT:USDT"),
        perp("OLD/USDT:USDT", active=False),
        perp("BTC/USDC:USDC"),
        perp("BTC/USD:BTC", linear=False, inverse=True),
        perp("BTC/USDT:USDT-251226", type="future", swap=False, future=True),
        market(BINANCE_SPOT, symbol="GONE/USDT", base="GONE", active=False),
    ]
    converted, problems = venue_markets({m["symbol"]: m for m in raw}, TICK_SIZE)
    assert problems == ()
    return converted


def test_select_symbols_resolves_exact_symbols_in_order() -> None:
    selection = select_symbols(
        listing(),
        ["SOL/USDT:USDT", "BTC/USDT", "BTC/USDT", "BTCUSDT", "BTC/USD:BTC", "GONE/USDT"],
    )
    assert selection.symbols == ("SOL/USDT:USDT", "BTC/USDT")
    assert selection.unknown == ("BTCUSDT",)
    assert selection.unsupported == (("BTC/USD:BTC", "inverse perpetuals are not supported yet"),)
    assert [m.symbol for m in selection.inactive] == ["GONE/USDT"]
    assert not selection.ok
    assert selection.problems() == (
        "BTCUSDT: the venue does not list it",
        "BTC/USD:BTC: inverse perpetuals are not supported yet",
        "GONE/USDT: the venue no longer trades it",
    )
    assert select_symbols(listing(), ["BTC/USDT"]).ok


def test_usdt_perpetuals_universe_is_every_active_linear_usdt_swap_sorted() -> None:
    selection = select_symbols(listing(), ["BTC/USDT"], "usdt_perpetuals")
    assert selection.symbols == ("BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT")
    assert selection.ok
    with pytest.raises(ValueError, match="universe 'all'"):
        select_symbols(listing(), [], "all")  # type: ignore[arg-type]


def instruments_now(markets: dict[str, VenueMarket], ts: int) -> list[Instrument]:
    return [instrument_of("binance", m, ts) for m in markets.values() if m.kind is not None]


def test_instrument_book_publishes_only_changes_and_delistings_once() -> None:
    markets = {s: m for s, m in listing().items() if s in ("BTC/USDT", "ETH/USDT:USDT")}
    stored = instruments_now(markets, T0)
    book = InstrumentBook(stored)
    assert book.update(instruments_now(markets, T0 + MIN), T0 + MIN) == []

    finer = msgspec.structs.replace(markets["BTC/USDT"], tick_size=0.001)
    markets["BTC/USDT"] = finer
    markets["SOL/USDT:USDT"] = listing()["SOL/USDT:USDT"]
    changed = book.update(instruments_now(markets, T0 + 2 * MIN), T0 + 2 * MIN)
    assert [(i.symbol, i.tick_size, i.ts) for i in changed] == [
        ("BTC/USDT", 0.001, T0 + 2 * MIN),
        ("SOL/USDT:USDT", 0.1, T0 + 2 * MIN),
    ]

    del markets["ETH/USDT:USDT"]
    gone = book.update(instruments_now(markets, T0 + 3 * MIN), T0 + 3 * MIN)
    eth = stored[1]
    assert gone == [msgspec.structs.replace(eth, ts=T0 + 3 * MIN, active=False)]
    assert book.update(instruments_now(markets, T0 + 4 * MIN), T0 + 4 * MIN) == []

    markets["SOL/USDT:USDT"] = msgspec.structs.replace(markets["SOL/USDT:USDT"], active=False)
    inactive = book.update(instruments_now(markets, T0 + 5 * MIN), T0 + 5 * MIN)
    assert [(i.symbol, i.active) for i in inactive] == [("SOL/USDT:USDT", False)]
    assert book.update(instruments_now(markets, T0 + 6 * MIN), T0 + 6 * MIN) == []

    markets["ETH/USDT:USDT"] = listing()["ETH/USDT:USDT"]
    back = book.update(instruments_now(markets, T0 + 7 * MIN), T0 + 7 * MIN)
    assert [(i.symbol, i.active) for i in back] == [("ETH/USDT:USDT", True)]
    assert book.get("ETH/USDT:USDT") == back[0]
    assert set(book.symbols) == {"BTC/USDT", "ETH/USDT:USDT", "SOL/USDT:USDT"}


# -- closed candles ------------------------------------------------------------------------


def row(minute: int, close: float, volume: float = 1.0) -> list[Any]:
    """A ccxt OHLCV row of the candle opening ``minute`` minutes after T0."""
    return [T0 // MS + minute * 60_000, 100.0, max(close, 101.0), 99.0, close, volume]


def test_candle_from_ccxt_converts_milliseconds_and_numbers() -> None:
    candle = candle_from_ccxt([T0 // MS, 100, 101, 99.5, 100.5, 12])
    assert candle == Candle(T0, 100.0, 101.0, 99.5, 100.5, 12.0)
    assert all(isinstance(getattr(candle, f), float) for f in ("open", "volume"))
    assert candle_from_ccxt([float(T0 // MS), 1, 1, 1, 1, 0]).open_ns == T0


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ([1, 2, 3], "kline row has 3 fields"),
        ({"t": 1}, "kline row is a dict, not a list"),
        ("garbage", "kline row is a str, not a list"),
        ([1.5, 1, 1, 1, 1, 1], "open time 1.5 is not a whole number"),
        (["1700000040000", 1, 1, 1, 1, 1], "open time '1700000040000' is not a whole number"),
        ([None, 1, 1, 1, 1, 1], "open time None"),
        ([-60_000, 1, 1, 1, 1, 1], "open time -60000 is out of range"),
        ([0, "abc", 1, 1, 1, 1], "open 'abc' is not a number"),
        ([0, 1, None, 1, 1, 1], "high None is not a number"),
        ([0, 1, 1, 1, math.nan, 1], "close nan is not finite"),
        ([0, 1, 1, 1, 1, math.inf], "volume inf is not finite"),
        ([0, 1, 1, 1, 1, -2], "volume -2.0 is negative"),
        ([0, 1, 1, 2, 1, 1], "high 1.0 is below low 2.0"),
        ([0, 1, 1, 0, 1, 1], "low 0.0 is not > 0"),
        ([0, True, 1, 1, 1, 1], "open True is not a number"),
    ],
)
def test_malformed_rows_name_the_field(bad: Any, reason: str) -> None:
    with pytest.raises(MalformedFrame) as info:
        candle_from_ccxt(bad)
    assert str(info.value).startswith(reason)
    assert "\n" not in str(info.value)


def test_a_candle_closes_when_a_later_one_is_seen_with_its_last_values() -> None:
    candles = ClosedCandles()
    # What successive watch_ohlcv calls return: updates of the forming candle, then the
    # final update of minute 0 and the first of minute 1 in one batch.
    assert candles.update("BTC/USDT", [row(0, 100.2)]) == []
    assert candles.update("BTC/USDT", [row(0, 100.4, 2.0)]) == []
    closed = candles.update("BTC/USDT", [row(0, 100.6, 3.0), row(1, 100.7)])
    assert closed == [candle_from_ccxt(row(0, 100.6, 3.0))]
    assert candles.forming("BTC/USDT") == candle_from_ccxt(row(1, 100.7))
    assert candles.update("ETH/USDT", [row(1, 5.0)]) == []  # symbols are independent
    two = candles.update("BTC/USDT", [row(2, 101.0), row(3, 101.5)])
    assert [c.open_ns for c in two] == [T0 + MIN, T0 + 2 * MIN]
    assert candles.out_of_order == 0


def test_out_of_order_rows_are_counted_and_never_reclose() -> None:
    candles = ClosedCandles()
    assert len(candles.update("X", [row(0, 100.0), row(1, 100.0), row(2, 100.0)])) == 2
    assert candles.update("X", [row(0, 90.0), row(1, 91.0)]) == []
    assert candles.out_of_order == 2
    assert candles.forming("X") == candle_from_ccxt(row(2, 100.0))
    # After a reconnect the forming candle is forgotten, but what closed stays closed.
    assert candles.forget("X") == candle_from_ccxt(row(2, 100.0))
    assert candles.update("X", [row(1, 92.0), row(3, 100.0)]) == []
    assert candles.out_of_order == 3
    assert candles.update("X", [row(4, 100.0)]) == [candle_from_ccxt(row(3, 100.0))]


def test_a_frame_with_a_malformed_row_changes_nothing() -> None:
    candles = ClosedCandles()
    candles.update("X", [row(0, 100.0)])
    with pytest.raises(MalformedFrame, match="close 'x' is not a number"):
        candles.update("X", [row(1, 100.0), [T0 // MS + 120_000, 1, 1, 1, "x", 1]])
    assert candles.forming("X") == candle_from_ccxt(row(0, 100.0))
    assert candles.update("X", [row(1, 100.0)]) == [candle_from_ccxt(row(0, 100.0))]


def test_to_bar_is_known_at_the_close() -> None:
    bar = to_bar("binance", "BTC/USDT", "5m", Candle(T0, 1, 2, 0.5, 1.5, 3))
    assert bar == Bar(
        ts=T0 + 5 * MIN,
        venue="binance",
        symbol="BTC/USDT",
        interval="5m",
        open_time=T0,
        close_time=T0 + 5 * MIN,
        open=1.0,
        high=2.0,
        low=0.5,
        close=1.5,
        volume=3.0,
    )
    assert b'"open":1.0' in msgspec.json.encode(bar)


def exchange_stream(minutes: int, updates: int) -> tuple[list[list[Any]], dict[int, list[Any]]]:
    """The rows a kline stream sends in order: ``updates`` versions of each candle, its
    final one last; and the final row per open time."""
    rows = []
    final = {}
    for minute in range(minutes):
        for k in range(updates):
            r = row(minute, 100.0 + minute + k / 10, float(k + 1))
            rows.append(r)
        final[r[0] * MS] = r
    return rows, final


@settings(max_examples=150, deadline=None)
@given(
    minutes=st.integers(1, 8),
    updates=st.integers(1, 4),
    data=st.data(),
)
def test_closed_candles_are_the_final_ones_under_repeats_of_older_candles(
    minutes: int, updates: int, data: st.DataObject
) -> None:
    rows, final = exchange_stream(minutes, updates)
    noisy: list[list[Any]] = []
    for i, r in enumerate(rows):
        noisy.append(r)
        older = [o for o in rows[:i] if o[0] < r[0]]
        if older:
            noisy.extend(data.draw(st.lists(st.sampled_from(older), max_size=2)))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(noisy)), max_size=6)))
    batches = [noisy[a:b] for a, b in itertools.pairwise([0, *cuts, len(noisy)])]
    candles = ClosedCandles()
    closed = [c for batch in batches for c in candles.update("X", batch)]
    expected = [candle_from_ccxt(final[o]) for o in sorted(final)][:-1]
    assert closed == expected
    assert candles.forming("X") == candle_from_ccxt(final[max(final)])


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.one_of(st.none(), st.tuples(st.integers(0, 6), st.integers(0, 3))), max_size=40
    )
)
def test_closed_candles_never_emit_twice_or_backwards(
    steps: list[tuple[int, int] | None],
) -> None:
    """Any interleaving of rows and reconnects (None: the forming candle is forgotten)."""
    candles = ClosedCandles()
    closed: list[Candle] = []
    for step in steps:
        if step is None:
            candles.forget("X")
        else:
            closed += candles.update("X", [row(step[0], 100.0 + step[1])])
    opens = [c.open_ns for c in closed]
    assert opens == sorted(set(opens))
    seen = {(row(m, 100.0 + v)[0] * MS, 100.0 + v) for m, v in filter(None, steps)}
    assert all((c.open_ns, c.close) in seen for c in closed)


# -- bars from trades ----------------------------------------------------------------------


def test_trades_make_candles_closed_by_a_later_trade_or_by_time() -> None:
    bars = TradeBars(MIN, 2_000_000_000)
    assert bars.add("BTC/USD:USD", T0 + 1_000, 100.0, 0.5) == []
    assert bars.add("BTC/USD:USD", T0 + 30 * 10**9, 102.0, 1.0) == []
    assert bars.add("BTC/USD:USD", T0 + 20 * 10**9, 99.0, 0.25) == []  # late within the minute
    closed = bars.add("BTC/USD:USD", T0 + MIN + 5, 103.0, 2.0)
    assert closed == [Candle(T0, 100.0, 102.0, 99.0, 102.0, 1.75)]
    assert bars.add("BTC/USD:USD", T0 + 59 * 10**9, 98.0, 1.0) == []  # its candle closed
    assert bars.dropped == 1
    assert bars.close_due(T0 + 2 * MIN + 1_999_999_999) == []
    due = bars.close_due(T0 + 2 * MIN + 2_000_000_000)
    assert due == [("BTC/USD:USD", Candle(T0 + MIN, 103.0, 103.0, 103.0, 103.0, 2.0))]
    assert bars.add("BTC/USD:USD", T0 + MIN + 10, 104.0, 1.0) == []
    assert bars.dropped == 2
    # No trade in minutes 2 and 3: no candle for them.
    assert bars.add("BTC/USD:USD", T0 + 4 * MIN, 105.0, 1.0) == []
    assert bars.close_due(T0 + 10 * MIN) == [
        ("BTC/USD:USD", Candle(T0 + 4 * MIN, 105.0, 105.0, 105.0, 105.0, 1.0))
    ]


def test_close_due_orders_by_time_then_symbol() -> None:
    bars = TradeBars(MIN, 0)
    bars.add("ETH", T0 + MIN, 10.0, 1.0)
    bars.add("BTC", T0 + MIN, 20.0, 1.0)
    bars.add("SOL", T0, 1.0, 1.0)
    assert [(s, c.open_ns) for s, c in bars.close_due(T0 + 5 * MIN)] == [
        ("SOL", T0),
        ("BTC", T0 + MIN),
        ("ETH", T0 + MIN),
    ]
    assert bars.forming("BTC") is None


@pytest.mark.parametrize(
    ("ts", "price", "qty", "reason"),
    [
        (T0, None, 1.0, "trade price None"),
        (T0, math.nan, 1.0, "trade price nan"),
        (T0, -1.0, 1.0, "trade price -1.0"),
        (T0, 1.0, -1.0, "trade amount -1.0"),
        (T0, 1.0, "x", "trade amount 'x'"),
        (1.5, 1.0, 1.0, "trade time 1.5"),
    ],
)
def test_malformed_trades_raise(ts: Any, price: Any, qty: Any, reason: str) -> None:
    with pytest.raises(MalformedFrame, match=reason):
        TradeBars(MIN, 0).add("X", ts, price, qty)


@settings(max_examples=100, deadline=None)
@given(
    trades=st.lists(
        st.tuples(
            st.integers(0, 10 * MIN),
            st.floats(1.0, 1000.0, allow_nan=False),
            st.floats(0.0, 10.0, allow_nan=False),
        ),
        max_size=40,
    )
)
def test_trade_bars_in_time_order_equal_the_per_minute_aggregate(
    trades: list[tuple[int, float, float]],
) -> None:
    trades = sorted(trades, key=lambda t: t[0])
    bars = TradeBars(MIN, 0)
    built = [c for ts, p, q in trades for c in bars.add("X", T0 + ts, p, q)]
    built += [c for _, c in bars.close_due(T0 + 12 * MIN)]
    expected = []
    for minute, group in itertools.groupby(trades, key=lambda t: t[0] // MIN):
        g = list(group)
        prices = [p for _, p, _ in g]
        expected.append(
            Candle(
                T0 + minute * MIN,
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                sum((q for _, _, q in g), 0.0),
            )
        )
    assert [(c.open_ns, c.open, c.high, c.low, c.close) for c in built] == [
        (c.open_ns, c.open, c.high, c.low, c.close) for c in expected
    ]
    assert [c.volume for c in built] == pytest.approx([c.volume for c in expected])


# -- continuity ----------------------------------------------------------------------------


def test_continuity_verdicts_and_the_missing_range() -> None:
    continuity = Continuity(MIN, {"BTC": T0})
    assert continuity.check("BTC", T0 - MIN) == "old"
    assert continuity.check("BTC", T0) == "old"
    assert continuity.check("BTC", T0 + MIN) == "next"
    assert continuity.missing("BTC", T0 + MIN) is None
    assert continuity.check("BTC", T0 + 4 * MIN) == "gap"
    assert continuity.missing("BTC", T0 + 4 * MIN) == (T0 + MIN, T0 + 3 * MIN)
    continuity.advance("BTC", T0 + MIN)
    assert continuity.last("BTC") == T0 + MIN
    continuity.advance("BTC", T0)  # an older bar never moves it back
    assert continuity.last("BTC") == T0 + MIN


def test_first_bar_ever_needs_no_backfill_unless_a_start_is_given() -> None:
    continuity = Continuity(MIN)
    assert continuity.check("BTC", T0) == "next"
    assert continuity.missing("BTC", T0) is None
    continuity.start("ETH", T0)
    assert continuity.check("ETH", T0) == "next"
    assert continuity.missing("ETH", T0 + 3 * MIN) == (T0, T0 + 2 * MIN)
    stored = Continuity(MIN, {"SOL": T0 + 5 * MIN})
    stored.start("SOL", T0)  # the log decides where continuity resumes
    assert stored.last("SOL") == T0 + 5 * MIN


def test_confirm_empty_accepts_the_bar_after_minutes_without_trades() -> None:
    continuity = Continuity(MIN, {"BTC": T0})
    assert continuity.missing("BTC", T0 + 3 * MIN) == (T0 + MIN, T0 + 2 * MIN)
    # REST history returned nothing for minutes 1 and 2 but has minute 3.
    continuity.confirm_empty("BTC", T0 + 3 * MIN)
    assert continuity.check("BTC", T0 + 3 * MIN) == "next"
    assert continuity.missing("BTC", T0 + 5 * MIN) == (T0 + 3 * MIN, T0 + 4 * MIN)
    continuity.advance("BTC", T0 + 3 * MIN)
    assert continuity.check("BTC", T0 + 5 * MIN) == "gap"
    assert continuity.missing("BTC", T0 + 5 * MIN) == (T0 + 4 * MIN, T0 + 4 * MIN)
    continuity.confirm_empty("BTC", T0 + 4 * MIN)  # nothing before the next bar: no-op
    assert continuity.check("BTC", T0 + 5 * MIN) == "gap"
    continuity.confirm_empty("ETH", T0)  # unknown symbol: nothing to confirm
    assert continuity.last("ETH") is None


def store_with_backfill(
    continuity: Continuity, symbol: str, exchange: list[int], open_ns: int, stored: list[int]
) -> None:
    """What the adapter does with a closed live bar: drop an old one; for a gap fetch the
    missing range from REST history (``exchange``: every open time the venue has) and
    store it, confirming the empty minutes REST shows; then store the bar."""
    verdict = continuity.check(symbol, open_ns)
    if verdict == "old":
        return
    if verdict == "gap":
        span = continuity.missing(symbol, open_ns)
        assert span is not None
        for rest_open in [o for o in exchange if span[0] <= o <= span[1]]:
            if continuity.check(symbol, rest_open) == "gap":
                continuity.confirm_empty(symbol, rest_open)
            assert continuity.check(symbol, rest_open) == "next"
            stored.append(rest_open)
            continuity.advance(symbol, rest_open)
        if continuity.check(symbol, open_ns) == "gap":
            continuity.confirm_empty(symbol, open_ns)
    assert continuity.check(symbol, open_ns) == "next"
    stored.append(open_ns)
    continuity.advance(symbol, open_ns)


@settings(max_examples=200, deadline=None)
@given(
    empty=st.sets(st.integers(1, 29), max_size=8),
    seed=st.integers(0, 5),
    data=st.data(),
)
def test_continuity_with_backfill_stores_every_exchange_bar_once_in_order(
    empty: set[int], seed: int, data: st.DataObject
) -> None:
    exchange = [T0 + m * MIN for m in range(30) if m not in empty]
    streamed = data.draw(st.lists(st.sampled_from(exchange), max_size=40))
    streamed = [o for o in streamed if o >= exchange[seed]]
    continuity = Continuity(MIN, {"X": exchange[seed]})
    stored: list[int] = []
    for open_ns in streamed:
        store_with_backfill(continuity, "X", exchange, open_ns, stored)
    assert stored == sorted(set(stored))
    if stored:
        assert stored == [o for o in exchange if exchange[seed] < o <= stored[-1]]
        minutes = [(o - T0) // MIN for o in [exchange[seed], *stored]]
        for a, b in itertools.pairwise(minutes):
            assert b == a + 1 or all(m in empty for m in range(a + 1, b))


# -- watchdog and feed states --------------------------------------------------------------


def test_watchdog_reports_a_stall_once_after_close_plus_grace() -> None:
    grace = 10 * 10**9
    watchdog = Watchdog(MIN, grace)
    watchdog.bar_stored("BTC", T0)
    assert watchdog.next_due() == T0 + MIN + grace
    assert watchdog.due(T0 + MIN + grace - 1) == []
    assert watchdog.due(T0 + MIN + grace) == [("BTC", T0 + MIN)]
    assert watchdog.stalled("BTC") == T0 + MIN
    assert watchdog.due(T0 + 5 * MIN) == []  # once, until the next bar
    assert watchdog.next_due() is None
    watchdog.bar_stored("BTC", T0 - MIN)  # an older bar does not end the stall
    assert watchdog.stalled("BTC") == T0 + MIN
    watchdog.bar_stored("BTC", T0 + MIN)
    assert watchdog.stalled("BTC") is None
    assert watchdog.due(T0 + 5 * MIN) == [("BTC", T0 + 2 * MIN)]


def test_watchdog_orders_symbols_and_forgets() -> None:
    watchdog = Watchdog(MIN, 0)
    watchdog.bar_stored("SOL", T0 + MIN)
    watchdog.bar_stored("ETH", T0)
    watchdog.bar_stored("BTC", T0)
    watchdog.forget("SOL")
    assert watchdog.due(T0 + 10 * MIN) == [("BTC", T0 + MIN), ("ETH", T0 + MIN)]
    with pytest.raises(ValueError, match="grace_ns"):
        Watchdog(MIN, -1)


def test_feed_states_publish_only_changes() -> None:
    states = FeedStates()
    first = states.set("binance", "BTC/USDT", "backfilling", T0, "start", 0)
    assert first is not None and (first.state, first.fresh) == ("backfilling", False)
    assert states.set("binance", "BTC/USDT", "backfilling", T0 + 1, "again", 0) is None
    assert states.set("bybit", "BTC/USDT", "backfilling", T0, "start", 0) is not None
    streaming = states.set("binance", "BTC/USDT", "streaming", T0 + MIN, "", T0 + MIN)
    assert streaming is not None and streaming.fresh and streaming.last_close == T0 + MIN
    stale = states.set("binance", "BTC/USDT", "stale", T0 + 2 * MIN, "no bar", T0 + MIN)
    assert stale is not None
    assert (stale.ts, stale.state, stale.reason, stale.fresh) == (
        T0 + 2 * MIN,
        "stale",
        "no bar",
        False,
    )
    assert states.get("binance", "BTC/USDT") == "stale"
    assert states.get("kraken", "BTC/USDT") is None


# -- thinning ------------------------------------------------------------------------------


def test_quote_throttle_drops_unchanged_late_and_too_frequent_quotes() -> None:
    every = QuoteThrottle(0)
    assert every.admit("X", 1, 10.0, 11.0)
    assert not every.admit("X", 2, 10.0, 11.0)  # unchanged
    assert not every.admit("X", 1, 10.5, 11.0)  # not after the last admitted
    assert every.admit("X", 3, 10.5, 11.0)
    assert every.admit("Y", 1, 10.0, 11.0)
    two_per_s = QuoteThrottle(2)
    s = 10**9
    admitted = [
        two_per_s.admit("X", ts, bid, bid + 1)
        for ts, bid in [(0, 1.0), (s // 4, 2.0), (s // 2, 3.0), (s // 2 + 1, 4.0), (s, 5.0)]
    ]
    assert admitted == [True, False, True, False, True]
    assert two_per_s.dropped == 2


@settings(max_examples=150, deadline=None)
@given(
    per_s=st.sampled_from([0.0, 1.0, 4.0, 10.0]),
    quotes=st.lists(
        st.tuples(
            st.sampled_from(["A", "B"]),
            st.integers(0, 3 * 10**9),
            st.integers(1, 4),
            st.integers(0, 2),
        ),
        max_size=60,
    ),
)
def test_quote_throttle_output_is_time_ordered_and_respects_the_rate(
    per_s: float, quotes: list[tuple[str, int, int, int]]
) -> None:
    throttle = QuoteThrottle(per_s)
    out: dict[str, list[tuple[int, float, float]]] = {"A": [], "B": []}
    for symbol, ts, bid, spread in quotes:
        if throttle.admit(symbol, ts, float(bid), float(bid + spread)):
            out[symbol].append((ts, float(bid), float(bid + spread)))
    gap = round(10**9 / per_s) if per_s else 1
    for admitted in out.values():
        for (t1, b1, a1), (t2, b2, a2) in itertools.pairwise(admitted):
            assert t2 - t1 >= gap
            assert (b1, a1) != (b2, a2)
    assert throttle.dropped == len(quotes) - sum(map(len, out.values()))


def test_trade_filter_admits_each_trade_once_in_time_order() -> None:
    trades = TradeFilter()
    assert trades.admit("X", "1", 10)
    assert trades.admit("X", "2", 10)
    assert not trades.admit("X", "1", 10)  # re-sent
    assert trades.admit("X", "3", 11)
    assert not trades.admit("X", "2", 10)  # older than the newest
    assert not trades.admit("X", "3", 11)
    assert trades.admit("Y", "1", 5)
    assert trades.admit("X", "", 11) and trades.admit("X", "", 11)  # no id: not older
    assert not trades.admit("X", "", 9)
    assert trades.dropped == 4
