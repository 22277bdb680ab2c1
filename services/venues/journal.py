"""One venue's journal: the fold of its legs, the venue's answers and reconciliation's verdicts
(docs/reconciliation.md).

The gateway rebuilds it from the VENUE stream on start (``venue.order``, ``venue.answer``,
``venue.recon`` and ``venue.adopt`` of its venue, in stream order) and keeps folding what it
publishes. Folding an answer twice changes nothing: a fill is keyed by the venue's trade id
and every other answer only moves a leg forward (``sent`` < ``unknown`` < ``working`` <
``done``, quantities by maximum), so the same fact seen on the stream, by polling and by
reconciliation counts once whatever order the copies come in. Positions and balances are
exact sums (Shewchuk partials), so they do not depend on the order of the fills either;
only a perpetual's realized profit follows the log's order (average entry price).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import msgspec

from contracts.venue_events import (
    Discrepancy,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
)
from services.venues.client_ids import leg_number

LegState = Literal["sent", "unknown", "working", "done"]
Outcome = Literal["", "filled", "canceled", "expired", "rejected", "missing"]
JournalEvent = VenueOrder | VenueAnswer | Discrepancy | VenueAdoption

_RANK: dict[str, int] = {"sent": 0, "unknown": 1, "working": 2, "done": 3}
_OUTCOME_RANK: dict[str, int] = {
    "": 0,
    "missing": 1,
    "rejected": 2,
    "canceled": 3,
    "expired": 4,
    "filled": 5,
}
_FILLED_EPS = 1e-9
_DOUBTFUL_SOURCES = frozenset({"submit", "amend", "cancel"})
BASELINE_ACTIONS = frozenset({"baseline", "adopted"})
"""Discrepancy actions that move the journal's baseline to the venue's number."""
HALT_ACTION = "halt"


class ExactSum(msgspec.Struct):
    """A float sum whose value does not depend on the order of its terms (the exact sum,
    rounded once): Shewchuk's non-overlapping partials, the algorithm behind ``math.fsum``."""

    partials: list[float] = []

    def add(self, x: float) -> None:
        partials = self.partials
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]

    @property
    def value(self) -> float:
        return math.fsum(self.partials)


class LegFill(msgspec.Struct, frozen=True):
    trade_id: str
    qty: float
    price: float
    fee: float
    fee_currency: str
    venue_ts: int
    source: str


class Query(msgspec.Struct, frozen=True):
    """One status query of a leg: ``found`` = the venue knew the order (its answer carries
    the real state); not found is recorded as an ``unknown`` answer with source ``query``."""

    ts: int
    found: bool


class Leg(msgspec.Struct, kw_only=True):
    """One venue leg as the journal knows it (mutable: the journal owns it)."""

    order: VenueOrder
    leg: int
    state: LegState = "sent"
    outcome: Outcome = ""
    venue_order_id: str = ""
    cum_qty: float = 0.0
    fills: dict[str, LegFill] = {}
    queries: list[Query] = []
    doubt_since: int = 0
    cancel_requested: bool = False
    replaced_by: str = ""
    reported_missing: bool = False
    last_ts: int = 0
    reason: str = ""
    before: VenueOrder | None = None
    """The values the exchange has while an amendment of the leg in place is unanswered."""

    @property
    def venue_client_id(self) -> str:
        return self.order.venue_client_id

    @property
    def filled_qty(self) -> float:
        return math.fsum(f.qty for f in self.fills.values())

    @property
    def remaining(self) -> float:
        return max(self.order.qty - self.filled_qty, 0.0)

    @property
    def acknowledged(self) -> bool:
        """The venue confirmed the order existed (so it is never submitted again)."""
        return bool(self.venue_order_id) or bool(self.fills) or any(q.found for q in self.queries)

    def in_doubt(self) -> bool:
        """Whether the leg's fate is open: sent or unknown, or a cancel/amend timed out or
        reconciliation missed it, with no query having found it since."""
        if self.state == "done":
            return False
        if self.state in ("sent", "unknown"):
            return True
        if not self.doubt_since:
            return False
        return not any(q.found and q.ts >= self.doubt_since for q in self.queries)


