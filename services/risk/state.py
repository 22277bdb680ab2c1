"""What the risk decider remembers: the layout of its snapshot (``RiskEngine.snapshot_version``).

Markets are keyed by ``InstrumentId`` and a strategy's book in one by ``BookId``; strategies,
venues, assets and order ids are plain strings. Every struct refuses unknown fields, so bytes
of another layout fail to restore instead of being half read.
"""

from __future__ import annotations

import msgspec

from contracts.events import FeedState, InstrumentKind
from contracts.keys import BookId, InstrumentId
from contracts.system_events import SystemState
from services.risk.breaker import BreakerState
from services.risk.guards import DepegState, FundingState


class Working(msgspec.Struct, forbid_unknown_fields=True):
    """An order risk sent that has not reached a final status, and what of it is unfilled.
    ``entry``: it grew exposure when placed (soft breaches cancel those)."""

    book: BookId
    remaining: float
    entry: bool = False


class InstrumentInfo(msgspec.Struct, forbid_unknown_fields=True):
    """What risk knows of an instrument (``md.instrument`` or ``[[instruments]]``)."""

    base: str = ""
    quote: str = ""
    kind: InstrumentKind = "spot"
    tick_size: float = 0.0
    lot_size: float = 0.0
    min_notional: float = 0.0


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One reason for the status: ``status`` it implies, ``rule``, ``reason``, ``since``."""

    status: SystemState
    rule: str
    reason: str
    since: int = 0


class FeedBlock(msgspec.Struct, forbid_unknown_fields=True):
    """A market whose feed is not fresh (``services/risk/feed_guard.py``): its latest
    ``state`` and ``reason``, and ``since``, the event time of the first status of the outage."""

    state: FeedState
    since: int
    reason: str = ""


class EquityTrack(msgspec.Struct, forbid_unknown_fields=True):
    """The last equity, its peak and the UTC day's opening equity (the equity rails)."""

    equity: float
    peak: float
    day: int
    day_open: float


class ReturnSeries(msgspec.Struct, forbid_unknown_fields=True):
    """Close-to-close returns of one instrument's bars of one interval, the last ones kept."""

    interval: str
    close: float
    ts: list[int] = msgspec.field(default_factory=list)
    rets: list[float] = msgspec.field(default_factory=list)


class PlaybookHolds(msgspec.Struct, forbid_unknown_fields=True):
    """What governance's playbook actions hold (``services/risk/playbook_gate.py``): the
    budget factor of each drawdown rule, the disabled strategies (``strategy`` -> the rules
    that disabled it) and the entry halts (rule -> until, ns, and its reason)."""

    factors: dict[str, float] = msgspec.field(default_factory=dict)
    disabled: dict[str, list[str]] = msgspec.field(default_factory=dict)
    halts: dict[str, tuple[int, str]] = msgspec.field(default_factory=dict)


class StrategyBudget(msgspec.Struct, forbid_unknown_fields=True):
    """A strategy's budget from governance's allocator (``gov.alloc.<strategy>``): the sum
    of its models' weights, a fraction of equity, and the time of the decision that set it."""

    weight: float
    at: int


class RiskState(msgspec.Struct, forbid_unknown_fields=True):
    killed: bool = False
    kill_reason: str = ""
    positions: dict[BookId, float] = msgspec.field(default_factory=dict)
    working: dict[str, Working] = msgspec.field(default_factory=dict)
    """by client order id"""
    prices: dict[InstrumentId, float] = msgspec.field(default_factory=dict)
    bar_times: dict[InstrumentId, int] = msgspec.field(default_factory=dict)
    """the latest close time of any bar seen per market (the stale-signal rail)"""
    orders: dict[BookId, int] = msgspec.field(default_factory=dict)
    """orders placed per book: the last part of their client order ids"""
    net: dict[InstrumentId, float] = msgspec.field(default_factory=dict)
    """every strategy's position plus working orders, netted per market"""
    instruments: dict[InstrumentId, InstrumentInfo] = msgspec.field(default_factory=dict)
    equity: EquityTrack | None = None
    conditions: dict[str, Condition] = msgspec.field(default_factory=dict)
    """by name: ``kill``, ``halt:<rule>``, ``soft:<rule>``, ``breaker:<venue>``,
    ``depeg:<asset>``, ``funding:<venue>|<symbol>``, ``feed:<venue>``"""
    published: Condition = Condition("RUNNING", "", "")
    breakers: dict[str, BreakerState] = msgspec.field(default_factory=dict)
    strategy_orders: dict[str, list[int]] = msgspec.field(default_factory=dict)
    venue_orders: dict[str, list[int]] = msgspec.field(default_factory=dict)
    returns: dict[InstrumentId, ReturnSeries] = msgspec.field(default_factory=dict)
    pair_prices: dict[str, float] = msgspec.field(default_factory=dict)
    """latest close per ``BASE/QUOTE`` on any venue (the depeg guard's rates)"""
    depeg: dict[str, DepegState] = msgspec.field(default_factory=dict)
    funding: dict[InstrumentId, FundingState] = msgspec.field(default_factory=dict)
    sized: dict[BookId, list[float]] = msgspec.field(default_factory=dict)
    """a sized target's units and the quantity they were sized to"""
    cancels: dict[str, bool] = msgspec.field(default_factory=dict)
    """client order ids risk asked to cancel, until the cancel's outcome"""
    feeds: dict[InstrumentId, FeedBlock] = msgspec.field(default_factory=dict)
    """markets whose feed is not fresh: entries blocked (the stale-data guard)"""
    playbooks: PlaybookHolds = msgspec.field(default_factory=PlaybookHolds)
    """governance's playbook actions in force (v4)"""
    budgets: dict[str, StrategyBudget] = msgspec.field(default_factory=dict)
    """governance's allocator budgets by strategy (v5)"""
