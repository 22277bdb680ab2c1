"""Event builders shared by the risk tests."""

from __future__ import annotations

from functools import partial

from contracts.events import Event, OrderCommand, RiskAlert, RiskDecision
from contracts.keys import BookId, InstrumentId
from contracts.system_events import GovernanceCommand, SystemStatus
from tests import factories
from tests.factories import BTC, HOUR, VENUE

DAY = 24 * HOUR
T0 = 1_700_006_400_000_000_000  # 2023-11-15 00:00:00 UTC, a day boundary
ETH = "ETH/USDT"

bar = partial(factories.bar, ts=T0)
sig = partial(factories.signal, ts=T0)
equity = partial(factories.equity_snapshot, ts=T0)
instrument = partial(factories.instrument, ts=T0)
funding = partial(factories.funding, ts=T0)


def market(symbol: str = BTC, venue: str = VENUE) -> InstrumentId:
    return InstrumentId(venue, symbol)


def book(strategy: str = "s1", symbol: str = BTC, venue: str = VENUE) -> BookId:
    return BookId(strategy, InstrumentId(venue, symbol))


def kill(reason: str = "", ts: int = T0) -> GovernanceCommand:
    return GovernanceCommand(ts=ts, action="kill", reason=reason, issued_by="ops")


def resume(ts: int = T0) -> GovernanceCommand:
    return GovernanceCommand(ts=ts, action="resume", issued_by="ops")


def of(out: list[Event], kind: type) -> list:
    return [e for e in out if isinstance(e, kind)]


def order_of(out: list[Event]) -> OrderCommand:
    orders = [e for e in out if isinstance(e, OrderCommand)]
    assert len(orders) == 1 and len(out) == 1, out
    return orders[0]


def rejection(out: list[Event], rule: str | None = None) -> RiskDecision:
    assert len(out) == 1, out
    decision = out[0]
    assert isinstance(decision, RiskDecision) and not decision.approved, decision
    if rule is not None:
        assert decision.rule == rule, decision
    return decision


def statuses(out: list[Event]) -> list[SystemStatus]:
    return of(out, SystemStatus)


def alerts(out: list[Event]) -> list[RiskAlert]:
    return of(out, RiskAlert)
