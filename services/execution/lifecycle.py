"""The life of one order in the order manager: its venue legs, the venue's reports applied
through the state machine, fills into positions and bracket groups, its end, and the
reports it gives.

The venue is asked only ``new`` and ``cancel``: an amendment is a cancel/replace of the
venue leg (the order keeps its ``client_order_id`` and cumulative quantity).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec
from msgspec import UNSET

from contracts.codec import encode
from contracts.events import Bar, Event, ExecutionReport, OrderCommand
from contracts.keys import BookId, InstrumentId, KeyTable
from contracts.subjects import subject_for
from contracts.system_events import DeadLetter
from services.execution.atr import atr_value
from services.execution.oco import same_bar_oco_fills
from services.execution.order_state import DUST, OmsState, Order, Position
from services.execution.orders import WORKING, allowed
from services.execution.orders_config import OrdersConfig


class Venue(Protocol):
    """What the order manager asks of the venue behind it: a pure decider of orders,
    cancels and bars, whose state rides inside the order manager's snapshot."""

    def decide(self, event: Event, now: int) -> Sequence[Event]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class OrderLifecycle:
    """Orders and their venue legs; the order manager builds on it."""

    def __init__(self, venue: Venue, config: OrdersConfig, worker: str) -> None:
        self.venue = venue
        self.config = config
        self.state = OmsState()
        self._worker = worker
        self._atr_n = config.atr_period
        self._clock = 0  # time of the order manager's own actions in this call
        self._why = ""  # reason for the report of the venue leg being placed
        self._external = False  # a cancel that came from a command (not from the OMS)
        self._touched: dict[BookId, None] = {}  # books whose groups need a sync
        # Venue legs the order manager canceled while the venue's reports of the same call
        # were still being handled: what the venue said about them afterwards is moot.
        self._killed: set[str] = set()
        self._keys = KeyTable()
        self._markets = self._keys.markets  # the bar path reads it inline
        self._market = self._keys.market

    # --- keys -----------------------------------------------------------------------------

    def _book(self, strategy: str, venue: str, symbol: str) -> BookId:
        return self._keys.book(strategy, self._keys.market(venue, symbol))

    def _market_atr(self, market: InstrumentId) -> float | None:
        """The order manager's ATR of a market; None until ``atr_period`` bars were seen."""
        return atr_value(self.state.atr, market, self._atr_n)

    # --- venue reports --------------------------------------------------------------------

    def _from_venue(
        self, reports: Sequence[Event], out: list[Event], bar: Bar | None = None
    ) -> None:
        st = self.state
        void: set[int] = set()
        if bar is not None and len(reports) > 1 and (st.groups or st.oco):
            void, losers = same_bar_oco_fills(st.orders, reports, bar)
            for rec in losers:
                self._kill_leg(rec, bar.close_time)
        killed = self._killed
        for report in reports:
            if not isinstance(report, ExecutionReport):
                out.append(report)
            elif (not void or id(report) not in void) and (
                not killed or report.venue_order_id not in killed
            ):
                self._apply(report, out)

    def _apply(self, r: ExecutionReport, out: list[Event]) -> None:
        st = self.state
        rec = st.orders.get(r.client_order_id)
        if rec is None:
            known = r.client_order_id in st.done
            out.append(
                self._refuse(r, f"report for {'a finished' if known else 'an unknown'} order")
            )
            return
        if r.ts > self._clock:
            self._clock = r.ts
        rec.in_flight = False
        status = r.status
        if status == "accepted":
            rec.venue_order_id = r.venue_order_id
            rec.leg_live = True
            if rec.status == "new":
                rec.status = "accepted"
                out.append(
                    self._report(rec, "accepted", r.ts, reason=self._why) if rec.managed else r
                )
                if st.groups:  # an entry's legs, or a leg sized while it was in flight
                    self._touched[rec.book] = None
            else:  # the new leg of an amendment
                out.append(self._report(rec, rec.status, r.ts, reason=self._why))
            return
        if status == "partially_filled" or status == "filled":
            if rec.status not in WORKING:
                out.append(self._refuse(r, f"illegal transition {rec.status} -> {status}"))
                return
            self._fill(rec, r, out)
            return
        if status == "canceled" or status == "rejected" or status == "expired":
            if not allowed(rec.status, status):
                out.append(self._refuse(r, f"illegal transition {rec.status} -> {status}"))
                return
            rec.leg_live = False
            report = r if not rec.managed else None
            self._finish(rec, status, r.ts, out, r.reason, report)
            return
        out.append(self._refuse(r, f"unknown status {status}"))

    def _fill(self, rec: Order, r: ExecutionReport, out: list[Event]) -> None:
        final = r.status == "filled"
        if final:
            rec.leg_live = False
        cmd = rec.cmd
        book = rec.book
        fill = r.fill_qty
        st = self.state
        group = st.groups.get(rec.group) if rec.group else None
        if rec.kind != "order":
            # A bracket leg is reduce-only: never more than the position it protects.
            pos = st.positions.get(book)
            held = 0.0 if pos is None else (pos.qty if cmd.side == "sell" else -pos.qty)
            if fill > held + DUST * rec.qty:
                self._reduce_only(rec, r, max(held, 0.0), out)
                return
        cum = rec.qty if final else rec.leg_base + r.cum_qty
        rec.cum_qty = cum
        rec.status = "filled" if final else "partially_filled"
        if rec.managed:
            report = msgspec.structs.replace(r, order_qty=rec.qty, cum_qty=cum)
            report = self._decorate(rec, report)
        else:
            report = r
        out.append(report)
        pos = st.positions.get(book)
        if pos is None:
            pos = st.positions[book] = Position(book)
        moved = _base_moved(r)
        pos.add_fill(cmd.side == "buy", moved, r.fill_price)
        if group is not None:
            if rec.kind == "order":
                group.open += moved
                group.cost += fill * r.fill_price
                if group.trail is not None and not group.trail.since:
                    group.trail.since = r.ts
                    group.trail.best = r.fill_price
            else:
                taken = min(moved, group.open)
                group.cost -= taken * group.avg
                group.open -= taken
                group.filled_leg = cmd.client_order_id
        if st.groups:
            self._touched[book] = None
        if final:
            self._close(rec)
        if rec.oco:
            self._oco_fill(rec, r.ts, out)

    def _reduce_only(self, rec: Order, r: ExecutionReport, held: float, out: list[Event]) -> None:
        """A leg's fill beyond the position: only ``held`` is applied, the leg is canceled."""
        if held > DUST * rec.qty:
            rec.cum_qty += held
            rec.status = "partially_filled"
            fee = r.fee * held / r.fill_qty if r.fill_qty else 0.0
            report = msgspec.structs.replace(
                r,
                status="partially_filled",
                order_qty=rec.qty,
                fill_qty=held,
                cum_qty=rec.cum_qty,
                fee=fee,
            )
            out.append(self._decorate(rec, report))
            book = rec.book
            pos = self.state.positions.get(book)
            if pos is None:
                pos = self.state.positions[book] = Position(book)
            pos.add_fill(rec.cmd.side == "buy", held, r.fill_price)
            group = self.state.groups.get(rec.group)
            if group is not None:
                taken = min(held, group.open)
                group.cost -= taken * group.avg
                group.open -= taken
        if r.status == "filled":
            rec.leg_live = False
        self._touched[rec.book] = None
        self._kill_leg(rec, r.ts)
        self._finish(rec, "canceled", r.ts, out, "reduce-only: the position is closed")

    def _oco_fill(self, rec: Order, ts: int, out: list[Event]) -> None:
        """A member of an explicit OCO group filled: the others are canceled."""
        st = self.state
        oid = rec.cmd.client_order_id
        members = st.oco.get(rec.oco) if rec.oco is not None else None
        for other_id in list(members or ()):
            other = st.orders.get(other_id)
            if other_id == oid or other is None or other.status not in WORKING:
                continue
            self._kill_leg(other, ts)
            self._finish(other, "canceled", ts, out, f"OCO: {oid} filled")

    # --- venue legs -----------------------------------------------------------------------

    def _send(self, leg: OrderCommand, out: list[Event], why: str) -> None:
        rec = self.state.orders.get(leg.client_order_id)
        if rec is not None:  # a paper venue answers at once; a gateway venue later
            rec.in_flight = True
        self._why = why
        try:
            self._from_venue(self.venue.decide(leg, self._clock), out)
        finally:
            self._why = ""

    def _replace(self, rec: Order, out: list[Event], why: str) -> None:
        """Amend through the venue: cancel the working leg, place one for the rest."""
        self._kill_leg(rec, self._clock)
        rec.leg_base = rec.cum_qty
        rec.managed = True
        leg = msgspec.structs.replace(
            rec.cmd,
            ts=self._clock,
            qty=rec.qty - rec.cum_qty,
            limit_price=rec.limit_price,
            stop_price=rec.stop_price,
        )
        self._send(leg, out, why)

    def _kill_leg(self, rec: Order, ts: int) -> None:
        """Cancel the venue leg; its report is the order manager's to give, not the venue's."""
        if not rec.leg_live:
            return
        cmd = rec.cmd
        cancel = OrderCommand(
            ts=ts,
            action="cancel",
            client_order_id=cmd.client_order_id,
            strategy=cmd.strategy,
            venue=cmd.venue,
            symbol=cmd.symbol,
            side=cmd.side,
            qty=cmd.qty,
        )
        self.venue.decide(cancel, ts)
        rec.leg_live = False
        self._killed.add(rec.venue_order_id)

    # --- the end of an order --------------------------------------------------------------

    def _finish(
        self,
        rec: Order,
        status: str,
        ts: int,
        out: list[Event],
        reason: str,
        report: ExecutionReport | None = None,
    ) -> None:
        if not allowed(rec.status, status):
            out.append(self._refuse(rec.cmd, f"illegal transition {rec.status} -> {status}"))
            return
        rec.status = status
        out.append(report if report is not None else self._report(rec, status, ts, reason=reason))
        if rec.kind != "order":
            group = self.state.groups.get(rec.group)
            if group is not None:
                oid = rec.cmd.client_order_id
                external = self._external or status != "canceled"
                if rec.kind == "take_profit" and group.tp_id == oid:
                    group.tp_id = ""
                    group.tp_off = group.tp_off or external
                elif rec.kind == "stop_loss" and group.sl_id == oid:
                    group.sl_id = ""
                    group.sl_off = group.sl_off or external
        if self.state.groups:
            self._touched[rec.book] = None
        self._close(rec)

    def _close(self, rec: Order) -> None:
        """A final order leaves the working set; its id is remembered (idempotency)."""
        st = self.state
        oid = rec.cmd.client_order_id
        st.orders.pop(oid, None)
        self._remember(oid, rec.status)
        if rec.oco is not None:
            members = st.oco.get(rec.oco)
            if members is not None:
                if oid in members:
                    members.remove(oid)
                if not members:
                    del st.oco[rec.oco]
        if rec.kind == "stop_loss" and rec.group:
            group = st.groups.get(rec.group)
            if group is not None and group.sl_id == oid:
                group.sl_id = ""
        elif rec.kind == "take_profit" and rec.group:
            group = st.groups.get(rec.group)
            if group is not None and group.tp_id == oid:
                group.tp_id = ""

    def _remember(self, oid: str, status: str) -> None:
        done = self.state.done
        done[oid] = status
        keep = self.config.keep_done
        while len(done) > keep:
            del done[next(iter(done))]

    # --- reports --------------------------------------------------------------------------

    def _report(self, rec: Order, status: str, ts: int, reason: str = "") -> ExecutionReport:
        cmd = rec.cmd
        report = ExecutionReport(
            ts=ts,
            status=status,  # type: ignore[arg-type]
            client_order_id=cmd.client_order_id,
            strategy=cmd.strategy,
            venue=cmd.venue,
            symbol=cmd.symbol,
            side=cmd.side,
            order_qty=rec.qty,
            venue_order_id=rec.venue_order_id,
            cum_qty=rec.cum_qty,
            model_tag=cmd.model_tag,
            reason=reason,
        )
        return self._decorate(rec, report)

    def _decorate(self, rec: Order, report: ExecutionReport) -> ExecutionReport:
        """A report the order manager builds names the prices working and the bracket."""
        return msgspec.structs.replace(
            report,
            parent_id=rec.group if rec.kind != "order" and rec.group else UNSET,
            stop_price=UNSET if rec.stop_price is None else rec.stop_price,
            limit_price=UNSET if rec.limit_price is None else rec.limit_price,
        )

    def _refuse(self, event: Event, reason: str) -> DeadLetter:
        """An illegal command or venue report: refused, kept as a dead letter."""
        return DeadLetter(
            ts=event.ts,
            worker=self._worker,
            subject=subject_for(event),
            reason=f"order manager: {reason}",
            payload=encode(event),
        )


def _base_moved(r: ExecutionReport) -> float:
    """How much of the base asset a fill moved: a spot venue that takes its fee in the base
    (Binance, Bybit on a buy) leaves ``fill_qty - fee`` in the account, and the legs that
    protect it must not ask for more than is there."""
    fee, currency = r.fee, r.fee_currency
    if not fee or not currency or "/" not in r.symbol or ":" in r.symbol:
        return r.fill_qty
    if currency != r.symbol.split("/", 1)[0]:
        return r.fill_qty
    return r.fill_qty - fee if r.side == "buy" else r.fill_qty + fee


def rejected(cmd: OrderCommand, now: int, reason: str) -> ExecutionReport:
    """A command refused before any venue leg exists (the order manager's own check, or a
    cancel of nothing at a gateway venue)."""
    return ExecutionReport(
        ts=now,
        status="rejected",
        client_order_id=cmd.client_order_id,
        strategy=cmd.strategy,
        venue=cmd.venue,
        symbol=cmd.symbol,
        side=cmd.side,
        order_qty=cmd.qty,
        model_tag=cmd.model_tag,
        reason=reason,
    )
