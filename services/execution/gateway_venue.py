"""The order manager's venue for markets a venue gateway trades (docs/venues.md, Orders).

Pure, like the paper venue it stands beside: orders and cancels of a gateway venue become
``VenueOrder`` legs for the gateway (``venue.order.<venue>.<symbol>``), and the gateway's
recorded answers (``VenueAnswer``) become the ``ExecutionReport``s the order manager applies
through its state machine. Nothing here talks to an exchange, so a recorded live session
replays through the same code with the recorded answers standing in for the venue.

Every leg of an order gets its own venue client id (``client_ids.venue_client_id``: the
order's id and the leg number), so a restarted fleet sends the same ids again and the
exchange refuses a duplicate instead of doubling a position. A cancel followed by a new leg
of the same order within one decision is one ``amend`` (``replaces`` = the old leg); how the
gateway swaps them on each venue is docs/venues.md's "Trailing and amended stops". The old
leg stays known until the venue says it is canceled: its fills are the order's, and when a
stop's new leg is refused while the old one still works, the old one is the order's leg
again (no rejection is reported: the order manager keeps its stop). A stop the gateway placed again
itself (reconciliation found it missing) is a later leg number of the same order: its
answers are taken as that order's.

Within one decision, protective legs go out first: on a spot account the exchange locks the
base asset for each sell leg, and the stop is the one that must not be refused.

A venue's own cancel of a bracket leg while its sibling works (IB cancels an OCA group's
other members when one fills; contract exchanges cancel reduce-only orders when the position
is closed) is held back until the sibling's fill: it may arrive first on the venue's other
stream, and the order manager, told only "the stop is gone", would place it again for a
position that is already closed. The sibling's fill releases it (after the fill, so the
order manager re-protects only what is still open), so does the order manager's own cancel
of the leg; without a fill it is released after ``HOLD_NS`` (a stop canceled by hand is then
placed again).

Bars and quotes of other venues, and orders for them, go to the paper venue.

Each new leg carries its market's parts (kind, base, quote, settle, contract size) from the
last ``Instrument`` seen for it, so the gateway's journal books a stock, a future or an FX
pair from the log alone; a market with no ``Instrument`` yet leaves them empty (the journal
then reads ccxt's symbol text, as it does for crypto).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import msgspec

from contracts.events import Bar, Event, ExecutionReport, Instrument, OrderCommand, Quote
from contracts.venue_events import VenueAnswer, VenueOrder
from services.execution.lifecycle import Venue, rejected
from services.execution.order_state import DUST
from services.venues.client_ids import leg_number, venue_client_id


class Leg(msgspec.Struct):
    """The working venue leg of one order: its number, venue client id and what it asked."""

    order: VenueOrder
    number: int
    cum_qty: float = 0.0
    done: bool = False
    acked: bool = False  # an ``accepted`` report was given for it
    venue_qty: float = 0.0  # the quantity the exchange took (its lot precision), 0 = unknown


class Amending(msgspec.Struct):
    """A leg amended in place: the values the venue confirmed, and the amendments sent
    since, answered in the order they were sent (the gateway sends them one at a time)."""

    confirmed: VenueOrder
    pending: list[VenueOrder] = msgspec.field(default_factory=list)


class MarketParts(msgspec.Struct, frozen=True):
    """What the venue journal books a market's fills by (``VenueOrder.kind`` and the rest)."""

    kind: str
    base: str
    quote: str
    settle: str
    contract_size: float
    lot_size: float = 0.0
    """The exchange's quantity step; 0 = not told."""


_NO_MARKET = MarketParts("", "", "", "", 1.0)
"""No ``Instrument`` seen: the journal reads the symbol's text."""
HOLD_NS = 30_000_000_000
"""How long a venue's cancel of a bracket leg waits for its sibling's fill (event time)."""


class GatewayVenueState(msgspec.Struct):
    legs: dict[str, Leg] = msgspec.field(default_factory=dict)  # client_order_id -> leg
    owner: dict[str, str] = msgspec.field(default_factory=dict)  # venue client id -> order
    numbers: dict[str, int] = msgspec.field(default_factory=dict)  # order -> legs so far
    replaced: dict[str, Leg] = msgspec.field(default_factory=dict)
    """Legs an amendment replaced, by venue client id, until the venue says they ended."""
    amending: dict[str, Amending] = msgspec.field(default_factory=dict)
    """Legs amended in place, by venue client id, until the venue answered each amendment."""
    markets: dict[str, MarketParts] = msgspec.field(default_factory=dict)
    """The last ``Instrument`` of each gateway market, by ``venue\x1fsymbol``."""
    held: dict[str, VenueAnswer] = msgspec.field(default_factory=dict)
    """Venue cancels of bracket legs waiting for their sibling's fill, by venue client id."""


