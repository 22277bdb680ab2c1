"""The one home of the tests' event builders: bars, fills, order replies, signals, equity
snapshots, instruments, funding rates and Parquet bar files.

Every builder defaults to BTC/USDT on venue "test" at ``T0`` (bars: one minute bars counted
from ``T0``); a test names only what its case is about, so these defaults are what most
tests used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from contracts.events import (
    Bar,
    EquitySnapshot,
    ExecutionReport,
    FundingRate,
    Instrument,
    OrderCommand,
    Signal,
)

MINUTE = 60_000_000_000
HOUR = 60 * MINUTE
T0 = 1_700_000_000_000_000_000
# the first whole minute at or after T0, for the scenarios whose bars start on the minute grid
T0_ON_MINUTE = 1_700_000_040 * 10**9
VENUE = "test"
BTC = "BTC/USDT"


def bar(
    close: float,
    *,
    open: float | None = None,
    high: float | None = None,
    low: float | None = None,
    volume: float = 1.0,
    index: int = 0,
    start: int = T0,
    ts: int | None = None,
    symbol: str = BTC,
    venue: str = VENUE,
    interval: str = "1m",
) -> Bar:
    """A one minute bar closing at ``ts``, by default bar ``index`` counted from ``start``
    (``ts`` is the close time); open, high and low left out are the close: a flat bar."""
    close_time = start + (index + 1) * MINUTE if ts is None else ts
    return Bar(
        ts=close_time,
        venue=venue,
        symbol=symbol,
        interval=interval,
        open_time=close_time - MINUTE,
        close_time=close_time,
        open=close if open is None else open,
        high=close if high is None else high,
        low=close if low is None else low,
        close=close,
        volume=volume,
    )


def ohlc_bar(
    index: int,
    open: float,
    high: float,
    low: float,
    close: float,
    *,
    volume: float = 10.0,
    start: int = T0,
    symbol: str = BTC,
    venue: str = VENUE,
) -> Bar:
    """Bar ``index`` written as a row of an OHLC table, as the execution tests' hand-computed
    fills are; volume 10 by default, what those scenarios assume."""
    return bar(
        close,
        open=open,
        high=high,
        low=low,
        volume=volume,
        index=index,
        start=start,
        symbol=symbol,
        venue=venue,
    )


def bars_from_closes(
    closes: Sequence[float],
    *,
    highs: Mapping[int, float] | None = None,
    lows: Mapping[int, float] | None = None,
    volumes: Mapping[int, float] | None = None,
    wick: float = 0.0,
    start: int = T0,
    symbol: str = BTC,
    venue: str = VENUE,
    interval: str = "1m",
) -> list[Bar]:
    """Consecutive bars from their closes, each opening at the previous close (the first at
    its own), so a strategy's hand-computed scenario needs only the closes. High and low
    reach ``wick`` beyond the body, volume is 1, unless given for a 1-based bar number."""
    bars: list[Bar] = []
    previous = float(closes[0])
    for i, value in enumerate(closes):
        n, close = i + 1, float(value)
        bars.append(
            bar(
                close,
                open=previous,
                high=(highs or {}).get(n, max(previous, close) + wick),
                low=(lows or {}).get(n, min(previous, close) - wick),
                volume=(volumes or {}).get(n, 1.0),
                index=i,
                start=start,
                symbol=symbol,
                venue=venue,
                interval=interval,
            )
        )
        previous = close
    return bars


def fill(
    side: str,
    qty: float,
    price: float,
    fee: float = 0.0,
    *,
    ts: int = T0,
    status: str = "filled",
    client_order_id: str = "o",
    strategy: str = "s1",
    symbol: str = BTC,
    venue: str = VENUE,
    fee_currency: str = "",
    model_tag: str = "",
) -> ExecutionReport:
    """An order filled in one go: the ledger and metrics tests need only side, size and price."""
    return ExecutionReport(
        ts=ts,
        status=status,  # type: ignore[arg-type]
        client_order_id=client_order_id,
        strategy=strategy,
        venue=venue,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_qty=qty,
        fill_price=price,
        fill_qty=qty,
        cum_qty=qty,
        fee=fee,
        fee_currency=fee_currency,
        model_tag=model_tag,
    )


def report(
    order: OrderCommand, status: str, fill_qty: float = 0.0, price: float = 0.0, ts: int = 0
) -> ExecutionReport:
    """The venue's answer to ``order`` (a nanosecond after it unless ``ts`` is given), with
    ``fill_qty`` as the order's whole filled quantity so far."""
    return ExecutionReport(
        ts=ts or order.ts + 1,
        status=status,  # type: ignore[arg-type]
        client_order_id=order.client_order_id,
        strategy=order.strategy,
        venue=order.venue,
        symbol=order.symbol,
        side=order.side,
        order_qty=order.qty,
        fill_price=price,
        fill_qty=fill_qty,
        cum_qty=fill_qty,
    )


