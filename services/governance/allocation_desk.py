"""The allocator on the log: per-(strategy, model) trade returns in, ``AllocationDecided`` out.

Pure (state, event, now). Where the per-trade returns come from:
- a strategy instance with variants: each variant's ``ShadowStep`` ``trade_return``s. Every
  variant is shadow-filled on the same opportunities, so each has a record of its own; its
  live fills do not, because the variants share one book (the routed variant's signal moves
  the strategy's one position, so a closing fill's tag does not say whose trade it was);
- a strategy without variants: its closed round trips from execution reports, one model
  (``""``, like ``pf.pnl``'s whole-strategy attribution) whatever the fills' tags. A round
  trip runs from flat to flat per (strategy, venue, symbol); its return is the net PnL
  (fees included) over the notional of its opening fills.

It rebalances with ``allocator.allocate`` when an input's event time enters a new period of
``every`` (aligned to the epoch), over everything seen up to and including that input, and
publishes one ``AllocationDecided`` per strategy (``gov.alloc.<strategy>``). Equity
snapshots only move its clock. An input's id is its kind, event time and a digest of its
bytes; the last ``REMEMBER`` ids are kept and a repeat changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, ClassVar

import msgspec
from msgspec import Meta

from contracts.events import EquitySnapshot, Event, ExecutionReport
from contracts.intervals import duration_ns
from contracts.model_events import (
    AllocationDecided,
    ModelBudget,
    ModelKey,
    ModelRoster,
    ModelVariant,
    ShadowStep,
)
from eventstore.errors import KeelError
from services.governance.allocator import (
    Allocation,
    AllocatorConfig,
    Duration,
    ModelStats,
    allocate,
)
from services.governance.fact_id import input_id

REMEMBER = 1024
"""Input ids kept to ignore a redelivered input (the runtime also skips by sequence)."""
WHOLE_STRATEGY = ""
"""The model of a strategy without variants (``pf.pnl`` names the whole book the same way)."""
SUBJECTS = (
    ("EXECUTION", ("exec.report.>",)),
    ("GOVERNANCE", ("gov.shadow.>",)),
    ("PORTFOLIO", ("pf.equity",)),
)
"""What the desk reads, by stream. ``ModelRoster``s are the promotion desk's outputs: the
governance decider hands them over in process (governance never consumes its own events)."""


class AllocationDeskConfig(AllocatorConfig, frozen=True, forbid_unknown_fields=True):
    """``[governance.allocator]``: the allocator's keys plus the cadence and the record."""

    every: Duration = "1h"
    """Rebalance when an input's event time enters a new period of this length."""
    window: Annotated[int, Meta(ge=2, le=1_000_000)] = 500
    """A model's record is its last ``window`` trades."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if duration_ns(self.every, "every") <= 0:
            raise ValueError(f"every ({self.every!r}) must be > 0")
        if self.window < self.min_trades:
            raise ValueError(
                f"window ({self.window}) must be >= min_trades ({self.min_trades}), "
                "or no model could ever leave its floor"
            )

    @property
    def every_ns(self) -> int:
        return duration_ns(self.every, "every")


class TradeBook(msgspec.Struct, frozen=True, cache_hash=True, array_like=True, gc=False):
    """Where a live round trip runs: one strategy in one market."""

    strategy: str
    venue: str
    symbol: str


class RoundTrip(msgspec.Struct, forbid_unknown_fields=True):
    """An open round trip: signed quantity, average entry price, the notional of its
    opening fills and its PnL so far (closed parts, minus every fee)."""

    qty: float = 0.0
    avg: float = 0.0
    cost: float = 0.0
    pnl: float = 0.0


class DeskState(msgspec.Struct, forbid_unknown_fields=True):
    rosters: dict[str, tuple[ModelVariant, ...]] = msgspec.field(default_factory=dict)
    """strategy -> its variants; ``()``: none (one model, ``WHOLE_STRATEGY``)"""
    returns: dict[ModelKey, list[float]] = msgspec.field(default_factory=dict)
    trips: dict[TradeBook, RoundTrip] = msgspec.field(default_factory=dict)
    last: Allocation | None = None
    period: int | None = None
    """the event-time period (``now // every``) of the latest input"""
    seen: list[str] = msgspec.field(default_factory=list)


def _fee_in_quote(report: ExecutionReport) -> float:
    base = report.symbol.partition("/")[0]
    if report.fee_currency and report.fee_currency == base:
        return report.fee * report.fill_price
    return report.fee


class AllocationDesk:
    snapshot_version: ClassVar[int] = 1

    def __init__(
        self, config: AllocationDeskConfig, rosters: Mapping[str, tuple[ModelVariant, ...]]
    ) -> None:
        """``rosters``: every configured strategy instance and its variants (``()``: none)."""
        self.config = config
        self.state = DeskState(rosters=dict(rosters))
        self._check_room(len(self._models()))
        self._seen = dict.fromkeys(self.state.seen)

    def _check_room(self, models: int) -> None:
        floor, most = self.config.floor, self.config.max_total
        if floor * models > most:
            raise KeelError(
                f"allocator: floor {floor} x {models} models = {floor * models:.4g} exceeds "
                f"max_total {most}; lower [governance.allocator] floor"
            )

    # --- inputs ---------------------------------------------------------------------------

    def decide(self, event: Event, now: int) -> list[Event]:
        if isinstance(event, ExecutionReport):
            if event.fill_qty <= 0.0 or not self._fresh(input_id("fill", event)):
                return []
            self._on_fill(event)
        elif isinstance(event, ShadowStep):
            if not self._fresh(input_id("shadow", event)):
                return []
            self._on_shadow(event)
        elif isinstance(event, ModelRoster):
            if not self._fresh(input_id("roster", event)):
                return []
            self._on_roster(event)
        elif not isinstance(event, EquitySnapshot):
            return []
        return self._tick(now)

    def _fresh(self, key: str) -> bool:
        """Remember ``key``; False when it was seen (a redelivery)."""
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > REMEMBER:
            del self._seen[next(iter(self._seen))]
        return True

    def _record(self, key: ModelKey, value: float) -> None:
        returns = self.state.returns.setdefault(key, [])
        returns.append(value)
        if len(returns) > self.config.window:
            del returns[0]

    def _on_fill(self, report: ExecutionReport) -> None:
        rosters = self.state.rosters
        if rosters.setdefault(report.strategy, ()):
            return  # a strategy with variants is judged on its shadow books
        book = TradeBook(report.strategy, report.venue, report.symbol)
        trip = self.state.trips.setdefault(book, RoundTrip())
        sign = 1.0 if report.side == "buy" else -1.0
        qty, price, fee = report.fill_qty, report.fill_price, _fee_in_quote(report)
        if trip.qty == 0.0 or (trip.qty > 0.0) == (sign > 0.0):
            self._open(trip, sign * qty, price, fee)
            return
        close = min(qty, abs(trip.qty))
        share = close / qty
        trip.pnl += close * (price - trip.avg) * math.copysign(1.0, trip.qty) - fee * share
        trip.qty += sign * close
        if abs(trip.qty) > 1e-9 * max(1.0, close):
            return
        key = ModelKey(report.strategy, WHOLE_STRATEGY)
        self._record(key, trip.pnl / trip.cost if trip.cost > 0.0 else 0.0)
        rest = qty - close
        if rest > 1e-9 * max(1.0, qty):  # the fill flipped the position: a new round trip
            self.state.trips[book] = RoundTrip()
            self._open(self.state.trips[book], sign * rest, price, fee * (1.0 - share))
        else:
            del self.state.trips[book]

    @staticmethod
    def _open(trip: RoundTrip, signed: float, price: float, fee: float) -> None:
        size = abs(trip.qty) + abs(signed)
        trip.avg = (abs(trip.qty) * trip.avg + abs(signed) * price) / size
        trip.qty += signed
        trip.cost += abs(signed) * price
        trip.pnl -= fee

    def _on_shadow(self, step: ShadowStep) -> None:
        """A step of a strategy the desk knows no variants of is ignored: which of its tags
        is the current model is not known, and with it the canary cap."""
        tags = {v.tag for v in self.state.rosters.get(step.strategy, ())}
        for result in step.results:
            if result.trade_return is not None and result.tag in tags:
                self._record(ModelKey(step.strategy, result.tag), result.trade_return)

    def _on_roster(self, roster: ModelRoster) -> None:
        """The strategy's variants from now on; a dropped tag's record goes with it, and so do
        its open live round trips (a strategy with variants is judged on its shadow books)."""
        state = self.state
        state.rosters[roster.strategy] = roster.variants
        keep = {v.tag for v in roster.variants}
        for key in [k for k in state.returns if k.strategy == roster.strategy]:
            if key.model not in keep:
                del state.returns[key]
        for book in [b for b in state.trips if b.strategy == roster.strategy]:
            del state.trips[book]

    # --- rebalancing ----------------------------------------------------------------------

    def _models(self) -> list[ModelStats]:
        out: list[ModelStats] = []
        for strategy, variants in sorted(self.state.rosters.items()):
            for tag, canary in [(v.tag, v.canary) for v in variants] or [(WHOLE_STRATEGY, False)]:
                key = ModelKey(strategy, tag)
                out.append(ModelStats.from_returns(key, self.state.returns.get(key, []), canary))
        return out

    def _tick(self, now: int) -> list[Event]:
        state = self.state
        period = now // self.config.every_ns
        due = state.period is not None and period > state.period
        state.period = period if state.period is None else max(state.period, period)
        if not due or not state.rosters:
            return []
        models = self._models()
        self._check_room(len(models))
        state.last = allocation = allocate(self.config, models, state.last, now)
        return list(decisions(allocation, now))

    # --- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        self.state.seen = list(self._seen)
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=DeskState)
        self._seen = dict.fromkeys(self.state.seen)


def decisions(allocation: Allocation, now: int) -> tuple[AllocationDecided, ...]:
    """One ``AllocationDecided`` per strategy, in strategy order: its budgets, their sum
    and the rebalance's summary."""
    by_strategy: dict[str, list[ModelBudget]] = {}
    for budget in allocation.budgets:
        by_strategy.setdefault(budget.key.strategy, []).append(budget)
    out: list[AllocationDecided] = []
    for strategy, budgets in sorted(by_strategy.items()):
        total = math.fsum(b.weight for b in budgets)
        out.append(
            AllocationDecided(
                ts=now,
                strategy=strategy,
                method=allocation.method,
                budgets=tuple(budgets),
                total=total,
                reason=f"{strategy}: {total:.4f} of equity over {len(budgets)} models; "
                + allocation.reason,
            )
        )
    return tuple(out)
