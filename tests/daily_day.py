"""A hand-computed trading day for the daily report's tests: 2026-12-05 in Europe/Berlin
(UTC+1), so the day runs from 2026-12-04T23:00Z to 2026-12-05T23:00Z.

Before the day: 10,000 of cash, 1 BTC bought at 100 (fee 0.1) by s1/m1 on v1, status
RUNNING, a risk alert. In the day: BTC sold at 120 (fee 0.1; round trip +19.8), 2 ETH
bought at 50 and sold at 45 by s2 on v2 (fees 0.05 each; round trip -10.1), 1 SOL bought
at 10 (fee 0.01) and still open at 9, 0.5 of funding paid; alerts: HALTED (RUNNING again
is no change), a risk alert, a kill, a dead letter, a discrepancy. After the day: a
snapshot, a fill and an alert that must not count.
"""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.events import (
    EquitySnapshot,
    Event,
    ExecutionReport,
    PositionChanged,
    RiskAlert,
    StrategyPnL,
)
from contracts.system_events import DeadLetter, GovernanceCommand, SystemStatus
from contracts.venue_events import Discrepancy
from tests.factories import fill as factory_fill

DAY = "2026-12-05"
TZ = "Europe/Berlin"
H = 3_600 * 1_000_000_000
START = int(datetime(2026, 12, 4, 23, tzinfo=UTC).timestamp()) * 1_000_000_000
END = START + 24 * H
BEFORE = START - H


def fill(
    at: int, side: str, qty: float, price: float, fee: float, strategy: str, tag: str, venue: str
) -> ExecutionReport:
    symbol = {"v1": "BTC/USDT", "v2": "ETH/USDT"}[venue] if price > 20 else "SOL/USDT"
    return factory_fill(
        side,
        qty,
        price,
        fee,
        ts=at,
        client_order_id=f"{strategy}-{at}",
        strategy=strategy,
        symbol=symbol,
        venue=venue,
        model_tag=tag,
    )


def snap(
    at: int, equity: float, realized: float, unrealized: float, fees: float, funding: float = 0.0
) -> EquitySnapshot:
    return EquitySnapshot(
        ts=at,
        cash=equity,
        equity=equity,
        realized_pnl=realized,
        unrealized_pnl=unrealized,
        fees=fees,
        gross_exposure=0.0,
        funding=funding,
    )


def book(
    at: int,
    strategy: str,
    tag: str,
    realized: float,
    unrealized: float,
    fees: float,
    funding: float = 0.0,
) -> StrategyPnL:
    return StrategyPnL(
        ts=at,
        strategy=strategy,
        model_tag=tag,
        realized_pnl=realized,
        unrealized_pnl=unrealized,
        fees=fees,
        funding=funding,
    )


def events() -> list[Event]:
    s = START
    return [
        snap(BEFORE, 10_000.0, 0.0, 0.0, 0.0),
        fill(BEFORE, "buy", 1.0, 100.0, 0.1, "s1", "m1", "v1"),
        PositionChanged(
            ts=BEFORE,
            venue="v1",
            symbol="BTC/USDT",
            qty=1.0,
            avg_price=100.0,
            realized_pnl=0.0,
            strategy="s1",
        ),
        book(BEFORE, "s1", "", 0.0, 0.0, 0.1),
        book(BEFORE, "s1", "m1", 0.0, 0.0, 0.1),
        SystemStatus(ts=BEFORE, status="RUNNING", reason="start", source="risk"),
        RiskAlert(ts=BEFORE, rule="stale_feed", action="block", detail="before the day"),
        snap(BEFORE + 1, 9_999.9, 0.0, 0.0, 0.1),
        snap(s + 1 * H, 10_009.9, 0.0, 10.0, 0.1),
        SystemStatus(ts=s + 1 * H, status="RUNNING", reason="still", source="risk"),
        fill(s + 2 * H, "sell", 1.0, 120.0, 0.1, "s1", "m1", "v1"),
        PositionChanged(
            ts=s + 2 * H,
            venue="v1",
            symbol="BTC/USDT",
            qty=0.0,
            avg_price=0.0,
            realized_pnl=20.0,
            strategy="s1",
        ),
        snap(s + 2 * H, 10_019.8, 20.0, 0.0, 0.2),
        fill(s + 3 * H, "buy", 2.0, 50.0, 0.05, "s2", "", "v2"),
        SystemStatus(ts=s + 3 * H, status="HALTED", reason="max drawdown", source="risk"),
        RiskAlert(ts=s + 3 * H, rule="max_drawdown", action="halt_entries", detail="dd 5%"),
        GovernanceCommand(ts=s + 3 * H, action="kill", reason="checking", issued_by="alice"),
        fill(s + 4 * H, "sell", 2.0, 45.0, 0.05, "s2", "", "v2"),
        snap(s + 4 * H, 10_009.7, 10.0, 0.0, 0.3),
        book(s + 4 * H, "s2", "", -10.0, 0.0, 0.1),
        fill(s + 5 * H, "buy", 1.0, 10.0, 0.01, "s1", "m1", "v1"),
        PositionChanged(
            ts=s + 5 * H,
            venue="v1",
            symbol="SOL/USDT",
            qty=1.0,
            avg_price=10.0,
            realized_pnl=0.0,
            strategy="s1",
        ),
        DeadLetter(
            ts=s + 5 * H, worker="risk", subject="sig.x.v1.BTC", reason="bad json", payload=b"{"
        ),
        Discrepancy(
            ts=s + 5 * H,
            venue="v1",
            kind="position_mismatch",
            action="halt",
            symbol="SOL/USDT",
            venue_value=2.0,
            keel_value=1.0,
        ),
        snap(s + 6 * H, 10_008.19, 10.0, -1.0, 0.31, 0.5),
        book(s + 6 * H, "s1", "", 20.0, -1.0, 0.21, 0.5),
        book(s + 6 * H, "s1", "m1", 20.0, -1.0, 0.21, 0.5),
        snap(END, 5.0, 0.0, 0.0, 0.0),
        fill(END + H, "sell", 1.0, 11.0, 0.01, "s1", "m1", "v1"),
        RiskAlert(ts=END, rule="after", action="block"),
    ]