def signal(
    target: float | None = None,
    *,
    side: str | None = None,
    size: float | None = None,
    ts: int = T0,
    strategy: str = "s1",
    symbol: str = BTC,
    venue: str = VENUE,
    model_tag: str = "mt",
    atr: float | None = None,
    reason: str = "",
) -> Signal:
    """A strategy's signal: a target position, or a side and size."""
    return Signal(
        ts=ts,
        strategy=strategy,
        venue=venue,
        symbol=symbol,
        model_tag=model_tag,
        target_position=target,
        side=side,  # type: ignore[arg-type]
        size=size,
        atr=atr,
        reason=reason,
    )


def equity_snapshot(value: float, *, ts: int = T0, exposure: float = 0.0) -> EquitySnapshot:
    """A book all in cash (``exposure`` aside): equity == cash, nothing realized or open."""
    return EquitySnapshot(
        ts=ts,
        cash=value,
        equity=value,
        realized_pnl=0.0,
        unrealized_pnl=0.0,
        fees=0.0,
        gross_exposure=exposure,
    )


def instrument(
    symbol: str = BTC,
    *,
    kind: str = "spot",
    lot: float = 0.0,
    tick: float = 0.0,
    min_notional: float = 0.0,
    contract_size: float = 1.0,
    max_leverage: float = 0.0,
    venue: str = VENUE,
    ts: int = T0,
) -> Instrument:
    """The venue's listing of ``symbol``, its base and quote read from the symbol
    (``BASE/QUOTE`` or, for a perpetual, ``BASE/QUOTE:SETTLE``)."""
    base, _, rest = symbol.partition("/")
    return Instrument(
        ts=ts,
        venue=venue,
        symbol=symbol,
        base=base,
        quote=rest.partition(":")[0],
        kind=kind,  # type: ignore[arg-type]
        tick_size=tick,
        lot_size=lot,
        min_notional=min_notional,
        contract_size=contract_size,
        max_leverage=max_leverage,
    )


def funding(
    rate: float,
    *,
    symbol: str = "BTC/USDT:USDT",
    venue: str = VENUE,
    ts: int = T0,
    next_time: int = 0,
) -> FundingRate:
    """A perpetual's funding rate: positive, longs pay shorts."""
    return FundingRate(ts=ts, venue=venue, symbol=symbol, rate=rate, next_time=next_time)


def write_bar_file(path: Path, bars: Sequence[Bar], *, epoch_ms: bool = False) -> Path:
    """``bars`` as a Parquet bar file a backtest reads: open times as a UTC timestamp column,
    or ``epoch_ms`` as integer epoch milliseconds, the form exchange dumps come in."""
    open_times = [b.open_time for b in bars]
    pl.DataFrame(
        {
            "open_time": (
                [t // 1_000_000 for t in open_times]
                if epoch_ms
                else pl.Series(open_times, dtype=pl.Int64).cast(pl.Datetime("ns", "UTC"))
            ),
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
        }
    ).write_parquet(path)
    return path
