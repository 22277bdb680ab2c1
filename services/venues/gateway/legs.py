"""What the gateway needs to act on each leg: a fold of its own venue events, with causes.

``services/venues/journal.py`` is the venue's ledger (positions, balances, the halt); this
book is the gateway's working memory beside it: which ``VenueOrder`` already has an answer
(by the order event's id, from each answer's causation id), the exchange's id of each leg,
and a cancel still to settle (the journal keeps the queries and doubts). Rebuilt from the log at
start, so a restarted gateway knows what it already did.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.envelope import Envelope
from contracts.venue_events import VenueAnswer, VenueOrder
from services.venues.journal import VenueJournal

LegState = Literal["sent", "unknown", "working", "done"]
DONE_KINDS = ("canceled", "expired", "rejected", "missing")
ACTIONS = ("submit", "amend", "cancel")


class Leg(msgspec.Struct):
    order: VenueOrder
    envelope: Envelope
    seq: int
    state: LegState = "sent"
    venue_order_id: str = ""
    cum_qty: float = 0.0
    filled: float = 0.0
    trades: set[str] = msgspec.field(default_factory=set)
    cancel: Envelope | None = None
    """The cancel (or replacing order) asked for and not yet settled."""
    replaced_by: str = ""
    """The protective leg placed in its place: its cancel waits until that one works."""
    cancel_queried_ns: int = 0
    cancel_misses: int = 0
    amend: Envelope | None = None
    """An in-place amendment asked and not yet answered (accepted or refused)."""
    before: VenueOrder | None = None
    """The order's values before its pending in-place amendment: what a refusal leaves."""

    @property
    def open(self) -> bool:
        return self.state != "done"


class LegBook:
    def __init__(self) -> None:
        self.legs: dict[str, Leg] = {}
        self.answered: set[str] = set()
        self.by_venue_id: dict[str, str] = {}

    def order(self, order: VenueOrder, envelope: Envelope, seq: int) -> Leg | None:
        """Record a ``VenueOrder``; the leg it is about (None for a cancel of a leg never
        seen)."""
        if order.action == "amend" and order.replaces == order.venue_client_id:
            return self._in_place(order, envelope)
        if order.action == "new" or order.action == "amend":
            leg = self.legs.get(order.venue_client_id)
            if leg is None:
                leg = self.legs[order.venue_client_id] = Leg(order, envelope, seq)
            if order.action == "amend" and order.replaces in self.legs:
                replaced = self.legs[order.replaces]
                replaced.cancel = envelope
                if order.protective:
                    replaced.replaced_by = order.venue_client_id
            return leg
        leg = self.legs.get(order.venue_client_id)
        if leg is not None and leg.open:
            leg.cancel = envelope
        return leg

    def _in_place(self, order: VenueOrder, envelope: Envelope) -> Leg | None:
        """An amendment of a leg in place (``replaces`` = its own client id): the leg takes
        the new values now, keeping the ones the exchange has until it answers."""
        leg = self.legs.get(order.venue_client_id)
        if leg is None or (leg.amend is not None and leg.amend.event_id == envelope.event_id):
            return leg
        if leg.open:
            leg.before = leg.before or leg.order
            leg.order, leg.amend = order, envelope
        return leg

    def _amend_answer(self, leg: Leg, answer: VenueAnswer, envelope: Envelope) -> None:
        """The exchange's word on the pending in-place amendment: taken, or refused (the
        order keeps the values it had)."""
        pending = leg.amend
        if pending is None or envelope.causation_id != pending.event_id:
            return
        if answer.kind == "rejected" and leg.before is not None:
            leg.order = leg.before
        if answer.kind in ("accepted", "rejected"):
            leg.amend = leg.before = None

    def answer(self, answer: VenueAnswer, envelope: Envelope) -> None:
        if answer.source in ACTIONS:  # the order's own answer (a query's is not)
            self.answered.add(envelope.causation_id)
        leg = self.legs.get(answer.venue_client_id)
        if leg is None:
            return
        if answer.venue_order_id:
            leg.venue_order_id = leg.venue_order_id or answer.venue_order_id
            self.by_venue_id.setdefault(answer.venue_order_id, answer.venue_client_id)
        leg.cum_qty = max(leg.cum_qty, answer.cum_qty)
        if answer.source == "amend":
            self._amend_answer(leg, answer, envelope)
        kind = answer.kind
        if kind == "fill":
            if answer.trade_id not in leg.trades:
                leg.trades.add(answer.trade_id)
                leg.filled += answer.fill_qty
            leg.cum_qty = max(leg.cum_qty, leg.filled)
            if leg.state in ("sent", "unknown"):
                leg.state = "working"
            if leg.filled >= leg.order.qty * (1 - 1e-9):
                leg.state, leg.cancel = "done", None
                leg.amend = leg.before = None
            return
        if kind == "accepted":
            if leg.state != "done":
                leg.state = "working"
        elif kind == "unknown":
            if leg.state == "sent" or answer.source == "submit":
                leg.state = "unknown"
        elif kind == "rejected" and (
            answer.source == "cancel" or (answer.source == "amend" and leg.state != "sent")
        ):
            leg.cancel = None  # the request was refused, not the order
        elif kind in DONE_KINDS:
            leg.state, leg.cancel = "done", None
            leg.amend = leg.before = None
            if kind in ("rejected", "missing"):
                self._keep_replaced(leg)

    def _keep_replaced(self, leg: Leg) -> None:
        """A refused (or given up) new leg of an amended stop: the leg it was to replace
        stays the order's stop, so its cancel is withdrawn (the position is not left bare).
        Any other leg's refusal ends its order, and the old leg is canceled."""
        order = leg.order
        if order.action != "amend" or not order.protective:
            return
        replaced = self.legs.get(order.replaces)
        if replaced is not None and replaced.open:
            replaced.cancel = None

    def handled(self, event_id: str) -> bool:
        """Whether the log holds the answer to sending this order event (its submit's,
        cancel's or amendment's, or the unknown a restart recorded for it)."""
        return event_id in self.answered

    def link(self, leg: Leg, venue_order_ids: list[str]) -> None:
        """Every exchange id the leg's order goes by (a triggered algo order's own)."""
        for venue_order_id in venue_order_ids:
            self.by_venue_id.setdefault(venue_order_id, leg.order.venue_client_id)

    def of_venue_order(self, venue_order_id: str) -> Leg | None:
        vcid = self.by_venue_id.get(venue_order_id)
        return self.legs.get(vcid) if vcid else None

    def open_legs(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.open]

    def unsettled(self, journal: VenueJournal) -> list[Leg]:
        """Legs whose fate a query must settle: in doubt in the journal (a timeout, a
        restart, a miss) once the gateway has answered their order at least once (one not
        yet answered is being sent right now), or with a cancel or in-place amendment asked
        and not confirmed."""
        out = []
        for leg in self.legs.values():
            known = journal.leg(leg.order.venue_client_id)
            doubt = known is not None and known.in_doubt() and self.handled(leg.envelope.event_id)
            pending = leg.open and (leg.amend is not None or leg.cancel is not None)
            if doubt or (pending and not self._bare(leg)):
                out.append(leg)
        return out

    def _bare(self, leg: Leg) -> bool:
        """Whether canceling ``leg`` now would leave its position bare: the protective leg
        that replaces it is not known to work yet."""
        new = self.legs.get(leg.replaced_by) if leg.replaced_by else None
        return new is not None and new.state in ("sent", "unknown")
