"""``IbExchange``: the part of ccxt's unified async API the venue gateway uses, over ib_async.

The gateway (its Dealer, leg book, fate rule, journal, reconciliation and recorded-venue
replay) runs on IB unchanged: it calls ``create_order``, ``cancel_order``,
``edit_order``, ``fetch_open_orders``/``fetch_closed_orders``, ``fetch_my_trades``,
``fetch_positions``,
``fetch_balance``, ``watch_orders``/``watch_my_trades`` and reads ``markets`` and ``id`` as
on any ccxt exchange. Every query first requires a ready session (connected, synced, IB's
link up) and checks afterwards that the same session answered: a query across a drop or a
1100 raises ``NetworkError``, never answers empty (ib_async empties its lists on a
disconnect; an empty position list then does not mean flat).

A fill is handed over only with its commission report (the fee is IB's, never invented):
the private stream yields it when the report arrives, and a query leaves out an execution
whose report has not come yet (the next poll or reconciliation returns it whole).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import ccxt
from ib_async import Contract, ExecutionFilter, Fill, Trade
from ib_async.wrapper import RequestError

from eventstore.errors import KeelError
from services.runtime.clock import Clock
from services.venues.ib.connection import IbConnection, NotReady
from services.venues.ib.contracts import ContractError, front_month, ib_contract
from services.venues.ib.ib_errors import NOT_ENDING, not_ready, order_error, request_error
from services.venues.ib.ib_orders import (
    carries,
    has_report,
    ib_order,
    modified,
    order_dict,
    position_dict,
    rejection,
    rejection_of,
    trade_dict,
)
from services.venues.ib.settings import IbSettings
from services.venues.ib.specs import FutureSpec

T = TypeVar("T")
ANSWER_S = 10.0
"""Wall seconds an order or query waits for IB's answer before its outcome is unknown."""
REPORT_S = 1.0
"""Wall seconds a query waits for commission reports still on their way."""
Resync = Callable[[], Awaitable[None]]