class _Perp(msgspec.Struct):
    """A derivative's average entry price, for the settle asset's realized profit."""

    entry: float = 0.0


class Market(msgspec.Struct, frozen=True):
    """What a symbol's fills move: ``positional`` kinds (perpetuals, futures, stocks) hold a
    position the venue reports; ``margined`` ones (perpetuals, futures) move only their
    realized profit, times ``contract_size``, in ``settle``; the others move ``base`` and pay
    ``quote`` (a stock's shares are its position, not a balance: brokers list them so)."""

    kind: str
    base: str
    quote: str
    settle: str = ""
    contract_size: float = 1.0

    @property
    def margined(self) -> bool:
        return self.kind in ("perpetual", "future")

    @property
    def positional(self) -> bool:
        return self.kind in ("perpetual", "future", "stock")

    @property
    def assets(self) -> tuple[str, ...]:
        return (self.base, self.quote, self.settle)


def market_of(order: VenueOrder) -> Market | None:
    """The market an order names (None: an order without ``kind``, from before the field)."""
    if not order.kind:
        return None
    return Market(order.kind, order.base, order.quote, order.settle, order.contract_size)


def symbol_market(symbol: str) -> Market:
    """A ccxt symbol's market from its text: a settle asset makes it a derivative (linear or
    inverse perpetual, or a dated future booked the same way), quantities in the base."""
    parts = symbol_parts(symbol)
    kind = "perpetual" if parts.derivative else "spot"
    return Market(kind, parts.base, parts.quote, parts.settle)


class JournalState(msgspec.Struct, kw_only=True):
    venue: str
    legs: dict[str, Leg] = {}
    by_order: dict[str, list[str]] = {}
    by_venue_id: dict[str, str] = {}
    trades: dict[str, str] = {}
    positions: dict[str, ExactSum] = {}
    flows: dict[str, ExactSum] = {}
    perps: dict[str, _Perp] = {}
    base_positions: dict[str, ExactSum] = {}
    base_balances: dict[str, ExactSum] = {}
    untracked: dict[str, int] = {}
    markets: dict[str, Market] = {}
    """Each symbol's market, from the first order that named it (``VenueOrder.kind``)."""
    reported: dict[str, int] = {}
    baseline_pending: bool = True
    adoption: str = ""
    mismatches: dict[str, tuple[float, float]] = {}
    halts: dict[str, str] = {}
    """Each halt's detail by the key of ``mismatches``: the status names every one."""
    halted: bool = False
    halt_reason: str = ""
    last_ts: int = 0


class SymbolParts(msgspec.Struct, frozen=True):
    base: str
    quote: str
    settle: str

    @property
    def derivative(self) -> bool:
        return bool(self.settle)


def symbol_parts(symbol: str) -> SymbolParts:
    """Assets of a ccxt unified symbol: ``BASE/QUOTE`` (spot) or ``BASE/QUOTE:SETTLE[-expiry]``."""
    pair, _, settle = symbol.partition(":")
    base, _, quote = pair.partition("/")
    return SymbolParts(base, quote, settle.split("-", 1)[0])


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(JournalState)


def trade_key(symbol: str, trade_id: str) -> str:
    """A venue trade's identity: Binance numbers trades per symbol, so the id alone is not."""
    return f"{symbol}\x1f{trade_id}"