class _Snapshot(msgspec.Struct):
    paper: bytes
    gateway: GatewayVenueState


class LegRole(msgspec.Struct, frozen=True):
    """The order manager's view of a working order: whether it may only reduce a position
    (bracket legs, validator stops, closing orders) and whether it protects one (a stop)."""

    reduce_only: bool = False
    protective: bool = False


LegRoles = Callable[[str], LegRole | None]
"""An order's role, or None when the order manager holds no working order of that id."""
_PLAIN = LegRole()


def _plain(_: str) -> LegRole | None:
    return _PLAIN


class GatewayVenue:
    """Routes each event by venue: gateway venues here, the rest to ``paper``."""

    def __init__(
        self, gateways: frozenset[str], paper: Venue, in_place: frozenset[str] = frozenset()
    ) -> None:
        """``in_place``: the gateway venues whose protective legs are amended in place
        (``services/venues/gateway/config.py`` ``amends_in_place``: Kraken spot)."""
        self.gateways = gateways
        self.in_place = in_place
        self.paper = paper
        self.state = GatewayVenueState()
        self._outgoing: list[VenueOrder] = []
        self._roles: LegRoles = _plain

    def bind(self, roles: LegRoles) -> None:
        """The order manager tells how to learn an order's role (reduce-only, protective)."""
        self._roles = roles

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        kind = type(event)
        if kind is Bar or kind is Quote:
            if event.venue in self.gateways:  # type: ignore[attr-defined]
                return self._expire(now) if self.state.held else []
            return self.paper.decide(event, now)
        if kind is VenueAnswer:
            reports = self._on_answer(event, now)  # type: ignore[arg-type]
            return [*reports, *self._expire(now)] if self.state.held else reports
        if kind is Instrument and event.venue in self.gateways:  # type: ignore[attr-defined]
            self._on_instrument(event)  # type: ignore[arg-type]
            return []
        if kind is OrderCommand and event.venue in self.gateways:  # type: ignore[attr-defined]
            return self._on_command(event, now)  # type: ignore[arg-type]
        return self.paper.decide(event, now)

    def drain(self) -> list[VenueOrder]:
        """The legs decided since the last drain, a cancel and a new leg of one order
        merged into one amendment, protective legs first (a stable order otherwise)."""
        out: list[VenueOrder] = []
        canceled: dict[str, int] = {}
        for order in self._outgoing:
            at = canceled.pop(order.client_order_id, None)
            if order.action == "new" and at is not None:
                old = out[at]
                out[at] = msgspec.structs.replace(
                    order, action="amend", replaces=old.venue_client_id
                )
                continue
            if order.action == "cancel":
                canceled[order.client_order_id] = len(out)
            out.append(order)
        self._outgoing.clear()
        out.sort(key=_protective_first)
        return out

    def working_leg(self, oid: str) -> VenueOrder | None:
        """The venue leg the order ``oid`` works through now (None: no open leg)."""
        leg = self.state.legs.get(oid)
        return leg.order if leg is not None and not leg.done else None

    def step_late_orders(self) -> bool:
        """The paper venue's quote catch-up (``oms.SteppedVenue``), for its markets."""
        step = getattr(self.paper, "step_late_orders", None)
        return bool(step()) if step is not None else False

    def behind(self) -> tuple[int, list[Event]] | None:
        behind = getattr(self.paper, "behind", None)
        return behind() if behind is not None else None

    # --- orders ---------------------------------------------------------------------------

    def _on_instrument(self, instrument: Instrument) -> None:
        self.state.markets[f"{instrument.venue}\x1f{instrument.symbol}"] = MarketParts(
            instrument.kind,
            instrument.base,
            instrument.quote,
            instrument.settle,
            instrument.contract_size,
            instrument.lot_size,
        )

    def _on_command(self, cmd: OrderCommand, now: int) -> list[Event]:
        st = self.state
        oid = cmd.client_order_id
        if cmd.action == "cancel":
            leg = st.legs.get(oid)
            if leg is None or leg.done:
                return [rejected(cmd, now, "cancel of an unknown order")]
            if leg.order.venue_client_id in st.held:
                self._finish(leg)  # the venue canceled it already: nothing to ask
                return []
            self._outgoing.append(
                msgspec.structs.replace(leg.order, ts=now, action="cancel", replaces="")
            )
            return []
        role = self._roles(oid) or _PLAIN
        previous = st.legs.get(oid)
        if previous is not None and self._amends_in_place(previous, cmd, role):
            return self._amend_in_place(previous, cmd, now)
        number = st.numbers.get(oid, -1) + 1
        st.numbers[oid] = number
        market = st.markets.get(f"{cmd.venue}\x1f{cmd.symbol}", _NO_MARKET)
        order = VenueOrder(
            ts=now,
            action="new",
            client_order_id=oid,
            venue_client_id=venue_client_id(cmd.venue, oid, number),
            strategy=cmd.strategy,
            venue=cmd.venue,
            symbol=cmd.symbol,
            side=cmd.side,
            qty=cmd.qty,
            order_type=cmd.order_type,
            limit_price=cmd.limit_price,
            stop_price=cmd.stop_price,
            time_in_force=cmd.time_in_force,
            reduce_only=role.reduce_only,
            protective=role.protective,
            kind=market.kind,  # type: ignore[arg-type]
            base=market.base,
            quote=market.quote,
            settle=market.settle,
            contract_size=market.contract_size,
        )
        if previous is not None:
            st.owner.pop(previous.order.venue_client_id, None)
            if not previous.done:
                st.replaced[previous.order.venue_client_id] = previous
        st.legs[oid] = Leg(order, number)
        st.owner[order.venue_client_id] = oid
        self._outgoing.append(order)
        return []

    def _amends_in_place(self, previous: Leg, cmd: OrderCommand, role: LegRole) -> bool:
        """Whether this new leg of an order is an in-place amendment of its working one: a
        protective leg the venue acknowledged, unfilled, of the same type, whose cancel was
        just decided (the cancel-and-place the order manager makes of every move), or whose
        last amendment in place is not answered yet (the order manager holds its leg as not
        live until then, so it decided no cancel)."""
        old = previous.order
        return (
            cmd.venue in self.in_place
            and role.protective
            and old.protective
            and previous.acked
            and not previous.done
            and previous.cum_qty == 0.0
            and old.order_type == cmd.order_type
            and old.side == cmd.side
            and (
                self._pending_cancel(old.venue_client_id) is not None
                or old.venue_client_id in self.state.amending
            )
        )

    def _pending_cancel(self, vcid: str) -> int | None:
        for at, order in enumerate(self._outgoing):
            if order.action == "cancel" and order.venue_client_id == vcid:
                return at
        return None

    def _amend_in_place(self, previous: Leg, cmd: OrderCommand, now: int) -> list[Event]:
        """The decided cancel becomes one ``amend`` of the same leg (``replaces`` = its own
        client id) carrying the new values; the venue's answer to it is about this leg."""
        old = previous.order
        at = self._pending_cancel(old.venue_client_id)
        if at is not None:
            del self._outgoing[at]
        order = msgspec.structs.replace(
            old,
            ts=now,
            action="amend",
            replaces=old.venue_client_id,
            qty=cmd.qty,
            limit_price=cmd.limit_price,
            stop_price=cmd.stop_price,
            time_in_force=cmd.time_in_force,
        )
        amending = self.state.amending.setdefault(old.venue_client_id, Amending(old))
        amending.pending.append(order)
        previous.order = order
        self._outgoing.append(order)
        return []

    def _amend_answered(self, leg: Leg, answer: VenueAnswer) -> None:
        """The venue's word on the oldest amendment in place of ``leg``: taken (its values
        are confirmed) or refused (the leg keeps the last confirmed values once no other
        amendment is pending)."""
        vcid = leg.order.venue_client_id
        amending = self.state.amending.get(vcid)
        if amending is None or not amending.pending:
            return
        sent = amending.pending.pop(0)
        if answer.kind == "accepted":
            amending.confirmed = sent
        if not amending.pending:
            del self.state.amending[vcid]
            if answer.kind == "rejected":
                leg.order = msgspec.structs.replace(amending.confirmed, ts=sent.ts)

    # --- answers --------------------------------------------------------------------------

    def _on_answer(self, answer: VenueAnswer, now: int) -> list[Event]:
        if answer.venue_client_id in self.state.replaced:
            return self._on_replaced(answer)
        oid = self.state.owner.get(answer.venue_client_id)
        leg = self.state.legs.get(oid) if oid is not None else self._placed_again(answer)
        if leg is None or leg.done:
            return []  # a replaced or finished leg, or not Keel's: the gateway's journal
        kind = answer.kind
        if answer.source == "amend" and kind in ("accepted", "rejected") and leg.acked:
            self._amend_answered(leg, answer)
            # The order's leg works on (with the values the venue says it has): live again.
            return [self._leg_report(leg, "accepted", answer)]
        order = leg.order
        if answer.order_qty > 0 and kind != "fill":
            leg.venue_qty = answer.order_qty  # what the exchange says of the order itself
        if kind != "fill" and self._roles(order.client_order_id) is None:
            self._finish(leg)  # the order manager ended it already (an OCO sibling)
            return []
        if kind == "accepted":
            out: list[Event] = []
            if not leg.acked:
                leg.acked = True
                out.append(self._leg_report(leg, "accepted", answer))
            whole = self._whole(leg)
            if leg.cum_qty and leg.cum_qty >= whole - DUST * whole:
                # Its fills came first; the exchange's quantity says they completed it.
                self._finish(leg)
                out.append(self._leg_report(leg, "filled", answer))
            return out  # else the submit's answer and the private stream's both say so
        if kind == "unknown":
            return []  # the order keeps its state until a query settles it
        if kind == "canceled" and self._hold(leg, answer):
            return []
        out = []
        if not leg.acked and kind in ("fill", "canceled", "expired"):
            # The exchange had the order (its acknowledgement was lost, or came later).
            leg.acked = True
            out.append(self._leg_report(leg, "accepted", answer))
        if kind == "fill":
            leg.cum_qty = max(leg.cum_qty + answer.fill_qty, answer.cum_qty)
            whole = self._whole(leg)
            final = leg.cum_qty >= whole - DUST * whole
            if final:
                self._finish(leg)
            status = "filled" if final else "partially_filled"
            out.append(self._leg_report(leg, status, answer, fill=True))
            if self.state.held:
                out.extend(self._release(leg))
            return out
        if kind in ("rejected", "missing") and self._restore(leg):
            return []  # the replaced leg works on: it is the order's again
        self._finish(leg)
        out.append(self._leg_report(leg, "rejected" if kind == "missing" else kind, answer))
        return out

    def _whole(self, leg: Leg) -> float:
        """The quantity the exchange took for ``leg``, cut to the market's lot as ccxt cuts
        it (a spot stop for 0.00999 held is an order for 0.009): an answer without the
        exchange's own quantity (Bybit's submit) echoes the leg's, and the order stream's,
        which has it, is news to the gateway only before the submit's answer."""
        o = leg.order
        whole = leg.venue_qty or o.qty
        lot = self.state.markets.get(f"{o.venue}\x1f{o.symbol}", _NO_MARKET).lot_size
        lots = math.floor(whole / lot + 1e-9) if lot > 0 else 0
        return lots * lot if lots else whole

    def _siblings(self, leg: Leg) -> list[Leg]:
        """The other working closing legs of the same book and side (a bracket's target and
        stop are each other's)."""
        o = leg.order
        return [
            other
            for other in self.state.legs.values()
            if other is not leg
            and not other.done
            and other.order.reduce_only
            and other.order.strategy == o.strategy
            and other.order.venue == o.venue
            and other.order.symbol == o.symbol
            and other.order.side == o.side
        ]

    def _hold(self, leg: Leg, answer: VenueAnswer) -> bool:
        """Hold a cancel Keel did not ask for of a closing leg whose sibling still works:
        the sibling's fill, on its way, says whether anything is left to protect."""
        if answer.source == "cancel" or not leg.order.reduce_only or not leg.acked:
            return False
        if not self._siblings(leg):
            return False
        self.state.held.setdefault(leg.order.venue_client_id, answer)
        return True

    def _release(self, filled: Leg) -> list[Event]:
        """The held cancels of ``filled``'s siblings, after its fill: the order manager
        then knows what is left to protect, and protects only that."""
        out: list[Event] = []
        for sibling in self._siblings(filled):
            answer = self.state.held.get(sibling.order.venue_client_id)
            if answer is not None:
                why = f"canceled by the venue as {filled.order.client_order_id} filled"
                out.append(self._held_cancel(sibling, answer, why))
        return out

    def _expire(self, now: int) -> list[Event]:
        """Held cancels whose sibling did not fill within ``HOLD_NS``: the leg is gone."""
        st = self.state
        out: list[Event] = []
        for vcid, answer in list(st.held.items()):
            if now - answer.ts < HOLD_NS:
                continue
            oid = st.owner.get(vcid)
            leg = st.legs.get(oid) if oid is not None else None
            if leg is None or leg.done or leg.order.venue_client_id != vcid:
                del st.held[vcid]
                continue
            if self._roles(leg.order.client_order_id) is None:
                self._finish(leg)  # the order manager ended the order already
                continue
            out.append(self._held_cancel(leg, answer, "canceled by the venue"))
        return out

    def _held_cancel(self, leg: Leg, answer: VenueAnswer, why: str) -> ExecutionReport:
        self._finish(leg)
        reason = answer.reason or why
        return self._leg_report(leg, "canceled", msgspec.structs.replace(answer, reason=reason))

    def _restore(self, leg: Leg) -> bool:
        """A refused new leg of an amended stop whose old leg still works: the old one is
        the order's leg again (a target resized below the lot is refused and ends, and the
        gateway cancels its old leg)."""
        st = self.state
        oid = leg.order.client_order_id
        before = [old for old in st.replaced.values() if old.order.client_order_id == oid]
        if not before or not leg.order.protective:
            return False
        old = max(before, key=lambda o: o.number)
        del st.replaced[old.order.venue_client_id]
        st.owner.pop(leg.order.venue_client_id, None)
        st.legs[old.order.client_order_id] = old
        st.owner[old.order.venue_client_id] = old.order.client_order_id
        return True

    def _on_replaced(self, answer: VenueAnswer) -> list[Event]:
        """An answer about a leg an amendment replaced: its end forgets it; its fills are
        the order's (a stop that triggered before its cancel), and a fill that completes it
        cancels the leg that replaced it."""
        st = self.state
        vcid = answer.venue_client_id
        old = st.replaced[vcid]
        kind = answer.kind
        if kind in ("canceled", "expired", "missing") or (
            kind == "rejected" and answer.source != "cancel"
        ):
            del st.replaced[vcid]
            return []
        if kind != "fill" or self._roles(old.order.client_order_id) is None:
            return []
        old.cum_qty = max(old.cum_qty + answer.fill_qty, answer.cum_qty)
        whole = old.venue_qty or old.order.qty
        final = old.cum_qty >= whole - DUST * whole
        report = self._leg_report(old, "filled" if final else "partially_filled", answer, True)
        if final:
            del st.replaced[vcid]
            current = st.legs.get(old.order.client_order_id)
            if current is not None and not current.done:
                cancel = msgspec.structs.replace(
                    current.order, ts=answer.ts, action="cancel", replaces=""
                )
                self._outgoing.append(cancel)
                self._finish(current)
        return [report]

    def _placed_again(self, answer: VenueAnswer) -> Leg | None:
        """A leg the gateway placed itself in place of a working one (a missing stop placed
        again): a later leg number of the same order becomes its current leg."""
        st = self.state
        current = st.legs.get(answer.client_order_id)
        if current is None or current.done:
            return None
        number = leg_number(current.order.venue, answer.client_order_id, answer.venue_client_id)
        if number is None or number <= current.number:
            return None
        order = msgspec.structs.replace(
            current.order,
            ts=answer.ts,
            venue_client_id=answer.venue_client_id,
            replaces=current.order.venue_client_id,
        )
        st.owner.pop(current.order.venue_client_id, None)
        leg = st.legs[answer.client_order_id] = Leg(order, number, acked=current.acked)
        st.owner[answer.venue_client_id] = answer.client_order_id
        st.numbers[answer.client_order_id] = number
        return leg

    def _finish(self, leg: Leg) -> None:
        leg.done = True
        st = self.state
        st.owner.pop(leg.order.venue_client_id, None)
        st.amending.pop(leg.order.venue_client_id, None)
        st.held.pop(leg.order.venue_client_id, None)
        oid = leg.order.client_order_id
        st.legs.pop(oid, None)
        for vcid in [v for v, old in st.replaced.items() if old.order.client_order_id == oid]:
            del st.replaced[vcid]  # the order is over: nothing of its older legs counts

    def _leg_report(
        self, leg: Leg, status: str, answer: VenueAnswer, fill: bool = False
    ) -> ExecutionReport:
        order = leg.order
        return ExecutionReport(
            ts=answer.ts,
            status=status,  # type: ignore[arg-type]
            client_order_id=order.client_order_id,
            strategy=order.strategy,
            venue=order.venue,
            symbol=order.symbol,
            side=order.side,
            order_qty=order.qty,
            venue_order_id=answer.venue_order_id or order.venue_client_id,
            fill_price=answer.fill_price if fill else 0.0,
            fill_qty=answer.fill_qty if fill else 0.0,
            cum_qty=min(leg.cum_qty, order.qty),
            fee=answer.fee if fill else 0.0,
            fee_currency=answer.fee_currency if fill else "",
            reason=answer.reason,
        )

    # --- state ----------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(_Snapshot(self.paper.snapshot(), self.state))

    def restore(self, data: bytes) -> None:
        snap = msgspec.msgpack.decode(data, type=_Snapshot)
        self.paper.restore(snap.paper)
        self.state = snap.gateway


def _protective_first(order: VenueOrder) -> bool:
    return not (order.protective and order.action != "cancel")
