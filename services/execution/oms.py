"""The order manager: the execution role's decider, in front of a venue (the paper venue
today, a real venue adapter later). It dispatches order commands, bars and risk alerts to
the parts that handle them; ``docs/orders.md`` is the reference. In short:

- every order follows the state machine of ``orders.py``; a repeated ``client_order_id``
  is never executed twice (refused with a dead letter); illegal commands and illegal venue
  reports are refused and reported the same way (``lifecycle.py``);
- plain orders pass through untouched: the venue's own reports come out byte for byte;
- ``take_profit``/``stop_loss`` make a ``new`` order a bracket entry whose fills are
  protected by a reduce-only OCO pair of a take-profit limit and a stop (``brackets.py``;
  same-bar fills of an OCO group in ``oco.py``);
- ``trail_pct``/``trail_atr`` make the stop trail the best price (``trailing.py``);
  ``expire_at`` expires an order (GTD);
- the stop validator protects positions of strategies listed in ``[orders] require_stop``
  and risk's ``tighten_stops`` alert tightens working stops (``stop_validator.py``).

A pure decider like the venue it wraps: ``decide(event, now)``, all state in msgspec
structs (``order_state.py``), so ``snapshot()``/``restore()`` carry open brackets and
trailing stops across a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from contracts.envelope import content_id
from contracts.events import Bar, Event, OrderCommand, Quote, RiskAlert
from contracts.keys import BookId
from contracts.system_events import SystemStatus
from contracts.venue_events import KillSwitch, VenueAnswer, VenueOrder
from services.execution.atr import update_atr
from services.execution.brackets import Brackets, bracket_group
from services.execution.gateway_venue import GatewayVenue, LegRole
from services.execution.lifecycle import Venue, rejected
from services.execution.order_state import (
    DUST,
    OcoGroupId,
    OmsState,
    Order,
    number_text,
)
from services.execution.orders import WORKING
from services.execution.orders_config import OrdersConfig
from services.execution.stop_validator import tightened_stops, validate
from services.execution.trailing import new_trail, trailed_stops


@runtime_checkable
class SteppedVenue(Protocol):
    """A venue that buffers market data (the paper venue's quote rule) and can hand a late
    order the quotes it missed one at a time, so each fill is acted on at its own time."""

    def step_late_orders(self) -> bool: ...

    def behind(self) -> tuple[int, list[Event]] | None: ...


class OmsSnapshot(msgspec.Struct):
    venue_state: bytes
    oms: OmsState


class OrderManager(Brackets):
    """The execution role's decider: the order manager in front of ``venue``."""

    snapshot_version: ClassVar[int] = 2
    """The layout of ``OmsSnapshot``, the venue's state inside it included (2: the paper
    venue's quote buffers)."""

    def __init__(
        self, venue: Venue, config: OrdersConfig | None = None, worker: str = "execution"
    ) -> None:
        super().__init__(venue, config or OrdersConfig(), worker)
        self._venue_decide = venue.decide
        self._validating = bool(self.config.require_stop)
        self._behind: Callable[[], tuple[int, list[Event]] | None] | None = None
        if isinstance(venue, SteppedVenue) and venue.step_late_orders():
            self._behind = venue.behind
        self._drain: Callable[[], list[VenueOrder]] | None = None
        self._working_leg: Callable[[str], VenueOrder | None] | None = None
        if isinstance(venue, GatewayVenue):
            venue.bind(self._leg_role)
            self._drain = venue.drain
            self._working_leg = venue.working_leg

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        # Nearly every input is a bar: an exact type test (it narrows ``event``) costs less
        # than a class pattern or an ``isinstance`` that misses, so bars skip the match.
        if type(event) is Bar:
            if self._atr_n:
                try:
                    market = self._markets[event.venue][event.symbol]
                except KeyError:
                    market = self._market(event.venue, event.symbol)
                update_atr(self.state.atr, market, event, self._atr_n)
            st = self.state
            if not st.orders and not (self._validating and st.positions):
                # Nothing working: the venue only records the bar (the hot path of a replay).
                return self._venue_decide(event, now)
            self._killed.clear()
            out = self._on_bar(event, now)
            if self._behind is not None:
                out = self._catch_up(out)
            if self._drain is not None:
                out.extend(self._drain())
            return out
        self._killed.clear()
        reports = self._dispatch(event, now)
        if self._behind is not None and self.state.orders:
            reports = self._catch_up(list(reports))
        if self._drain is not None:
            legs = self._drain()
            if legs:
                return [*reports, *legs]
        return reports

    def _dispatch(self, event: Event, now: int) -> Sequence[Event]:
        if type(event) is Quote:
            return self._on_quote(event, now)
        match event:
            case OrderCommand(action="new"):
                self._clock = now
                return self._on_new(event, now)
            case OrderCommand(action="cancel"):
                self._clock = now
                return self._on_cancel(event, now)
            case OrderCommand():
                self._clock = now
                return self._on_amend(event, now)
            case RiskAlert(action="tighten_stops"):
                return self._tighten(event, now)
            case RiskAlert():
                return []
            case VenueAnswer():
                return self._on_answer(event, now)
            case KillSwitch():
                return self._kill_switch(event, now)
        return list(self.venue.decide(event, now))

    def _kill_switch(self, kill: KillSwitch, now: int) -> list[Event]:
        """``keel kill --cancel-open``: cancel every working entry on every venue (bracket
        legs and validator stops keep protecting); with ``flatten``, close every position
        with a market order, through the same legs as any order, so the fills reach the
        ledger. Ids derive from the command and the book: a redelivered kill repeats
        nothing (the duplicate ids are refused)."""
        self._clock = now
        out: list[Event] = []
        for rec in [r for r in self.state.orders.values() if r.kind == "order"]:
            cmd = rec.cmd
            cancel = msgspec.structs.replace(cmd, ts=now, action="cancel")
            out.extend(self._on_cancel(cancel, now))
        if kill.flatten:
            for book in list(self.state.positions):
                cause = content_id("flatten", kill.ts, kill.reason, str(book))
                out.extend(self._close_position(book, "kill-" + cause[:24], now))
        return out

    def _close_position(self, book: BookId, oid: str, now: int) -> list[Event]:
        """A market order that closes one book's position (reduce-only at a gateway)."""
        pos = self.state.positions.get(book)
        if pos is None or abs(pos.qty) <= DUST:
            return []
        close = OrderCommand(
            ts=now,
            action="new",
            client_order_id=oid,
            strategy=book.strategy,
            venue=book.venue,
            symbol=book.symbol,
            side="sell" if pos.qty > 0 else "buy",
            qty=abs(pos.qty),
        )
        return self._on_new(close, now, closing=True)

    def _on_answer(self, answer: VenueAnswer, now: int) -> list[Event]:
        """A gateway venue's recorded answer, through the order lifecycle. A protective stop
        the venue rejects leaves a position unprotected: it is closed at once with a
        reduce-only market order, and the execution role reports SAFE_MODE with why. A
        refused new leg of an amended stop whose old leg still works leaves the old stop in
        place: the order keeps it (and its trigger), and a ``RiskAlert`` says so."""
        oid = answer.client_order_id
        rec = self.state.orders.get(oid)
        out: list[Event] = []
        self._from_venue(self.venue.decide(answer, now), out)
        self._sync(out)
        if answer.kind not in ("rejected", "missing") or rec is None or rec.kind != "stop_loss":
            return out
        if self.state.orders.get(oid) is rec:
            rec.in_flight = False  # its leg was answered: the order works through another
            out.extend(self._stop_kept(rec, answer))
            return out
        flat = "flat-" + content_id("stop rejected", answer.venue_client_id)[:24]
        out.extend(self._close_position(rec.book, flat, now))
        out.append(
            SystemStatus(
                ts=answer.ts,
                status="SAFE_MODE",
                reason=(
                    f"{answer.venue} rejected the protective stop {oid}"
                    f" ({answer.reason}): {rec.book} closed with a market order"
                ),
                source=self._worker,
                rule="stop_rejected",
            )
        )
        return out

    def _stop_kept(self, rec: Order, answer: VenueAnswer) -> list[Event]:
        """The venue refused an amended stop (its new leg, or the amendment of the leg in
        place) and the order still works through a leg with another trigger: that trigger is
        the order's again."""
        kept = self._working_leg(rec.cmd.client_order_id) if self._working_leg else None
        if kept is not None:
            rec.leg_live = True  # the kept leg is the one a later cancel must reach
        if kept is None or kept.stop_price == rec.stop_price:
            return []  # no other stop works for the order, or it is the one refused
        refused = number_text(rec.stop_price) if rec.stop_price is not None else "?"
        rec.stop_price = kept.stop_price
        group = self.state.groups.get(rec.group)
        if group is not None and kept.stop_price is not None:
            group.stop_loss = kept.stop_price
        stays = number_text(kept.stop_price) if kept.stop_price is not None else "?"
        return [
            RiskAlert(
                ts=answer.ts,
                rule="stop_amend_refused",
                action="keep_stop",
                detail=(
                    f"{answer.venue} refused the stop {rec.cmd.client_order_id} moved to"
                    f" {refused} ({answer.reason}): the stop at {stays} keeps protecting"
                    f" {rec.book}"
                ),
                venue=answer.venue,
                symbol=answer.symbol,
            )
        ]

    def _leg_role(self, oid: str) -> LegRole | None:
        """What a gateway venue needs to know of a working order: whether it may only reduce
        a position (bracket legs, validator stops, closing orders) and whether it is a
        protective stop."""
        rec = self.state.orders.get(oid)
        if rec is None:
            return None
        return LegRole(rec.kind != "order" or rec.closing, rec.kind == "stop_loss")

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(OmsSnapshot(self.venue.snapshot(), self.state))

    def restore(self, data: bytes) -> None:
        """Strict: bytes that are not an ``OmsSnapshot`` raise, and nothing changes."""
        snap = msgspec.msgpack.decode(data, type=OmsSnapshot)
        self.venue.restore(snap.venue_state)
        self.state = snap.oms

    # --- bars and alerts ------------------------------------------------------------------

    def _on_bar(self, bar: Bar, now: int) -> list[Event]:
        st = self.state
        self._clock = bar.close_time
        try:
            market = self._markets[bar.venue][bar.symbol]
        except KeyError:
            market = self._market(bar.venue, bar.symbol)
        st.closes[market] = bar.close
        out: list[Event] = []
        if st.expiring:
            self._expire(bar, out)
        reports = self.venue.decide(bar, now)
        if reports:
            self._from_venue(reports, out, bar)
        self._sync(out)
        if st.trailing:
            for rec, why in trailed_stops(st, bar, self._market_atr(market)):
                self._replace(rec, out, why)
        if self._validating:
            atr = self._market_atr(market)
            validate(st, self.config, bar, market, atr, self._touched)
        self._sync(out)
        return out

    def _catch_up(self, out: list[Event]) -> list[Event]:
        """Orders that reached the venue after quotes past their time (a live fleet: quotes
        stream while an order is decided) get the quotes they missed one at a time, and the
        order manager acts on each step at that quote's time, as in a replay."""
        behind = self._behind
        assert behind is not None
        while (step := behind()) is not None:
            ts, reports = step
            self._killed.clear()
            self._clock = ts
            self._from_venue(reports, out)
            self._sync(out)
        return out

    def _on_quote(self, quote: Quote, now: int) -> Sequence[Event]:
        """A quote fills at the quote rule (docs/fill-models.md); its fills go through the
        order lifecycle like a bar's."""
        if not self.state.orders:
            return self._venue_decide(quote, now)  # nothing working: the venue buffers it
        self._clock = quote.ts
        out: list[Event] = []
        self._from_venue(self.venue.decide(quote, now), out)
        self._sync(out)
        return out

    def _expire(self, bar: Bar, out: list[Event]) -> None:
        st = self.state
        close = bar.close_time
        for oid in list(st.expiring):
            rec = st.orders.get(oid)
            if rec is None:
                st.expiring.remove(oid)
                continue
            cmd = rec.cmd
            if close > rec.expire_at and cmd.symbol == bar.symbol and cmd.venue == bar.venue:
                self._kill_leg(rec, rec.expire_at)
                reason = f"good till {rec.expire_at}: expired"
                self._finish(rec, "expired", rec.expire_at, out, reason)

    def _tighten(self, alert: RiskAlert, now: int) -> list[Event]:
        self._clock = now
        out: list[Event] = []
        for rec, why in tightened_stops(self.state, alert, self.config.tighten_fraction):
            self._replace(rec, out, why)
        self._sync(out)
        return out

    # --- commands -------------------------------------------------------------------------

    def _on_new(self, cmd: OrderCommand, now: int, closing: bool = False) -> list[Event]:
        st = self.state
        oid = cmd.client_order_id
        known = st.orders.get(oid)
        status = known.status if known is not None else st.done.get(oid)
        if status is not None:
            return [self._refuse(cmd, f"duplicate client_order_id ({status}): not executed again")]
        book = self._book(cmd.strategy, cmd.venue, cmd.symbol)
        why = self._invalid(cmd)
        if why:
            self._remember(oid, "rejected")
            return [rejected(cmd, now, why)]
        rec = Order(
            cmd,
            book,
            cmd.qty,
            stop_price=cmd.stop_price,
            limit_price=cmd.limit_price,
            closing=closing,
        )
        if cmd.oco_group:
            rec.oco = OcoGroupId(cmd.strategy, cmd.oco_group)
            st.oco.setdefault(rec.oco, []).append(oid)
        trail = new_trail(cmd)
        if cmd.take_profit or cmd.stop_loss or (trail is not None and cmd.order_type != "stop"):
            rec.group = oid
            st.groups[oid] = bracket_group(cmd, book, trail)
        elif trail is not None:
            trail.since = cmd.ts
            rec.trail = trail
            st.trailing.append(oid)
        if cmd.expire_at:
            rec.expire_at = cmd.expire_at
            st.expiring.append(oid)
        st.orders[oid] = rec
        out: list[Event] = []
        self._from_venue(self.venue.decide(cmd, now), out)
        self._sync(out)
        return out

    def _invalid(self, cmd: OrderCommand) -> str:
        """Why a new order is rejected before it reaches the venue ('' when it is fine)."""
        if cmd.expire_at and cmd.expire_at <= cmd.ts:
            return "expire_at is not after the order time"
        tp, sl = cmd.take_profit, cmd.stop_loss
        buy = cmd.side == "buy"
        if tp and sl and (tp <= sl if buy else tp >= sl):
            side = "above" if buy else "below"
            tp_text, sl_text = number_text(tp), number_text(sl)
            return f"take_profit {tp_text} must be {side} stop_loss {sl_text} for a {cmd.side}"
        if (
            cmd.trail_atr
            and not cmd.atr
            and self._market_atr(self._market(cmd.venue, cmd.symbol)) is None
        ):
            return "trail_atr needs atr on the order, or [orders] atr_period and that many bars"
        return ""

    def _on_cancel(self, cmd: OrderCommand, now: int) -> list[Event]:
        rec = self.state.orders.get(cmd.client_order_id)
        if rec is None or rec.status not in WORKING:
            # Unknown or finished: the venue gives its answer to a cancel of nothing.
            return list(self.venue.decide(cmd, now))
        out: list[Event] = []
        self._external = True
        try:
            # A gateway leg not yet acknowledged may already be on the exchange: the venue
            # cancels it, and its answer ends the order.
            if rec.leg_live or (rec.status == "new" and self._drain is not None):
                self._from_venue(self.venue.decide(cmd, now), out)
            else:
                self._finish(rec, "canceled", now, out, "canceled")
        finally:
            self._external = False
        self._sync(out)
        return out

    def _on_amend(self, cmd: OrderCommand, now: int) -> list[Event]:
        st = self.state
        rec = st.orders.get(cmd.client_order_id)
        if rec is None or rec.status not in WORKING:
            return [self._refuse(cmd, "amend of an unknown or finished order")]
        old = rec.cmd
        if (cmd.strategy, cmd.venue, cmd.symbol, cmd.side) != (
            old.strategy,
            old.venue,
            old.symbol,
            old.side,
        ):
            return [self._refuse(cmd, "amend must keep strategy, venue, symbol and side")]
        if cmd.qty <= rec.cum_qty + DUST * rec.qty:
            qty_text = number_text(cmd.qty)
            return [self._refuse(cmd, f"amend qty {qty_text} is not above filled {rec.cum_qty}")]
        if rec.kind != "order" and abs(cmd.qty - rec.qty) > DUST * rec.qty:
            return [self._refuse(cmd, "bracket legs are sized by the order manager: amend price")]
        changes: list[str] = []
        if abs(cmd.qty - rec.qty) > DUST * rec.qty:
            changes.append(f"qty {number_text(rec.qty)} -> {number_text(cmd.qty)}")
            rec.qty = cmd.qty
        limit, stop = cmd.limit_price, cmd.stop_price
        if limit is not None and rec.limit_price is not None and limit != rec.limit_price:
            changes.append(f"limit {number_text(rec.limit_price)} -> {number_text(limit)}")
            rec.limit_price = limit
        if stop is not None and rec.stop_price is not None and stop != rec.stop_price:
            changes.append(f"stop {number_text(rec.stop_price)} -> {number_text(stop)}")
            rec.stop_price = stop
        if not changes:
            return []
        group = st.groups.get(rec.group) if rec.kind != "order" else None
        if group is not None:
            if rec.kind == "stop_loss" and rec.stop_price is not None:
                group.stop_loss = rec.stop_price
            elif rec.kind == "take_profit" and rec.limit_price is not None:
                group.take_profit = rec.limit_price
        out: list[Event] = []
        self._replace(rec, out, "amended: " + ", ".join(changes))
        if rec.kind == "order":
            self._touched[rec.book] = None
        self._sync(out)
        return out
