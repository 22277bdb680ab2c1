"""The fake broker: orders matched against the price path, executions, commissions, positions.

State outlives connections and restarts, as IB's does. Orders fill at the current price once
marketable (limit at or through, stop triggered), at most ``max_fill`` per step, so a test
sees partial fills; ``transmit=False`` orders wait for the transmitting child, bracket
children wait for their parent and cancel each other, OCA groups cancel or reduce their
siblings by ``ocaType``. Commissions follow IBKR Pro fixed rates, charged per order (the
minimum once). Nothing here does I/O: what the clients must hear goes to a ``Sink``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from tests.fakes.tws.contracts import Listing

DONE = frozenset({"Filled", "Cancelled", "Inactive"})
REJECT_TEXT = (
    "Order rejected - reason:YOUR ORDER IS NOT ACCEPTED. IN ORDER TO OBTAIN THE DESIRED "
    "POSITION YOUR EQUITY WITH LOAN VALUE [{equity:.2f} USD] MUST EXCEED THE INITIAL MARGIN "
    "[{margin:.2f} USD]"
)


class Ticket(msgspec.Struct, frozen=True):
    """An order as the client placed it (the fields of ``placeOrder`` the fake uses)."""

    order_id: int
    client_id: int
    conid: int
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None = None
    aux_price: float | None = None
    tif: str = "DAY"
    oca_group: str = ""
    oca_type: int = 0
    account: str = ""
    order_ref: str = ""
    transmit: bool = True
    parent_id: int = 0
    outside_rth: bool = False


class Execution(msgspec.Struct, frozen=True):
    exec_id: str
    perm_id: int
    order_id: int
    client_id: int
    conid: int
    account: str
    side: str
    shares: float
    price: float
    time_ns: int
    cum_qty: float
    avg_price: float
    order_ref: str
    exchange: str
    liquidity: int
    commission: float
    currency: str
    realized_pnl: float | None


class Working:
    """One order's live state."""

    def __init__(self, ticket: Ticket, listing: Listing, perm_id: int, placed_ns: int) -> None:
        self.ticket = ticket
        self.listing = listing
        self.perm_id = perm_id
        self.placed_ns = placed_ns
        self.status = "PendingSubmit"
        self.filled = 0.0
        self.avg_price = 0.0
        self.last_price = 0.0
        self.notional = 0.0
        self.commission = 0.0
        self.triggered = False
        self.done_ns = 0
        self.done_text = ""

    @property
    def remaining(self) -> float:
        return max(0.0, self.ticket.quantity - self.filled)

    @property
    def key(self) -> tuple[int, int]:
        return self.ticket.client_id, self.ticket.order_id


class Position:
    def __init__(self, listing: Listing) -> None:
        self.listing = listing
        self.qty = 0.0
        self.avg_cost = 0.0  # IB's: commissions included
        self.avg_price = 0.0  # the fills' own average, which a future's cash settles on
        self.realized = 0.0


class Sink(Protocol):
    def order_changed(self, order: Working) -> None: ...

    def executed(self, order: Working, execution: Execution) -> None: ...

    def order_error(self, order: Ticket, code: int, text: str) -> None: ...

    def position_changed(self, position: Position) -> None: ...


def commission_for(listing: Listing, qty: float, notional: float) -> float:
    """IBKR Pro fixed: stocks 0.005/share (min 1, max 1% of value); ES 2.25 a contract
    with fees; IDEALPRO 0.2 bp of value (min 2)."""
    if qty <= 0:
        return 0.0
    if listing.secType == "STK":
        return round(min(max(1.0, 0.005 * qty), 0.01 * notional), 4)
    if listing.secType in ("FUT", "CONTFUT"):
        return round(2.25 * qty, 4)
    return round(max(2.0, 0.00002 * notional), 4)


