"""A risk decision with every rail on, in process: ``RiskEngine.decide(signal, now)``.

The engine is configured with every rail, both guards, the breaker, the correlation cap,
Turtle sizing capped by the rails and instruments with lot sizes. It is warmed up with
``--symbols`` symbols (bars, returns for the correlation, an equity snapshot) and holds a
position in ``--held`` of them, so the exposure, open-position and correlation checks have
real books to look at. Then ``--n`` rounds of, each timed alone with ``perf_counter_ns``:

- **open**: a signal that opens a position in a flat symbol (every check runs, the
  correlation against every held symbol, cached since the last bar);
- **open, fresh bar**: the same after a new bar of every symbol (the correlations are
  recomputed: the worst case);
- **close**: the signal back to flat (a reduction: the caps step aside);
- **reject**: opening one symbol too many, rejected by ``max_open_positions`` (the check
  before the last: every other check runs first).

The fills between the timed calls are not timed. Target: median <= 20 us with
every rail on. Usage::

    .venv/bin/python bench/risk.py [--n 20000] [--symbols 10] [--held 5] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import random
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

from contracts.events import Bar, EquitySnapshot, ExecutionReport, OrderCommand, Signal
from services.risk.engine import RiskEngine
from services.risk.limits import (
    BreakerConfig,
    CorrelationConfig,
    DepegGuard,
    FundingGuard,
    GuardsConfig,
    InstrumentSpec,
    RiskLimits,
    SizingConfig,
)

VENUE = "bench"
MINUTE = 60_000_000_000
T0 = 1_700_006_400_000_000_000
TARGET_US = 20.0


def every_rail(symbols: list[str], held: int) -> RiskEngine:
    limits = RiskLimits(
        trading_enabled=True,
        allowed_symbols=tuple(symbols),
        denied_symbols=("LUNA/USDT",),
        min_order_notional=5.0,
        max_order_notional=50_000.0,
        max_position=1_000.0,
        max_symbol_exposure=40_000.0,
        max_venue_exposure=400_000.0,
        max_total_exposure=500_000.0,
        max_open_positions=held + 1,
        max_orders_per_minute=1_000_000,
        max_venue_orders_per_minute=1_000_000,
        equity_floor=10_000.0,
        max_drawdown_pct=50.0,
        max_daily_loss_pct=20.0,
        soft_drawdown_pct=30.0,
        soft_daily_loss_pct=10.0,
        breaker=BreakerConfig(window="5m", min_reports=50, max_error_pct=90.0, cooldown="1m"),
        correlation=CorrelationConfig(max=0.99, window=60, min_periods=20),
    )
    guards = GuardsConfig(
        depeg=DepegGuard(asset="USDC", threshold_pct=1.0, resume_after="6h"),
        funding=FundingGuard(threshold_pct=0.1, action="trim"),
    )
    sizing = SizingConfig(mode="turtle", risk_pct=1.0, atr_multiple=2.0)
    instruments = tuple(
        InstrumentSpec(venue=VENUE, symbol=s, lot_size=0.0001, tick_size=0.01, min_notional=5.0)
        for s in symbols
    )
    return RiskEngine(limits, guards, sizing, instruments)


def bar(symbol: str, close: float, ts: int) -> Bar:
    return Bar(
        ts=ts,
        venue=VENUE,
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


def signal(symbol: str, units: float, ts: int, strategy: str = "bench") -> Signal:
    return Signal(
        ts=ts, strategy=strategy, venue=VENUE, symbol=symbol, target_position=units, atr=2.0
    )


def fill(engine: RiskEngine, order: OrderCommand, ts: int) -> None:
    engine.decide(
        ExecutionReport(
            ts=ts,
            status="filled",
            client_order_id=order.client_order_id,
            strategy=order.strategy,
            venue=order.venue,
            symbol=order.symbol,
            side=order.side,
            order_qty=order.qty,
            fill_price=100.0,
            fill_qty=order.qty,
            cum_qty=order.qty,
        ),
        ts,
    )


def only_order(out: list) -> OrderCommand:
    orders = [e for e in out if isinstance(e, OrderCommand)]
    if len(orders) != 1:
        raise SystemExit(f"bench: expected one order, got {out}")
    return orders[0]


def run(n: int, symbols_n: int, held_n: int) -> tuple[dict[str, dict[str, float]], int]:
    """Timings per kind of decision (and all of them), and how many rails ran."""
    symbols = [f"S{i}/USDT" for i in range(symbols_n)]
    engine = every_rail(symbols, held_n)
    ts = T0
    price = dict.fromkeys(symbols, 100.0)
    rng = random.Random(5)  # independent returns per symbol: correlations near 0

    def move() -> None:
        for s in symbols:
            price[s] *= 1 + rng.gauss(0.0, 0.001)
            engine.decide(bar(s, price[s], ts), ts)

    for _ in range(120):  # returns for the correlation
        ts += MINUTE
        move()
    engine.decide(
        EquitySnapshot(
            ts=ts,
            cash=100_000.0,
            equity=100_000.0,
            realized_pnl=0.0,
            unrealized_pnl=0.0,
            fees=0.0,
            gross_exposure=0.0,
        ),
        ts,
    )
    for s in symbols[:held_n]:
        fill(engine, only_order(engine.decide(signal(s, 1.0, ts, "holder"), ts)), ts)
    flat, other = symbols[held_n], symbols[held_n + 1]
    timings: dict[str, list[int]] = {"open": [], "open, fresh bar": [], "close": [], "reject": []}
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(n):
        ts += 1
        fresh = i % 2 == 1
        if fresh:  # a bar of every symbol: the correlation caches are stale
            ts += MINUTE
            move()
        event = signal(flat, 1.0, ts)
        start = clock()
        out = engine.decide(event, ts)
        timings["open, fresh bar" if fresh else "open"].append(clock() - start)
        fill(engine, only_order(out), ts)
        event = signal(other, 1.0, ts)  # one open position too many
        start = clock()
        out = engine.decide(event, ts)
        timings["reject"].append(clock() - start)
        if len(out) != 1 or getattr(out[0], "rule", "") != "max_open_positions":
            raise SystemExit(f"bench: expected a max_open_positions rejection, got {out}")
        event = signal(flat, 0.0, ts)
        start = clock()
        out = engine.decide(event, ts)
        timings["close"].append(clock() - start)
        fill(engine, only_order(out), ts)
    every = [t for values in timings.values() for t in values]
    result: dict[str, dict[str, float]] = {}
    for name, values in (*timings.items(), ("all", every)):
        ordered = sorted(values)
        result[name] = {
            "median_us": statistics.median(ordered) / 1_000,
            "p90_us": ordered[int(0.9 * (len(ordered) - 1))] / 1_000,
            "p99_us": ordered[int(0.99 * (len(ordered) - 1))] / 1_000,
            "n": len(values),
        }
    return result, len(engine.checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--held", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not 0 <= args.held < args.symbols - 1:
        parser.error("--held must be within [0, --symbols - 1)")
    result, checks = run(args.n, args.symbols, args.held)
    print(
        f"risk decision, every rail on ({checks} checks, {args.symbols} symbols, "
        f"{args.held} held), Python {platform.python_version()}"
    )
    print(f"{'decision':<18}{'median us':>10}{'p90 us':>9}{'p99 us':>9}{'n':>8}")
    for name, row in result.items():
        print(
            f"{name:<18}{row['median_us']:>10.2f}{row['p90_us']:>9.2f}{row['p99_us']:>9.2f}"
            f"{row['n']:>8}"
        )
    verdict = "meets" if result["all"]["median_us"] <= TARGET_US else "misses"
    print(f"target: median <= {TARGET_US:g} us: {verdict}")
    if args.json:
        print(json.dumps({"checks": checks, **result}))


if __name__ == "__main__":
    main()