class IbExchange:
    id = "ib"

    def __init__(self, settings: IbSettings, clock: Clock, connection: IbConnection) -> None:
        self.settings = settings
        self.clock = clock
        self.connection = connection
        self.ib = connection.ib
        self.specs = settings.contracts
        self.markets: dict[str, dict[str, Any]] = {}
        self._account_stale = False
        """IB lost data with its link (1101): the account values are asked again."""
        self.contracts: dict[str, Contract] = {}
        self.on_resync: list[Resync] = []
        """Called after a reconnect or a restored link: the gateway reconciles (executions
        missed while away, open orders, positions)."""
        self._query = asyncio.Lock()  # ib_async keys some requests by name: one at a time
        self._orders: list[dict[str, Any]] = []
        self._trades: list[dict[str, Any]] = []
        self._order_news = asyncio.Event()
        self._trade_news = asyncio.Event()
        self._status_news = asyncio.Event()
        self.ib.orderStatusEvent += self._on_status
        self.ib.commissionReportEvent += self._on_report
        self.ib.execDetailsEvent += self._on_execution
        self._live: set[str] = set()
        """Executions heard live (ib_async also reports the commissions of executions a
        query recovered: those are the query's, not the stream's)."""
        connection.on_connected.append(self._connected)
        connection.on_link.append(self._link)

    # -- connection ----------------------------------------------------------------------

    async def load_markets(self, reload: bool = False) -> dict[str, dict[str, Any]]:
        """Connect (the first time) and qualify every configured contract."""
        try:
            await self.connection.start(self.settings.connect_timeout_s)
        except KeelError as exc:
            if self.connection.state.value == "closed":
                raise ccxt.AuthenticationError(str(exc)) from None
            raise ccxt.NetworkError(str(exc)) from None
        if self.markets and not reload:
            return self.markets
        for spec in self.specs:
            contract = await self._qualify(spec)
            self.contracts[spec.name] = contract
            self.markets[spec.name] = {
                "id": str(contract.conId),
                "symbol": spec.name,
                "type": {"STK": "spot", "FUT": "future", "CASH": "spot"}[contract.secType],
                "contract": True,  # IB holds positions of each; no open order locks them
                "contractSize": float(contract.multiplier or 1.0),
                "base": contract.symbol,
                "quote": contract.currency,
                "settle": contract.currency if contract.secType == "FUT" else None,
                "info": {"conId": contract.conId, "localSymbol": contract.localSymbol},
            }
        return self.markets

    async def _qualify(self, spec: Any) -> Contract:
        wanted = ib_contract(spec)
        if isinstance(spec, FutureSpec) and spec.continuous:
            listed = await self._ask(lambda: self.ib.reqContractDetailsAsync(wanted))
            today = dt.datetime.fromtimestamp(self.clock.now_ns() / 1e9, dt.UTC).date()
            try:
                details = front_month(listed, today, spec.roll_days)
            except ContractError as exc:
                raise ccxt.BadSymbol(f"ib {spec.name}: {exc}") from None
            assert details.contract is not None
            return details.contract
        found = await self._ask(lambda: self.ib.qualifyContractsAsync(wanted))
        if not found or not isinstance(found[0], Contract):
            raise ccxt.BadSymbol(f"ib {spec.name}: IB does not know {wanted} (or not uniquely)")
        return found[0]

    async def close(self) -> None:
        self.ib.orderStatusEvent -= self._on_status
        self.ib.commissionReportEvent -= self._on_report
        self.ib.execDetailsEvent -= self._on_execution
        await self.connection.close()

    async def _connected(self, first: bool) -> None:
        if not first:
            await self._resync()

    async def _link(self, restored: bool, data_lost: bool) -> None:
        self._account_stale = self._account_stale or data_lost
        if restored:
            await self._resync()

    async def _resync(self) -> None:
        for hook in list(self.on_resync):
            await hook()

    async def _ask(self, request: Callable[[], Awaitable[T]]) -> T:
        """One query on a ready session, answered by that same session."""
        try:
            generation = self.connection.require_ready()
        except NotReady as exc:
            raise not_ready(str(exc)) from None
        async with self._query:
            try:
                async with asyncio.timeout(ANSWER_S):  # not wait_for: it can drop a cancel (3.11)
                    answer = await request()
            except RequestError as exc:
                raise request_error(exc.code, exc.message) from None
            except (ConnectionError, OSError) as exc:
                raise not_ready(str(exc) or type(exc).__name__) from None
            except TimeoutError:
                raise ccxt.RequestTimeout("ib: no answer in time") from None
        try:
            self.connection.check_same(generation)
        except NotReady as exc:
            raise not_ready(str(exc)) from None
        return answer

    # -- orders --------------------------------------------------------------------------

    def _contract(self, symbol: str) -> Contract:
        contract = self.contracts.get(symbol)
        if contract is None:
            raise ccxt.BadSymbol(f"ib: {symbol} is not a configured contract")
        return contract

    def _known(self, client_id: str) -> Trade | None:
        return next((t for t in self.ib.trades() if t.order.orderRef == client_id), None)

    async def create_order(
        self,
        symbol: str,
        type: str,
        side: str,
        amount: float,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        params = params or {}
        contract = self._contract(symbol)
        client_id = str(params.get("clientOrderId") or "")
        try:
            self.connection.require_ready()
        except NotReady as exc:
            raise not_ready(str(exc)) from None
        if client_id and self._known(client_id) is not None:
            raise ccxt.DuplicateOrderId(f"ib: an order with orderRef {client_id} exists")
        trigger = params.get("triggerPrice")
        order = ib_order(
            side,
            type,
            amount,
            price,
            float(trigger) if trigger is not None else None,
            str(params.get("timeInForce") or "GTC"),
            client_id,
            self.settings.account,
            str(params.get("ocaGroup") or ""),
        )
        try:
            trade = self.ib.placeOrder(contract, order)
        except ConnectionError as exc:
            raise not_ready(str(exc)) from None
        await self._answered(trade, lambda: trade.orderStatus.status != "PendingSubmit")
        answer = order_dict(trade, self.specs)
        if answer["status"] == "rejected":
            code, text = rejection(trade)
            raise order_error(code, text)
        return answer

    async def edit_order(
        self,
        id: str | None,
        symbol: str,
        type: str,
        side: str,
        amount: float | None = None,
        price: float | None = None,
        params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Modify an open order in place: ``placeOrder`` again with its own ``orderId`` and
        the new quantity, limit (``price``) and trigger (``triggerPrice``), so it keeps its
        orderId, permId, OCA group and place in IB's books. Waits for IB's answer: its new
        values (``openOrder``), or a refusal, raised with IB's code (104 filled, 461 below
        the filled quantity, 110/321 invalid...), after which the order is as it was."""
        params = params or {}
        client_id = str(params.get("clientOrderId") or "")
        contract = self._contract(symbol)
        try:
            self.connection.require_ready()
        except NotReady as exc:
            raise not_ready(str(exc)) from None
        trade = next(
            (
                t
                for t in self.ib.openTrades()
                if (client_id and t.order.orderRef == client_id)
                or (not client_id and id and str(t.order.permId) == id)
            ),
            None,
        )
        if trade is None:
            raise ccxt.OrderNotFound(f"ib: no open order {client_id or id} to modify")
        trigger = params.get("triggerPrice")
        wanted = modified(
            trade.order, amount, price, float(trigger) if trigger is not None else None
        )
        asked = len(trade.log)  # ib_async logs the modify itself first: IB's answers follow
        try:
            self.ib.placeOrder(contract, wanted)
        except ConnectionError as exc:
            raise not_ready(str(exc)) from None

        def refusal() -> tuple[int, str]:
            errors = [e for e in trade.log[asked + 1 :] if e.errorCode]
            return rejection_of(errors[-1]) if errors else (0, "")

        await self._answered(
            trade,
            lambda: bool(refusal()[0]) or trade.isDone() or carries(trade.order, wanted),
        )
        code, text = refusal()
        if code:
            raise order_error(code, text)
        return order_dict(trade, self.specs)

    def price_to_precision(self, symbol: str, price: float) -> str:
        """As given: a leg's price is on the contract's tick already (IB refuses others, 110),
        so ``OrderCalls.carries`` compares IB's values with the leg's exactly."""
        return repr(float(price))

    def amount_to_precision(self, symbol: str, amount: float) -> str:
        return repr(float(amount))

    async def _answered(self, trade: Trade, done: Callable[[], bool]) -> None:
        """Wait for IB to say something about ``trade``; a drop or silence is unknown."""
        generation = self.connection.generation
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ANSWER_S
        while not done():
            if self.connection.generation != generation or not self.connection.ready:
                raise not_ready("the session dropped before IB answered")
            if loop.time() > deadline:
                raise ccxt.RequestTimeout(f"ib: no answer for order {trade.order.orderRef}")
            self._status_news.clear()
            with contextlib.suppress(TimeoutError):  # woken by the next order status
                async with asyncio.timeout(0.05):
                    await self._status_news.wait()

    async def cancel_order(
        self, id: str | None, symbol: str | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        params = params or {}
        try:
            self.connection.require_ready()
        except NotReady as exc:
            raise not_ready(str(exc)) from None
        client_id = str(params.get("clientOrderId") or "")
        trade = next(
            (
                t
                for t in self.ib.openTrades()
                if (id and str(t.order.permId) == id)
                or (client_id and t.order.orderRef == client_id)
            ),
            None,
        )
        if trade is None:
            raise ccxt.OrderNotFound(f"ib: no open order {client_id or id} in this session")
        try:
            self.ib.cancelOrder(trade.order)
        except ConnectionError as exc:
            raise not_ready(str(exc)) from None
        await self._answered(trade, trade.isDone)
        code, text = rejection(trade)
        if code in NOT_ENDING:  # IB did not cancel it (filled meanwhile...): a query says
            raise order_error(code, text)
        return order_dict(trade, self.specs)  # canceled, or filled before the cancel came

    def _mine(self, trades: list[Trade], symbol: str | None) -> list[dict[str, Any]]:
        account = self.settings.account
        out = [
            order_dict(t, self.specs)
            for t in trades
            if not account or t.order.account in ("", account)
        ]
        return [
            o for o in out if o["symbol"] is not None and (symbol is None or o["symbol"] == symbol)
        ]

    async def fetch_open_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Every open order of the account, placed by any client (``reqAllOpenOrders``)."""
        trades = await self._ask(self.ib.reqAllOpenOrdersAsync)
        return [o for o in self._mine(list(trades), symbol) if o["status"] == "open"]

    async def fetch_closed_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Completed orders (``reqCompletedOrders``: filled, canceled, inactive)."""
        trades = await self._ask(lambda: self.ib.reqCompletedOrdersAsync(False))
        return [o for o in self._mine(list(trades), symbol) if o["status"] != "open"]

    async def fetch_my_trades(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Executions since ``since`` (ms) through ``reqExecutions``: each execId one trade,
        with its commission report (one still missing after ``REPORT_S``: left out now)."""
        when = ""
        if since is not None:
            at = dt.datetime.fromtimestamp(max(since, 0) / 1000, dt.UTC)
            when = at.strftime("%Y%m%d-%H:%M:%S")
        wanted = ExecutionFilter(acctCode=self.settings.account, time=when)
        fills = await self._ask(lambda: self.ib.reqExecutionsAsync(wanted))
        stored = {f.execution.execId: f for f in self.ib.fills()}
        complete = [stored.get(f.execution.execId, f) for f in fills]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REPORT_S
        while not all(has_report(f) for f in complete) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        out = [trade_dict(f, self.specs) for f in complete if has_report(f)]
        return [
            t for t in out if t["symbol"] is not None and (symbol is None or t["symbol"] == symbol)
        ]

    async def fetch_positions(
        self, symbols: list[str] | None = None, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Signed positions (``reqPositions``) in IB's units: shares, contracts, base units."""
        positions = await self._ask(self.ib.reqPositionsAsync)
        rows = [
            position_dict(p, self.specs) for p in positions if p.account == self.settings.account
        ]
        return [r for r in rows if r is not None and (not symbols or r["symbol"] in symbols)]

    async def fetch_balance(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Cash per currency (``CashBalance`` of the account's values, kept current by the
        account subscription the connection's sync started)."""
        await self._ask(self._synced)
        totals: dict[str, float] = {}
        for value in self.ib.accountValues(self.settings.account):
            if value.tag == "CashBalance" and value.currency not in ("", "BASE"):
                totals[value.currency] = float(value.value)
        if not totals:
            raise ccxt.ExchangeNotAvailable("ib: no cash balances in the account values yet")
        return {"total": totals, "free": dict(totals), "info": {"account": self.settings.account}}

    async def _synced(self) -> None:
        """The account values are the subscription's: nothing to ask on a live session, but
        after IB lost data (1101) the subscription missed updates (a fill made while away
        moved the cash), so the account's values are asked for again."""
        if self._account_stale:
            await self.ib.reqAccountUpdatesAsync(self.settings.account)
            self._account_stale = False

    # -- the private stream ----------------------------------------------------------------

    def _on_status(self, trade: Trade) -> None:
        self._status_news.set()
        answer = order_dict(trade, self.specs)
        # A status before IB gave the order its permId says nothing new (and the stream
        # tells orders apart by id), except a refusal, which never gets one.
        said = answer["id"] or answer["status"] == "rejected"
        if answer["symbol"] is not None and answer["clientOrderId"] and said:
            self._orders.append(answer)
            self._order_news.set()

    def _on_execution(self, trade: Trade, fill: Fill) -> None:
        self._live.add(fill.execution.execId)

    def _on_report(self, trade: Trade, fill: Fill, report: object) -> None:
        if fill.execution.execId not in self._live:
            return
        self._live.discard(fill.execution.execId)
        answer = trade_dict(fill, self.specs)
        if answer["symbol"] is not None:
            self._trades.append(answer)
            self._trade_news.set()

    @staticmethod
    async def _watch(pending: list[dict[str, Any]], news: asyncio.Event) -> list[dict[str, Any]]:
        while not pending:
            news.clear()
            await news.wait()
        taken = list(pending)
        pending.clear()
        return taken

    async def watch_orders(
        self, symbol: str | None = None, since: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return await self._watch(self._orders, self._order_news)

    async def watch_my_trades(
        self, symbol: str | None = None, since: int | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        return await self._watch(self._trades, self._trade_news)
