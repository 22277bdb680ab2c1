"""A portfolio update, in process: ``Portfolio.decide(event, now)`` for fills, bars and funding.

Two books, each warmed up with ``--symbols`` markets marked by bars and positions held in
``--held`` of them, then ``--n`` rounds, each call timed alone with ``perf_counter_ns``:

- **one USDT spot venue**: the default portfolio's book (one account, one currency);
- **multi-venue book**: base USD; a shared account and two venues with their own (USDT,
  USDC, BNB balances); spot in USDT, USDC and USD, perpetuals with 0.01 contracts and
  leverage; FX bars (``USDT/USD``, ``USDC/USD``, ``BNB/USDT``); fees in the quote or in BNB;
  three strategies with two model tags each, so every fill also goes to two attribution
  books.

Per round and book: a **fill** that adds to a held position, one that reduces it (realizing
PnL), a **bar** of a held market (mark and equity), and in the multi-venue book a **funding**
payment on a perpetual. The target is a fill's median <= 10 us. Usage::

    .venv/bin/python bench/portfolio.py [--n 20000] [--symbols 10] [--held 6] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

# ruff: noqa: E402 - bench/ comes first on sys.path when run as a script; take it off so
# the packages measured are the project's.
_HERE = str(Path(__file__).resolve().parent)
if _HERE in sys.path:
    sys.path.remove(_HERE)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from contracts.events import Bar, Event, ExecutionReport, FundingRate, Instrument
from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig

MINUTE = 60_000_000_000
T0 = 1_700_006_400_000_000_000
TARGET_US = 10.0


def bar(venue: str, symbol: str, close: float, ts: int) -> Bar:
    return Bar(
        ts=ts,
        venue=venue,
        symbol=symbol,
        interval="1m",
        open_time=ts - MINUTE,
        close_time=ts,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1.0,
    )


def fill(
    venue: str,
    symbol: str,
    side: str,
    qty: float,
    price: float,
    ts: int,
    strategy: str = "s0",
    tag: str = "t0",
    fee_currency: str = "",
) -> ExecutionReport:
    return ExecutionReport(
        ts=ts,
        status="filled",
        client_order_id="o",
        strategy=strategy,
        venue=venue,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_qty=qty,
        fill_price=price,
        fill_qty=qty,
        cum_qty=qty,
        fee=price * qty * 0.001 if not fee_currency else 0.0001,
        fee_currency=fee_currency,
        model_tag=tag,
    )


class Book:
    """A portfolio with its markets: (venue, symbol) and a price per market."""

    def __init__(
        self,
        name: str,
        portfolio: Portfolio,
        markets: list[tuple[str, str]],
        fx: list[tuple[str, str, float]],
        multi: bool,
    ) -> None:
        self.name = name
        self.p = portfolio
        self.markets = markets
        self.fx = fx
        self.multi = multi
        self.price = dict.fromkeys(markets, 100.0)


def one_venue(symbols: int) -> Book:
    markets = [("binance", f"S{i}/USDT") for i in range(symbols)]
    return Book("one USDT spot venue", Portfolio(PortfolioConfig()), markets, [], False)


def multi_venue(symbols: int) -> Book:
    config = msgspec.convert(
        {
            "starting_cash": 50_000.0,
            "base_currency": "USD",
            "leverage": 3.0,
            "rates": {"BNB": 500.0},
            "venues": {
                "bn": {"balances": {"USDT": 40_000.0, "BNB": 2.0}, "margin": True},
                "cb": {"balances": {"USDC": 30_000.0}, "leverage": 5.0},
            },
        },
        PortfolioConfig,
    )
    kinds = [
        ("bn", "S{i}/USDT"),
        ("cb", "S{i}/USDC"),
        ("kr", "S{i}/USD"),
        ("bn", "S{i}/USDT:USDT"),
        ("cb", "S{i}/USDC:USDC"),
    ]
    markets = [(v, pattern.format(i=i)) for i in range(symbols) for v, pattern in [kinds[i % 5]]]
    instruments = tuple(
        Instrument(
            ts=T0,
            venue=v,
            symbol=s,
            base=s.split("/")[0],
            quote=s.split("/")[1].split(":")[0],
            kind="perpetual",
            contract_size=0.01,
            max_leverage=20.0,
        )
        for v, s in markets
        if ":" in s
    )
    fx = [("fx", "USDT/USD", 1.0), ("fx", "USDC/USD", 1.0), ("fx", "BNB/USDT", 300.0)]
    return Book("multi-venue book", Portfolio(config, instruments), markets, fx, True)


def warm(book: Book, held: int, ts: int) -> int:
    p = book.p
    for venue, symbol, close in book.fx:
        p.decide(bar(venue, symbol, close, ts), ts)
    for venue, symbol in book.markets:
        p.decide(bar(venue, symbol, 100.0, ts), ts)
    for i, (venue, symbol) in enumerate(book.markets[:held]):
        strategy, tag = f"s{i % 3}", f"t{i % 2}"
        fee = "BNB" if book.multi and i % 4 == 0 else ""
        side = "sell" if i % 3 == 2 else "buy"
        p.decide(fill(venue, symbol, side, 100.0, 100.0, ts, strategy, tag, fee), ts)
    return ts


def timed(timings: list[int], p: Portfolio, event: Event, now: int) -> None:
    clock = time.perf_counter_ns
    start = clock()
    p.decide(event, now)
    timings.append(clock() - start)


def run(n: int, symbols: int, held: int) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for book in (one_venue(symbols), multi_venue(symbols)):
        ts = warm(book, held, T0 + MINUTE)
        p = book.p
        timings: dict[str, list[int]] = {"fill": [], "bar": []}
        if book.multi:
            timings["funding"] = []
        held_markets = book.markets[:held]
        gc.collect()
        for i in range(n):
            ts += MINUTE
            venue, symbol = held_markets[i % held]
            strategy, tag = f"s{i % 3}", f"t{i % 2}"
            fee = "BNB" if book.multi and i % 4 == 0 else ""
            price = 100.0 + (i % 17) - 8
            add = fill(venue, symbol, "buy", 1.0, price, ts, strategy, tag, fee)
            cut = fill(venue, symbol, "sell", 1.0, price + 0.5, ts, strategy, tag, fee)
            bar_event = bar(venue, symbol, price, ts)
            timed(timings["fill"], p, add, ts)
            timed(timings["fill"], p, cut, ts)
            timed(timings["bar"], p, bar_event, ts)
            if book.multi:
                fx_venue, fx_symbol, close = book.fx[i % len(book.fx)]
                p.decide(bar(fx_venue, fx_symbol, close * (1 + (i % 7 - 3) / 1000), ts), ts)
                perp = next((m for m in held_markets[i % held :] if ":" in m[1]), None)
                if perp is not None:
                    rate = FundingRate(ts=ts, venue=perp[0], symbol=perp[1], rate=0.0001)
                    timed(timings["funding"], p, rate, ts)
        result: dict[str, dict[str, float]] = {}
        for name, values in timings.items():
            ordered = sorted(values)
            result[name] = {
                "median_us": statistics.median(ordered) / 1_000,
                "p90_us": ordered[int(0.9 * (len(ordered) - 1))] / 1_000,
                "p99_us": ordered[int(0.99 * (len(ordered) - 1))] / 1_000,
                "n": len(values),
            }
        result["snapshot"] = {"bytes": len(p.snapshot())}
        out[book.name] = result
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--held", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 1 <= args.held <= args.symbols:
        parser.error("--held must be within [1, --symbols]")
    result = run(args.n, args.symbols, args.held)
    print(
        f"portfolio update, {args.symbols} markets, {args.held} held, "
        f"Python {platform.python_version()}"
    )
    print(f"{'book':<22}{'event':<10}{'median us':>10}{'p90 us':>9}{'p99 us':>9}{'n':>8}")
    worst = 0.0
    for book, rows in result.items():
        for name, row in rows.items():
            if name == "snapshot":
                continue
            print(
                f"{book:<22}{name:<10}{row['median_us']:>10.2f}{row['p90_us']:>9.2f}"
                f"{row['p99_us']:>9.2f}{row['n']:>8}"
            )
        worst = max(worst, rows["fill"]["median_us"])
        print(f"{book:<22}{'snapshot':<10}{rows['snapshot']['bytes']:>10,} bytes")
    verdict = "meets" if worst <= TARGET_US else "misses"
    print(f"target: a fill's median <= {TARGET_US:g} us in both books: {verdict}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
