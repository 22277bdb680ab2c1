"""Faults a test can inflict on the TWS fake, each one as the real gateway shows it.

- ``drop()``: every socket closes at once (ib_async sees ``disconnectedEvent``);
- ``restart(down_s)``: the nightly restart: sockets close, the port refuses connections for
  ``down_s`` exchange seconds, then listens again with orders, positions and executions kept;
- ``lose_link()`` / ``restore_link(data_lost)``: error 1100, then 1101 (market data
  subscriptions lost, to be re-requested) or 1102 (kept); in between no data and no order
  messages reach clients, orders placed are held until the link returns, and fills still
  happen (only ``reqExecutions`` shows them afterwards);
- ``fill_away(client_id, order_id, qty, price)``: an execution that clients do not hear of;
- ``pace_next_historical()``: the next historical request gets error 162;
- ``reject_next_order(text)``: the next new order gets error 201 (IB's margin text by default);
- ``hold_client_id(client_id)``: that id stays "in use" (error 326) until ``release_client_id``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.fakes.tws import messages as m
from tests.fakes.tws.orders import REJECT_TEXT, Execution

if TYPE_CHECKING:
    from tests.fakes.tws.server import TwsFake

LOST = "Connectivity between IB and Trader Workstation has been lost."
RESTORED_LOST = "Connectivity between IB and Trader Workstation has been restored - data lost."
RESTORED_KEPT = (
    "Connectivity between IB and Trader Workstation has been restored - data maintained."
)
PACING = "Historical Market Data Service error message:Historical data request pacing violation"
IN_USE = "Unable to connect as the client id is already in use. Retry with a unique client id."


class Faults:
    def __init__(self, fake: TwsFake) -> None:
        self.fake = fake
        self.pace_next = False
        self.held_ids: set[int] = set()
        self.linked = True

    def drop(self) -> None:
        for session in list(self.fake.sessions.values()):
            session.close()

    async def restart(self, down_s: float) -> None:
        await self.fake.close_listener()
        self.drop()
        await self.fake.clock.sleep(down_s)
        await self.fake.listen()

    def lose_link(self) -> None:
        self.linked = False
        self.fake.broadcast(m.error(-1, 1100, LOST))

    def restore_link(self, data_lost: bool) -> None:
        self.linked = True
        if data_lost:
            for session in self.fake.sessions.values():
                session.stop_streams()
        self.fake.broadcast(
            m.error(-1, 1101 if data_lost else 1102, RESTORED_LOST if data_lost else RESTORED_KEPT)
        )
        self.fake.release_held_orders()

    def fill_away(
        self, client_id: int, order_id: int, qty: float | None = None, price: float | None = None
    ) -> Execution:
        """Execute (part of) an order without telling anyone: for a client that is away."""
        order = self.fake.broker.orders[(client_id, order_id)]
        now = self.fake.clock.now_ns()
        was = self.linked
        self.linked = False
        try:
            return self.fake.broker.execute(
                order,
                order.remaining if qty is None else qty,
                self.fake.market.price(order.listing, now) if price is None else price,
                now,
            )
        finally:
            self.linked = was

    def pace_next_historical(self) -> None:
        self.pace_next = True

    def reject_next_order(self, text: str | None = None) -> None:
        self.fake.broker.reject_next = text or REJECT_TEXT.format(equity=1000.0, margin=5000.0)

    def hold_client_id(self, client_id: int) -> None:
        self.held_ids.add(client_id)

    def release_client_id(self, client_id: int) -> None:
        self.held_ids.discard(client_id)