class Broker:
    """The account: cash in USD, positions, orders and every execution (kept for
    ``reqExecutions``); ``step`` matches working orders against ``price_of``."""

    def __init__(self, account: str, sink: Sink, cash: float = 1_000_000.0) -> None:
        self.account = account
        self.sink = sink
        self.cash = cash
        self.positions: dict[int, Position] = {}
        self.orders: dict[tuple[int, int], Working] = {}
        self.executions: list[Execution] = []
        self.used_ids: dict[int, int] = {}
        self.max_fill: float | None = None
        self.market_open: Callable[[Listing, int], bool] = lambda listing, now_ns: True
        self.reject_next: str | None = None
        self._perm = 1_837_000_000
        self._exec = 0

    # -- placing and cancelling ---------------------------------------------------------

    def place(self, ticket: Ticket, listing: Listing, now_ns: int, price: float) -> None:
        known = self.orders.get((ticket.client_id, ticket.order_id))
        if known is not None:
            self._modify(known, ticket, now_ns, price)
            return
        problem = self._invalid(ticket, listing, price)
        if problem is None and ticket.order_id <= self.used_ids.get(ticket.client_id, 0):
            problem = (103, "Duplicate order id")
        if problem is not None:
            self.sink.order_error(ticket, *problem)
            return
        self.used_ids[ticket.client_id] = ticket.order_id
        self._perm += 1
        order = Working(ticket, listing, self._perm, now_ns)
        self.orders[order.key] = order
        if self.reject_next is not None or (text := self._margin_text(ticket, listing, price)):
            text = self.reject_next or text
            self.reject_next = None
            self._finish(order, "Inactive", now_ns, text)
            self.sink.order_error(ticket, 201, text)
            return
        order.status = "Held"
        if ticket.transmit:
            self._transmit(order, now_ns, price)

    def _transmit(self, order: Working, now_ns: int, price: float) -> None:
        """Send an order and the held orders of its family (parent and siblings)."""
        t = order.ticket
        family = [
            o
            for o in self.orders.values()
            if o is not order
            and o.status == "Held"
            and o.ticket.client_id == t.client_id
            and t.parent_id
            and t.parent_id in (o.ticket.order_id, o.ticket.parent_id)
        ] + [order]
        for member in family:
            parent = self._parent(member)
            member.status = "PreSubmitted" if parent and parent.status != "Filled" else "Submitted"
            self.sink.order_changed(member)
        for member in family:
            self._match(member, now_ns, price)

    def _invalid(self, t: Ticket, listing: Listing, price: float) -> tuple[int, str] | None:
        if t.quantity <= 0:
            return 434, "The order size cannot be zero."
        if t.order_type not in ("MKT", "LMT", "STP", "STP LMT"):
            return (
                387,
                f"Unsupported order type for this exchange and security type: {t.order_type}",
            )
        needs_lmt = t.order_type in ("LMT", "STP LMT")
        needs_aux = t.order_type in ("STP", "STP LMT")
        if (needs_lmt and t.lmt_price is None) or (needs_aux and t.aux_price is None):
            return 321, "Error validating request.-'bO' : cause - Missing order price"
        for value in (t.lmt_price if needs_lmt else None, t.aux_price if needs_aux else None):
            if (
                value is not None
                and abs(value / listing.minTick - round(value / listing.minTick)) > 1e-6
            ):
                return (
                    110,
                    "The price does not conform to the minimum price variation for this contract.",
                )
        return None

    def _margin_text(self, t: Ticket, listing: Listing, price: float) -> str:
        held = self.positions.get(listing.conId)
        sign = 1 if t.action == "BUY" else -1
        if held is not None and held.qty * sign < 0 and abs(held.qty) >= t.quantity:
            return ""
        margin = self.margin(listing, t.quantity, price)
        equity = self.net_liquidation(lambda _: price) - self.margin_in_use(lambda _: price)
        return REJECT_TEXT.format(equity=equity, margin=margin) if margin > equity else ""

    @staticmethod
    def margin(listing: Listing, qty: float, price: float) -> float:
        if listing.margin_per_unit:
            return listing.margin_per_unit * qty
        return listing.margin_rate * qty * price * listing.factor

    def margin_in_use(self, price_of: Callable[[Listing], float]) -> float:
        return sum(
            self.margin(p.listing, abs(p.qty), price_of(p.listing)) for p in self.positions.values()
        )

    def net_liquidation(self, price_of: Callable[[Listing], float]) -> float:
        total = self.cash
        for p in self.positions.values():
            if p.listing.secType in ("FUT", "CONTFUT"):
                total += (price_of(p.listing) * p.listing.factor - p.avg_cost) * p.qty
            else:
                total += price_of(p.listing) * p.qty * p.listing.factor
        return total

    def _modify(self, order: Working, ticket: Ticket, now_ns: int, price: float) -> None:
        if order.status == "Filled":
            text = f"Can't modify a filled order. Order id {ticket.order_id}"
            self.sink.order_error(ticket, 104, text)
            return
        if order.status in DONE:
            self.sink.order_error(ticket, 103, "Duplicate order id")
            return
        problem = self._invalid(ticket, order.listing, price)
        if problem is None and ticket.quantity < order.filled:
            problem = (461, "Order quantity is less than the filled quantity.")
        if problem is not None:
            self.sink.order_error(ticket, *problem)
            return
        order.ticket = msgspec.structs.replace(ticket, parent_id=order.ticket.parent_id)
        if order.status == "Held":
            if ticket.transmit:
                self._transmit(order, now_ns, price)
            return
        self.sink.order_changed(order)
        self._match(order, now_ns, price)

    def cancel(self, client_id: int, order_id: int, now_ns: int) -> tuple[int, str] | None:
        """Cancel one order (and its children); the error IB answers when it cannot."""
        order = self.orders.get((client_id, order_id))
        if order is None:
            return 10147, f"OrderId {order_id} that needs to be cancelled is not found."
        if order.status in DONE:
            return 10148, (
                f"OrderId {order_id} that needs to be cancelled cannot be cancelled, "
                f"state: {order.status}."
            )
        for child in self._children(order):
            self._cancel(child, now_ns)
        self._cancel(order, now_ns)
        return None

    def cancel_all(self, now_ns: int) -> None:
        for order in list(self.orders.values()):
            if order.status not in DONE:
                self._cancel(order, now_ns)

    def _cancel(self, order: Working, now_ns: int) -> None:
        if order.status in DONE:
            return
        self._finish(order, "Cancelled", now_ns, "Order Canceled - reason:")
        self.sink.order_changed(order)
        self.sink.order_error(order.ticket, 202, "Order Canceled - reason:")

    # -- matching ------------------------------------------------------------------------

    def step(self, now_ns: int, price_of: Callable[[Listing], float]) -> None:
        """Match every working order at the current price."""
        for order in list(self.orders.values()):
            if order.status == "Submitted":
                self._match(order, now_ns, price_of(order.listing))

    def _match(self, order: Working, now_ns: int, price: float) -> None:
        if order.status != "Submitted" or order.remaining <= 0:
            return
        if not self.market_open(order.listing, now_ns):
            return
        t = order.ticket
        buy = t.action == "BUY"
        if t.order_type in ("STP", "STP LMT") and not order.triggered:
            assert t.aux_price is not None
            if not (price >= t.aux_price if buy else price <= t.aux_price):
                return
            order.triggered = True
        if t.order_type in ("LMT", "STP LMT"):
            assert t.lmt_price is not None
            if not (price <= t.lmt_price if buy else price >= t.lmt_price):
                return
        qty = order.remaining if self.max_fill is None else min(order.remaining, self.max_fill)
        resting = t.order_type == "LMT" and now_ns > order.placed_ns
        self.execute(order, qty, price, now_ns, liquidity=1 if resting else 2)

    def execute(
        self, order: Working, qty: float, price: float, now_ns: int, liquidity: int = 2
    ) -> Execution:
        """One fill of ``qty`` at ``price``, whatever the market says (tests call it to make
        a fill happen, e.g. while the client is away)."""
        listing, t = order.listing, order.ticket
        qty = min(qty, order.remaining)
        before = order.commission
        order.notional += qty * price * listing.factor
        order.filled += qty
        order.avg_price = order.notional / (order.filled * listing.factor)
        order.last_price = price
        order.commission = commission_for(listing, order.filled, order.notional)
        fee = round(order.commission - before, 4)
        realized = self._book(listing, qty if t.action == "BUY" else -qty, price, fee)
        self._exec += 1
        execution = Execution(
            exec_id=f"0000e1a7.{0x65F0_0000 + self._exec:08x}.01.01",
            perm_id=order.perm_id,
            order_id=t.order_id,
            client_id=t.client_id,
            conid=listing.conId,
            account=self.account,
            side="BOT" if t.action == "BUY" else "SLD",
            shares=qty,
            price=price,
            time_ns=now_ns,
            cum_qty=order.filled,
            avg_price=order.avg_price,
            order_ref=t.order_ref,
            exchange=venue_of(listing),
            liquidity=liquidity,
            commission=fee,
            currency=listing.currency,
            realized_pnl=realized,
        )
        self.executions.append(execution)
        if order.remaining <= 0:
            self._finish(order, "Filled", now_ns, "Filled")
        self.sink.executed(order, execution)
        self.sink.position_changed(self.positions[listing.conId])
        self._after_fill(order, qty, now_ns)
        return execution

    def _book(self, listing: Listing, signed: float, price: float, fee: float) -> float | None:
        """Apply a fill to the position and cash; the realized P&L if it reduced one."""
        pos = self.positions.setdefault(listing.conId, Position(listing))
        factor = listing.factor
        if listing.secType not in ("FUT", "CONTFUT"):
            self.cash -= signed * price * factor
        self.cash -= fee
        realized: float | None = None
        if pos.qty and (pos.qty > 0) != (signed > 0):
            closing = min(abs(signed), abs(pos.qty))
            direction = 1 if pos.qty > 0 else -1
            realized = (price * factor - pos.avg_cost) * closing * direction - fee
            pos.realized += realized
            if listing.secType in ("FUT", "CONTFUT"):  # the opening fee was paid then
                self.cash += (price * factor - pos.avg_price) * closing * direction
            pos.qty += closing * (1 if signed > 0 else -1)
            signed -= closing * (1 if signed > 0 else -1)
            if pos.qty == 0:
                pos.avg_cost = pos.avg_price = 0.0
            fee = 0.0
        if signed:
            held, added = abs(pos.qty), abs(signed)
            pos.avg_cost = (held * pos.avg_cost + added * price * factor + fee) / (held + added)
            pos.avg_price = (held * pos.avg_price + added * price * factor) / (held + added)
            pos.qty += signed
        return None if realized is None else round(realized, 2)

    def _after_fill(self, order: Working, qty: float, now_ns: int) -> None:
        for child in self._children(order):
            if order.status == "Filled" and child.status == "PreSubmitted":
                child.status = "Submitted"
                self.sink.order_changed(child)
        for other in self._siblings(order):
            kind = order.ticket.oca_type or 3
            if kind == 1 or order.status == "Filled":
                self._cancel(other, now_ns)
                continue
            other.ticket = msgspec.structs.replace(
                other.ticket, quantity=max(other.filled, other.ticket.quantity - qty)
            )
            if other.remaining <= 0:
                self._cancel(other, now_ns)
            else:
                self.sink.order_changed(other)

    def _parent(self, order: Working) -> Working | None:
        if not order.ticket.parent_id:
            return None
        return self.orders.get((order.ticket.client_id, order.ticket.parent_id))

    def _children(self, order: Working) -> list[Working]:
        return [
            o
            for o in self.orders.values()
            if o.ticket.parent_id == order.ticket.order_id
            and o.ticket.client_id == order.ticket.client_id
            and o.status not in DONE
        ]

    def _siblings(self, order: Working) -> list[Working]:
        t = order.ticket
        out = []
        for o in self.orders.values():
            if o is order or o.status in DONE or o.ticket.client_id != t.client_id:
                continue
            same_oca = bool(t.oca_group) and o.ticket.oca_group == t.oca_group
            same_bracket = bool(t.parent_id) and o.ticket.parent_id == t.parent_id
            if same_oca or same_bracket:
                out.append(o)
        return out

    def _finish(self, order: Working, status: str, now_ns: int, text: str) -> None:
        order.status = status
        order.done_ns = now_ns
        order.done_text = text

    # -- queries ---------------------------------------------------------------------------

    def open_orders(self, client_id: int | None) -> list[Working]:
        """Working orders of one client (all clients for None), oldest first."""
        return [
            o
            for o in self.orders.values()
            if o.status not in DONE
            and o.status != "Held"
            and (client_id is None or o.ticket.client_id == client_id)
        ]

    def completed(self) -> list[Working]:
        return sorted(
            (o for o in self.orders.values() if o.status in DONE), key=lambda o: o.done_ns
        )


def venue_of(listing: Listing) -> str:
    """The exchange an execution reports (SMART routes to the primary listing here)."""
    if listing.secType == "STK":
        return "ISLAND" if listing.primaryExchange == "NASDAQ" else listing.primaryExchange
    return listing.exchange
