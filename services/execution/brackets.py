"""Brackets and protective stops: the legs that protect a position, sized to it.

A bracket entry's fills open its group; the group keeps a take-profit limit and a stop (an
OCO pair, reduce-only) working for the quantity it protects, grown by further entry fills,
shrunk by each other's fills and by fills from outside that reduce the position, canceled
when the position they protect is gone. The stop validator's protect groups use the same
legs.
"""

from __future__ import annotations

from contracts.events import Event, OrderCommand
from contracts.keys import BookId
from services.execution.lifecycle import OrderLifecycle
from services.execution.order_state import DUST, Group, LegKind, Order, Trail, number_text
from services.execution.orders import WORKING
from services.execution.trailing import trail_stop


def bracket_group(cmd: OrderCommand, book: BookId, trail: Trail | None) -> Group:
    """The group of a bracket entry: it protects what the entry fills."""
    if trail is not None:
        trail.sell = cmd.side == "buy"  # the protective leg closes the entry
    oid = cmd.client_order_id
    return Group(
        oid,
        book,
        cmd.side == "buy",
        model_tag=cmd.model_tag,
        entry=oid,
        take_profit=cmd.take_profit or 0.0,
        stop_loss=cmd.stop_loss or 0.0,
        trail=trail,
    )


class Brackets(OrderLifecycle):
    """Order lifecycles plus the legs of the groups that protect positions."""

    def _sync(self, out: list[Event]) -> None:
        """Size every touched book's bracket legs to what they protect."""
        touched = self._touched
        while touched:
            book = next(iter(touched))
            del touched[book]
            if self.state.groups:
                self._sync_book(book, out)

    def _sync_book(self, book: BookId, out: list[Event]) -> None:
        st = self.state
        groups = [g for g in st.groups.values() if g.book == book]
        if not groups:
            return
        pos = st.positions.get(book)
        qty = pos.qty if pos is not None else 0.0
        for group in groups:
            if group.open and (not qty or (qty > 0) != group.long):
                group.open = group.cost = 0.0
                group.filled_leg = ""
        # Fills from outside the groups that reduce the position reduce the newest first.
        excess = sum(g.open for g in groups) - abs(qty)
        for group in reversed(groups):
            if excess <= DUST * abs(qty):
                break
            if group.open:
                cut = min(group.open, excess)
                group.cost -= cut * group.avg
                group.open -= cut
                group.filled_leg = ""
                excess -= cut
        # Working market orders that close the position will fill first: cover the rest.
        closing = 0.0
        if qty:
            closing_side = "sell" if qty > 0 else "buy"
            for rec in st.orders.values():
                cmd = rec.cmd
                if (
                    rec.kind == "order"
                    and cmd.order_type == "market"
                    and cmd.side == closing_side
                    and rec.book == book
                ):
                    closing += rec.qty - rec.cum_qty
        cover = max(0.0, abs(qty) - closing)
        # Every leg of one sync is placed at the same time, even when one fills as it is
        # placed (its venue already holds later quotes or bars): the next sync acts on that.
        clock = latest = self._clock
        for group in groups:
            share = min(group.open, cover)
            cover -= share
            if share <= DUST * max(group.open, 1e-300):
                share = 0.0
            for kind in ("take_profit", "stop_loss"):
                self._clock = clock
                self._leg(group, kind, share, out)
                latest = max(latest, self._clock)
            entry = st.orders.get(group.entry) if group.entry else None
            # A leg can fill as it is placed (its venue already holds the quotes or bars
            # after it): the group stays until the other leg is canceled, on the next sync.
            if (
                group.open <= DUST * max(abs(qty), 1e-300)
                and entry is None
                and not group.tp_id
                and not group.sl_id
            ):
                del st.groups[group.id]
        self._clock = latest

    def _leg(self, group: Group, kind: LegKind, qty: float, out: list[Event]) -> None:
        """Place, resize, re-price or cancel one leg of a group to protect ``qty``."""
        st = self.state
        tp = kind == "take_profit"
        price = group.take_profit if tp else group.stop_loss
        if not price and not tp and group.trail is not None and group.open and group.trail.since:
            price = self._first_trail_stop(group)
            group.stop_loss = price
        oid = group.tp_id if tp else group.sl_id
        rec = st.orders.get(oid) if oid else None
        if rec is not None and rec.in_flight:
            return  # sized once its venue answers (the answer syncs the book again)
        if rec is not None and rec.status not in WORKING:
            rec = None
        if not qty or not price:
            if rec is not None:
                self._kill_leg(rec, self._clock)
                if group.open:
                    reason = "reduce-only: working market orders close the position"
                elif group.filled_leg:
                    reason = f"OCO: {group.filled_leg} filled"
                else:
                    reason = "reduce-only: the position is closed"
                self._finish(rec, "canceled", self._clock, out, reason)
            return
        if rec is None:
            if group.tp_off if tp else group.sl_off:
                return
            self._place_leg(group, kind, qty, price, out)
            return
        target = rec.cum_qty + qty
        current = rec.limit_price if tp else rec.stop_price
        if abs(target - rec.qty) <= DUST * target and current == price and rec.leg_live:
            return
        changes = []
        if abs(target - rec.qty) > DUST * target:
            changes.append(f"qty {number_text(rec.qty)} -> {number_text(target)}")
        if current != price and current is not None:
            what = "limit" if tp else "stop"
            changes.append(f"{what} {number_text(current)} -> {number_text(price)}")
        rec.qty = target
        if tp:
            rec.limit_price = price
        else:
            rec.stop_price = price
        self._replace(rec, out, "amended: " + (", ".join(changes) or "re-placed"))

    def _first_trail_stop(self, group: Group) -> float:
        trail = group.trail
        assert trail is not None
        stop = trail_stop(trail, self._market_atr(group.book.instrument))
        return stop if stop is not None and stop > 0 else 0.0

    def _place_leg(
        self, group: Group, kind: LegKind, qty: float, price: float, out: list[Event]
    ) -> None:
        st = self.state
        tp = kind == "take_profit"
        while True:  # the next id of this leg no order has used
            if tp:
                group.tp_n += 1
                n = group.tp_n
            else:
                group.sl_n += 1
                n = group.sl_n
            oid = f"{group.id}.{'tp' if tp else 'sl'}{n if n > 1 else ''}"
            if oid not in st.orders and oid not in st.done:
                break
        book = group.book
        cmd = OrderCommand(
            ts=self._clock,
            action="new",
            client_order_id=oid,
            strategy=book.strategy,
            venue=book.venue,
            symbol=book.symbol,
            side="sell" if group.long else "buy",
            qty=qty,
            order_type="limit" if tp else "stop",
            limit_price=price if tp else None,
            stop_price=None if tp else price,
            model_tag=group.model_tag,
        )
        rec = Order(
            cmd,
            book,
            qty,
            stop_price=cmd.stop_price,
            limit_price=cmd.limit_price,
            kind=kind,
            group=group.id,
            managed=True,
        )
        st.orders[oid] = rec
        if tp:
            group.tp_id = oid
        else:
            group.sl_id = oid
            if group.trail is not None:
                st.trailing.append(oid)
        what = "stop validator: protective stop" if group.protect else f"bracket {kind}"
        self._send(cmd, out, what)
