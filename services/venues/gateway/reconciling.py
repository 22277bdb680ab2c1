"""Reconciliation's I/O, the halt and adoption for one gateway (the kill switch is the
order manager's: it knows which orders are entries and which protect, on every venue).

``run_once`` asks the exchange for its open orders (conditional/algo ones included), the
trades since each open leg began, positions (contracts) and balances; each part that fails
is marked incomplete and nothing is concluded from it. ``services/venues/reconcile.py``
(pure) compares that view with the venue journal; its findings are stored (discrepancies,
inferred fills under the trade's own id), missing stops are placed again, and a position or
balance beyond tolerance halts the venue until an operator adopts the venue's view.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from contracts.envelope import Envelope, content_id
from contracts.venue_events import Discrepancy, VenueAdoption, VenueOrder
from services.venues.ccxt_exchange import Redactor
from services.venues.gateway.answers import order_ids
from services.venues.gateway.ccxt_orders import OrderCalls, exchange_reason
from services.venues.reconcile import Tolerance, VenueView, reconcile

if TYPE_CHECKING:
    from services.venues.gateway.worker import Gateway

log = logging.getLogger("keel.gateway")
TRADES_MARGIN_MS = 60_000


class Reconciler:
    def __init__(self, gateway: Gateway, calls: OrderCalls, redactor: Redactor) -> None:
        self.gateway = gateway
        self.calls = calls
        self.redactor = redactor
        self.last_ns = 0
        self.runs = 0
        self.discrepancies = 0
        self._one = asyncio.Lock()
        """One run at a time: two runs that overlap (the periodic one and an adoption's) both
        took the venue's view as the adopted baseline, and the position counted twice."""

    def _reason(self, exc: BaseException) -> str:
        return exchange_reason(exc, self.redactor, self.calls.id)

    async def view(self) -> VenueView:
        """What the exchange says now; a part whose query failed is incomplete."""
        gateway = self.gateway
        journal = gateway.journal
        symbols = sorted({leg.order.symbol for leg in journal.legs()})
        orders: list[dict[str, Any]] | None = None
        orders_error = trades_error = positions_error = balances_error = ""
        ts = gateway.clock.now_ns()
        try:
            orders = await self.calls.open_orders(symbols)
        except Exception as exc:
            orders_error = self._reason(exc)
        trades: list[dict[str, Any]] | None = []
        open_since = [leg.order.ts for leg in journal.legs_open()]
        since_ms = min(open_since, default=self.last_ns or ts) // 1_000_000 - TRADES_MARGIN_MS
        for symbol in symbols:
            try:
                trades += await self.calls.trades(symbol, since_ms)  # type: ignore[operator]
            except Exception as exc:
                trades, trades_error = None, self._reason(exc)
                break
        for order in orders or ():
            leg = gateway.book.legs.get(str(order.get("clientOrderId") or ""))
            if leg is not None:
                gateway.book.link(leg, order_ids(order))
        await self._link_triggered(orders or ())
        if trades is not None:
            trades = [self._named(t) for t in trades]
        contracts = [s for s in symbols if self.calls.is_contract(s)]
        positions: dict[str, float] | None = {}
        if contracts:
            try:
                positions = await self._positions(contracts)
            except Exception as exc:
                positions, positions_error = None, self._reason(exc)
        balances: dict[str, float] | None = None
        try:
            balances = await self.calls.balances()
        except Exception as exc:
            balances_error = self._reason(exc)
        return VenueView.from_ccxt(
            ts=ts,
            orders=orders,
            orders_error=orders_error,
            order_symbols=symbols if self.calls.per_symbol else None,
            trades=trades,
            trades_error=trades_error,
            positions=positions,
            positions_error=positions_error,
            balances=balances,
            balances_error=balances_error,
        )

    async def _link_triggered(self, orders: Iterable[Mapping[str, Any]]) -> None:
        """Each open conditional leg the listing no longer shows, looked up by client id: a
        stop the market triggered while no gateway listened (Binance USDT-M's algo order)
        has trades that name only the order it became (``actualOrderId``), which the log
        does not hold until a fill of it is recorded. The exchange's answer links the two;
        a failed query links nothing (its trades stay unexplained: the venue halts)."""
        book = self.gateway.book
        listed = {str(o.get("clientOrderId") or "") for o in orders}
        for leg in book.open_legs():
            if leg.order.venue_client_id in listed or not self.calls.algo(leg.order):
                continue
            try:
                found = await self.calls.find(leg.order)
            except Exception as exc:
                log.warning("query %s failed: %s", leg.order.venue_client_id, self._reason(exc))
                continue
            if found is not None:
                book.link(leg, order_ids(found))

    async def _positions(self, contracts: list[str]) -> dict[str, float]:
        """Signed positions of ``contracts``; Bybit is asked one symbol at a time (ccxt
        refuses it a list of more than one, so two perpetuals failed the part for good)."""
        if self.calls.id != "bybit":
            return await self.calls.positions(contracts)
        found: dict[str, float] = {}
        for symbol in contracts:
            found.update(await self.calls.positions([symbol]))
        return found

    def _named(self, trade: dict[str, Any]) -> dict[str, Any]:
        """A trade with its leg's client id where the exchange gives none but Keel knows
        its order (a triggered algo order's trades name the order it became)."""
        if trade.get("clientOrderId"):
            return trade
        leg = self.gateway.book.of_venue_order(str(trade.get("order") or ""))
        return {**trade, "clientOrderId": leg.order.venue_client_id} if leg else trade

    async def run_once(self) -> None:
        """One reconciliation: its findings stored, acted on, and the venue's state said."""
        async with self._one:
            await self._run_once()

    async def _run_once(self) -> None:
        gateway = self.gateway
        view = await self.view()
        config = gateway.config
        tolerance = Tolerance(position=config.position_tolerance, balance=config.balance_tolerance)
        findings = reconcile(view, gateway.journal, tolerance)
        cause = Envelope.root(content_id("reconcile", gateway.venue.name, view.ts), view.ts)
        for answer in findings.answers:
            leg = gateway.book.legs.get(answer.venue_client_id)
            await gateway.record(answer, leg.envelope if leg else cause)
        for found in findings.discrepancies:
            await self._store(found, cause)
        for stop in findings.replace_stops:
            await self._place(stop, cause)
        for vcid in findings.queries:
            leg = gateway.book.legs.get(vcid)
            if leg is not None and gateway.book.handled(leg.envelope.event_id):
                await gateway.dealer.query(leg)
        for venue_order_id in findings.cancels:
            leg = gateway.book.of_venue_order(venue_order_id)
            if leg is not None:
                # A leg given up unanswered has no exchange id yet; the listing gave it one
                # (Bybit cancels by orderId or orderLinkId, never by ccxt's clientOrderId).
                leg.venue_order_id = leg.venue_order_id or venue_order_id
                await gateway.dealer.cancel(leg, cause)
        self.last_ns, self.runs = view.ts, self.runs + 1
        gateway.last_reconcile_ns = view.ts
        self.discrepancies = len(findings.discrepancies)
        if gateway.journal.halted and gateway.state != "halted":
            await gateway.status("halted", gateway.journal.halt_reason, self.discrepancies)
        elif not gateway.journal.halted and gateway.state == "halted":
            await gateway.status("running", "the operator adopted the venue's view")

    async def _store(self, found: Discrepancy, cause: Envelope) -> None:
        """Stored under an id made of everything it says (two parts of one view that failed
        are two facts, not one copy), so only a re-published copy is dropped."""
        gateway = self.gateway
        envelope = Envelope(
            content_id(
                "recon",
                found.venue,
                found.kind,
                found.action,
                found.detail,
                found.symbol,
                found.asset,
                found.venue_client_id,
                found.venue_order_id,
                found.trade_id,
                found.ts,
            ),
            cause.event_id,
            cause.correlation_id,
            found.ts,
        )
        await gateway.bus.retry(
            f"{gateway.name}: store a discrepancy",
            lambda: gateway.bus.publish(found, envelope, gateway.name),
        )
        gateway.journal.apply(found)

    async def _place(self, order: VenueOrder, cause: Envelope) -> None:
        """An order of the gateway's own (a missing stop placed again): on the log as a
        ``VenueOrder`` first, then sent through the order consumer like any other."""
        gateway = self.gateway
        envelope = Envelope(
            content_id("gateway-order", order.venue_client_id),
            cause.event_id,
            cause.correlation_id,
            order.ts,
        )
        await gateway.bus.retry(
            f"{gateway.name}: store an order",
            lambda: gateway.bus.publish(order, envelope, gateway.name),
        )

    async def loop(self) -> None:
        while True:
            await self.gateway.clock.sleep(self.gateway.config.reconcile_every_s)
            try:
                await self.run_once()
            except Exception as exc:
                log.warning("%s: reconciliation failed: %s", self.gateway.name, self._reason(exc))

    async def adopt(self, adoption: VenueAdoption) -> None:
        """The operator took the venue's view: the journal moves its baseline there at the
        next reconciliation (now), and the halt is lifted."""
        self.gateway.journal.apply(adoption)
        await self.run_once()