class VenueJournal:
    """The fold; ``apply`` takes every venue event of this venue and ignores the rest."""

    def __init__(self, venue: str, state: JournalState | None = None) -> None:
        self.state = state if state is not None else JournalState(venue=venue)
        self.venue = venue

    # -- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return _ENCODER.encode(self.state)

    @classmethod
    def restore(cls, data: bytes) -> VenueJournal:
        state = _DECODER.decode(data)
        return cls(state.venue, state)

    def copy(self) -> VenueJournal:
        return VenueJournal.restore(self.snapshot())

    # -- fold -----------------------------------------------------------------------------

    def apply(self, event: JournalEvent) -> None:
        if getattr(event, "venue", self.venue) != self.venue:
            return
        state = self.state
        state.last_ts = max(state.last_ts, event.ts)
        if isinstance(event, VenueOrder):
            self._order(event)
        elif isinstance(event, VenueAnswer):
            self._answer(event)
        elif isinstance(event, Discrepancy):
            self._discrepancy(event)
        elif isinstance(event, VenueAdoption):
            state.halted = False
            state.halt_reason = ""
            state.baseline_pending = True
            state.adoption = event.reason
            state.mismatches.clear()
            state.halts.clear()

    def _order(self, order: VenueOrder) -> None:
        legs = self.state.legs
        leg = legs.get(order.venue_client_id)
        if order.action == "cancel":
            if leg is not None:
                leg.cancel_requested = True
                leg.last_ts = max(leg.last_ts, order.ts)
            return
        if leg is not None:
            if order.action == "amend" and leg.state != "done":
                leg.before = leg.before or leg.order
                leg.order = order
                leg.last_ts = max(leg.last_ts, order.ts)
            return
        market = market_of(order)
        if market is not None:
            self.state.markets.setdefault(order.symbol, market)
        number = leg_number(self.venue, order.client_order_id, order.venue_client_id)
        leg = Leg(order=order, leg=-1 if number is None else number, last_ts=order.ts)
        legs[order.venue_client_id] = leg
        self.state.by_order.setdefault(order.client_order_id, []).append(order.venue_client_id)
        replaced = legs.get(order.replaces) if order.replaces else None
        if replaced is not None:
            replaced.replaced_by = order.venue_client_id

    def _answer(self, answer: VenueAnswer) -> None:
        state = self.state
        leg = state.legs.get(answer.venue_client_id)
        if answer.kind == "fill":
            key = trade_key(answer.symbol, answer.trade_id)
            if key in state.trades:
                return
            state.trades[key] = answer.venue_client_id if leg is not None else ""
        if leg is None:
            return
        leg.last_ts = max(leg.last_ts, answer.ts)
        if answer.venue_order_id and not leg.venue_order_id:
            leg.venue_order_id = answer.venue_order_id
            state.by_venue_id[answer.venue_order_id] = leg.venue_client_id
        leg.cum_qty = max(leg.cum_qty, answer.cum_qty)
        kind = answer.kind
        if answer.source == "amend" and leg.before is not None and kind != "unknown":
            if kind == "rejected":
                leg.order = leg.before  # a refused amendment: the order keeps its values
            leg.before = None
        if answer.source == "query" or (answer.source == "reconcile" and kind != "fill"):
            self._query(leg, Query(answer.ts, found=kind not in ("unknown", "missing")))
        if kind == "fill":
            self._fill(leg, answer)
        elif kind == "accepted":
            self._advance(leg, "working")
        elif kind in ("canceled", "expired"):
            self._finish(leg, kind, answer.reason)
        elif kind == "rejected":
            if answer.source == "cancel" or (answer.source == "amend" and leg.acknowledged):
                leg.reason = answer.reason  # the request was refused, not the order
            else:
                self._finish(leg, "rejected", answer.reason)
        elif kind == "missing":
            self._finish(leg, "missing", answer.reason)
        if leg.outcome in ("rejected", "missing"):
            self._release(leg)
        elif kind == "unknown" and answer.source in _DOUBTFUL_SOURCES:
            if answer.source != "cancel":
                self._advance(leg, "unknown")
            leg.doubt_since = max(leg.doubt_since, answer.ts)
            leg.reason = answer.reason

    @staticmethod
    def _query(leg: Leg, query: Query) -> None:
        if query not in leg.queries:
            leg.queries.append(query)
            leg.queries.sort(key=lambda q: (q.ts, q.found))

    @staticmethod
    def _advance(leg: Leg, state: LegState) -> None:
        if _RANK[state] > _RANK[leg.state]:
            leg.state = state

    def _release(self, leg: Leg) -> None:
        """A replacement that never came to be: the leg it was to replace is the order's
        again, so reconciliation validates it (and places it again if it vanishes)."""
        replaced = self.state.legs.get(leg.order.replaces) if leg.order.replaces else None
        if replaced is not None and replaced.replaced_by == leg.venue_client_id:
            replaced.replaced_by = ""

    @staticmethod
    def _finish(leg: Leg, outcome: Outcome, reason: str) -> None:
        leg.state = "done"
        if _OUTCOME_RANK[outcome] > _OUTCOME_RANK[leg.outcome]:
            leg.outcome = outcome
            if reason:
                leg.reason = reason

    def _fill(self, leg: Leg, answer: VenueAnswer) -> None:
        fill = LegFill(
            answer.trade_id,
            answer.fill_qty,
            answer.fill_price,
            answer.fee,
            answer.fee_currency,
            answer.venue_ts,
            answer.source,
        )
        leg.fills[answer.trade_id] = fill
        filled = leg.filled_qty
        leg.cum_qty = max(leg.cum_qty, filled)
        if filled >= leg.order.qty * (1 - _FILLED_EPS):
            self._finish(leg, "filled", "")
        else:
            self._advance(leg, "working")
        self._book(leg.order.symbol, leg.order.side, fill)

    def _book(self, symbol: str, side: str, fill: LegFill) -> None:
        state = self.state
        sign = 1.0 if side == "buy" else -1.0
        market = self.market(symbol)
        position = state.positions.setdefault(symbol, ExactSum())
        if market.margined:
            before = position.value
            position.add(sign * fill.qty)
            self._realize(symbol, market, before, sign * fill.qty, fill.price)
        else:
            position.add(sign * fill.qty)
            if market.kind != "stock":
                state.flows.setdefault(market.base, ExactSum()).add(sign * fill.qty)
            cost = fill.qty * fill.price * market.contract_size
            state.flows.setdefault(market.quote, ExactSum()).add(-sign * cost)
        if fill.fee and fill.fee_currency:
            state.flows.setdefault(fill.fee_currency, ExactSum()).add(-fill.fee)

    def _realize(
        self, symbol: str, market: Market, before: float, delta: float, price: float
    ) -> None:
        """A linear contract's realized profit lands in its settle asset, times its contract
        size; an inverse one's (settled in the base) is not modelled, so that asset is left
        out of comparisons."""
        state = self.state
        perp = state.perps.setdefault(symbol, _Perp())
        if market.settle != market.quote:
            state.untracked.setdefault(market.settle, 0)
            return
        after = before + delta
        if before == 0 or (before > 0) == (delta > 0):
            total = abs(before) + abs(delta)
            perp.entry = (perp.entry * abs(before) + price * abs(delta)) / total
            return
        closed = min(abs(before), abs(delta))
        direction = 1.0 if before > 0 else -1.0
        state.flows.setdefault(market.settle, ExactSum()).add(
            closed * (price - perp.entry) * direction * market.contract_size
        )
        if after == 0:
            perp.entry = 0.0
        elif (after > 0) != (before > 0):
            perp.entry = price

    def _discrepancy(self, found: Discrepancy) -> None:
        state = self.state
        if found.action in BASELINE_ACTIONS:
            delta = found.venue_value - found.keel_value
            if found.kind == "position_mismatch":
                state.base_positions.setdefault(found.symbol, ExactSum()).add(delta)
            elif found.kind == "balance_mismatch":
                state.base_balances.setdefault(found.asset, ExactSum()).add(delta)
            state.baseline_pending = False
            state.adoption = ""
            return
        if found.action == HALT_ACTION:
            state.halted = True
            key = f"{found.kind}\x1f{found.symbol or found.asset}"
            state.mismatches[key] = (found.venue_value, found.keel_value)
            state.halts[key] = found.detail or found.kind
            state.halt_reason = "; ".join(state.halts.values())
        key = reported_key(found.kind, found.venue_client_id, found.venue_order_id)
        if key:
            state.reported.setdefault(key, found.ts)
        leg = state.legs.get(found.venue_client_id)
        if leg is not None and found.kind in ("missing_order", "missing_stop"):
            leg.reported_missing = True
            leg.doubt_since = max(leg.doubt_since, found.ts)

    # -- queries --------------------------------------------------------------------------

    def leg(self, venue_client_id: str) -> Leg | None:
        return self.state.legs.get(venue_client_id)

    def leg_by_venue_id(self, venue_order_id: str) -> Leg | None:
        vcid = self.state.by_venue_id.get(venue_order_id)
        return self.state.legs.get(vcid) if vcid is not None else None

    def legs(self) -> Iterator[Leg]:
        return iter(self.state.legs.values())

    def legs_open(self) -> list[Leg]:
        """Legs that may rest on the venue: not known to be over."""
        return [leg for leg in self.state.legs.values() if leg.state != "done"]

    def unsettled(self) -> list[Leg]:
        """Legs whose fate a query must settle (``order_fate.decide`` says when)."""
        return [leg for leg in self.state.legs.values() if leg.in_doubt()]

    def legs_of(self, client_order_id: str) -> list[Leg]:
        return [self.state.legs[v] for v in self.state.by_order.get(client_order_id, [])]

    def next_leg(self, client_order_id: str) -> int:
        """The leg number a new leg of this order takes (a re-placed stop, a replacement)."""
        numbers = [leg.leg for leg in self.legs_of(client_order_id)]
        return max(numbers, default=-1) + 1

    def seen_trade(self, symbol: str, trade_id: str) -> bool:
        return trade_key(symbol, trade_id) in self.state.trades

    def position(self, symbol: str) -> float:
        """Keel's venue-level position: the baseline plus Keel's fills (signed)."""
        state = self.state
        fills = state.positions.get(symbol)
        base = state.base_positions.get(symbol)
        return math.fsum((fills.partials if fills else []) + (base.partials if base else []))

    def balance(self, asset: str) -> float:
        """Keel's view of the asset's total: the baseline plus what Keel's fills moved."""
        state = self.state
        flows = state.flows.get(asset)
        base = state.base_balances.get(asset)
        return math.fsum((flows.partials if flows else []) + (base.partials if base else []))

    def position_symbols(self) -> list[str]:
        state = self.state
        names = set(state.positions) | set(state.base_positions)
        return sorted(s for s in names if self.market(s).positional)

    def market(self, symbol: str) -> Market:
        """The symbol's market: its orders' ``Instrument`` parts, else its ccxt text."""
        found = self.state.markets.get(symbol)
        return found if found is not None else symbol_market(symbol)

    def balance_assets(self) -> list[str]:
        return sorted(set(self.state.flows) | set(self.state.base_balances))

    def tracked(self, asset: str) -> bool:
        return asset not in self.state.untracked

    def reported(self, kind: str, venue_client_id: str, venue_order_id: str) -> bool:
        return reported_key(kind, venue_client_id, venue_order_id) in self.state.reported

    @property
    def halted(self) -> bool:
        return self.state.halted

    @property
    def halt_reason(self) -> str:
        return self.state.halt_reason

    @property
    def baseline_pending(self) -> bool:
        return self.state.baseline_pending

    @property
    def adoption(self) -> str:
        """The reason of an adoption whose baseline the next reconciliation takes."""
        return self.state.adoption

    def halted_on(self, kind: str, key: str) -> tuple[float, float] | None:
        """The venue and Keel values a halt already reported for this symbol or asset."""
        return self.state.mismatches.get(f"{kind}\x1f{key}")


def reported_key(kind: str, venue_client_id: str, venue_order_id: str) -> str:
    """What makes a recorded finding about an order the same finding next cycle."""
    if kind not in ("external_order", "missing_order", "missing_stop"):
        return ""
    return f"{kind}\x1f{venue_client_id}\x1f{venue_order_id}"
