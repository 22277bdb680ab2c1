"""What a test makes the fakes' account do wrong (``account.faults``); the spec's list, the
effects documented in ``matching``'s docstring."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.fakes.ledger import Balance, PerpPosition
from tests.fakes.order_rules import touch
from tests.fakes.records import (
    TRIGGERED_TYPES,
    FakeFill,
    FakeOrder,
    OrderError,
    OrderType,
    Side,
)

if TYPE_CHECKING:
    from tests.fakes.matching import Account


class AccountFaults:
    """What a test makes the account do wrong; set at any time (see the spec's list)."""

    def __init__(self, account: Account) -> None:
        self._account = account
        self.fill_parts = 1
        self.ack_delay_s = 0.0
        self.hang_next = 0
        self.drop_next = 0
        self.hidden_s = 0.0
        self.silent_user_stream = False
        self.hold_user_stream = False
        """Private-stream updates are kept back (late frames) until ``release_user_stream``."""
        self.held: list[tuple[FakeOrder, FakeFill | None]] = []
        self.reject_next: list[str] = []
        """Codes the next ``place`` calls raise, whatever the order (a conditional one too)."""
        self.reject_next_conditional: list[str] = []
        """Codes the next CONDITIONAL (stop / take-profit) ``place`` calls raise; other orders
        pass untouched, so an entry fills and its protective stop is rejected."""
        self._external = 0

    def external(
        self,
        symbol: str,
        side: Side,
        type: OrderType,
        qty: float,
        price: float | None = None,
        stop_price: float | None = None,
    ) -> FakeOrder:
        """An order placed on the account by someone else (another tool, a person)."""
        self._external += 1
        return self._account.place(
            symbol,
            side,
            type,
            qty,
            price=price,
            stop_price=stop_price,
            client_id=f"external-{self._external}",
            external=True,
        )

    def fill_silently(self, order_id: int) -> FakeOrder:
        """Fill what is left of an open order without any private-stream frame."""
        self._account._mute += 1
        try:
            return self.fill_now(order_id)
        finally:
            self._account._mute -= 1

    def fill_now(self, order_id: int) -> FakeOrder:
        """Fill what is left of an open order now, as a market crossing it would: its
        private-stream frames go out (or are held, see ``hold_user_stream``)."""
        account = self._account
        order = account._by_id.get(order_id)
        if order is None or not order.is_open:
            raise OrderError("unknown_order", f"no open order {order_id}")
        order.triggered = order.type in TRIGGERED_TYPES
        tick = account.fake.snapshot(order.symbol)
        price = order.price if order.price is not None else touch(order, tick)
        account._fill(
            order, round(order.remaining, 12), price, order.price is not None, account._now()
        )
        return order

    def cancel_silently(self, order_id: int) -> FakeOrder:
        """The order is canceled (by someone else, or expired) without any private-stream
        frame."""
        account = self._account
        account._mute += 1
        try:
            return account.cancel(order_id=order_id)
        finally:
            account._mute -= 1

    def release_user_stream(self) -> None:
        """Send the private-stream updates held back, in order, and stop holding."""
        self.hold_user_stream = False
        held, self.held = self.held, []
        for order, fill in held:
            self._account._deliver(order, fill)

    def set_position(self, symbol: str, qty: float, entry_price: float | None = None) -> None:
        """The venue's position changes behind Keel's back."""
        account = self._account
        if entry_price is None:
            entry_price = account.fake.snapshot(symbol).trade.price
        account.positions[symbol] = PerpPosition(
            symbol, qty, entry_price, updated_ns=account._now()
        )
        account._remargin(account._spec(symbol))

    def set_balance(self, asset: str, free: float) -> None:
        """The venue's free balance of ``asset`` changes behind Keel's back."""
        balance = self._account.balances.setdefault(asset, Balance(0.0))
        balance.free = free

    def vanish(self, order_id: int) -> None:
        """The order disappears from the exchange (a stop that is simply gone)."""
        account = self._account
        order = account._by_id.pop(order_id, None)
        if order is None:
            raise OrderError("unknown_order", f"no order {order_id}")
        account._all.remove(order)
        book = account._books.pop(order_id, None)
        if book is not None:
            account._unlock(book)
        account._remargin(account._spec_any(order.symbol))
