"""Binance's private REST on the fake's account: spot (``/api/v3``) and USDT-M (``/fapi``).

What ccxt 4.5 calls: spot ``POST/DELETE/GET order``, ``POST order/cancelReplace`` (its
editOrder), ``openOrders``, ``allOrders``, ``myTrades``, ``account``; USDT-M ``POST/DELETE/
GET/PUT order`` (PUT = its editOrder, limit orders only), ``openOrders``, ``allOrders``,
``userTrades``, ``v3/account``, ``v3/positionRisk`` (after ``leverageBracket``),
``listenKey``; conditional USDT-M orders (stop, stop-limit, take-profit) only through the
algo service (``POST/DELETE/GET algoOrder``, ``openAlgoOrders``, ``allAlgoOrders``): the
plain order endpoint refuses them with -4120, as Binance has since December 2025.

Every signed request is checked like Binance does: ``X-MBX-APIKEY`` present, HMAC-SHA256 of
the query string plus body with ``fake.api_secret`` (-1022), ``timestamp`` within
``recvWindow`` of the wall clock (-1021; ccxt signs with the host's clock, not the fake's
exchange time). Engine refusals map to Binance's own codes and messages (``SPOT_ERRORS``,
``FUTURES_ERRORS``); the user data stream is ``binance.py``'s ``UserStreams``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web

from tests.fakes.binance_frames import (
    ACTUAL_ID_OFFSET,
    FUTURES_ORDER_TYPES,
    MS,
    OrderFrames,
    market_id,
    ms,
)
from tests.fakes.core import FakeExchange, SymbolSpec
from tests.fakes.matching import Account, FakeOrder, OrderError, OrderType

Params = dict[str, str]
Handler = Callable[[Params, bool], Awaitable[web.Response]]

SPOT_ERRORS: dict[str, tuple[int, str]] = {
    "insufficient_balance": (-2010, "Account has insufficient balance for requested action."),
    "min_notional": (-1013, "Filter failure: NOTIONAL"),
    "lot_size": (-1013, "Filter failure: LOT_SIZE"),
    "tick_size": (-1013, "Filter failure: PRICE_FILTER"),
    "unknown_order": (-2011, "Unknown order sent."),
    "duplicate_client_id": (-2010, "Duplicate order sent."),
    "reduce_only_rejected": (-1106, "Parameter 'reduceOnly' sent when not required."),
    "would_trigger_immediately": (-2010, "Stop price would trigger immediately."),
    "post_only_rejected": (-2010, "Order would immediately match and take."),
    "bad_symbol": (-1121, "Invalid symbol."),
    "bad_request": (-1102, "A mandatory parameter was not sent, was empty/null, or malformed."),
}
FUTURES_ERRORS: dict[str, tuple[int, str]] = {
    **SPOT_ERRORS,
    "insufficient_balance": (-2019, "Margin is insufficient."),
    "min_notional": (
        -4164,
        "Order's notional must be no smaller than {min_notional} (unless you choose reduce only).",
    ),
    "duplicate_client_id": (-4116, "ClientOrderId is duplicated."),
    "reduce_only_rejected": (-2022, "ReduceOnly Order is rejected."),
    "would_trigger_immediately": (-2021, "Order would immediately trigger."),
    "post_only_rejected": (
        -5022,
        "Due to the order could not be executed as maker, the Post Only order will be "
        "rejected. The order will not be recorded in the order history",
    ),
}
SPOT_TYPES: dict[str, tuple[OrderType, bool]] = {
    "MARKET": ("market", False), "LIMIT": ("limit", False), "LIMIT_MAKER": ("limit", True),
    "STOP_LOSS": ("stop", False), "STOP_LOSS_LIMIT": ("stop_limit", False),
    "TAKE_PROFIT": ("take_profit", False), "TAKE_PROFIT_LIMIT": ("take_profit_limit", False),
}  # fmt: skip
ALGO_TYPES: dict[str, OrderType] = {
    "STOP_MARKET": "stop", "STOP": "stop_limit", "TAKE_PROFIT_MARKET": "take_profit",
    "TAKE_PROFIT": "take_profit_limit",
}  # fmt: skip
NEEDS_PRICE = {"limit", "stop_limit", "take_profit_limit"}
NEEDS_STOP = {"stop", "stop_limit", "take_profit", "take_profit_limit"}
SIGNATURE = re.compile(r"(^|&)signature=[^&]*")
CLIENT_ID = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
MAX_RECV_WINDOW_MS = 60_000


class BinanceError(Exception):
    """An error answer: HTTP status, Binance code and message."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.status = status


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(value), status=status, content_type="application/json"
    )


def mandatory(name: str) -> BinanceError:
    return BinanceError(
        -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def number(params: Params, name: str, required: bool = False) -> float | None:
    text = params.get(name)
    if text is None or text == "":
        if required:
            raise mandatory(name)
        return None
    try:
        value = float(text)
    except ValueError:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.") from None
    if value <= 0:
        raise BinanceError(-1013, f"Invalid {name}.")
    return value


def integer(params: Params, name: str) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'.") from None


def verify(secret: str, payload: str, signature: str) -> bool:
    expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def check_timestamp(params: Params) -> None:
    """``timestamp`` within ``recvWindow`` (default 5000 ms) of the wall clock."""
    stamp = integer(params, "timestamp")
    if stamp is None:
        raise mandatory("timestamp")
    window = integer(params, "recvWindow") or 5000
    if window > MAX_RECV_WINDOW_MS:
        raise BinanceError(-1131, "recvWindow must be less than 60000")
    now = time.time_ns() // MS
    if stamp > now + 1000:
        raise BinanceError(
            -1021, "Timestamp for this request was 1000ms ahead of the server's time."
        )
    if now - stamp > window:
        raise BinanceError(-1021, "Timestamp for this request is outside of the recvWindow.")


class BinanceOrders:
    """The private endpoints of one Binance skin (spot and USDT-M share one account)."""

    def __init__(self, fake: FakeExchange) -> None:
        self.fake = fake
        self.frames = OrderFrames(fake)
        self.listen_keys: set[str] = set()

    @property
    def account(self) -> Account:
        return self.fake.account

    def routes(self) -> list[web.RouteDef]:
        spot = "/api/v3"
        fut = "/fapi/v1"
        table: list[tuple[str, str, Handler, bool]] = [
            ("POST", f"{spot}/order", self.new_order, False),
            ("DELETE", f"{spot}/order", self.cancel_order, False),
            ("GET", f"{spot}/order", self.query_order, False),
            ("POST", f"{spot}/order/cancelReplace", self.cancel_replace, False),
            ("GET", f"{spot}/openOrders", self.open_orders, False),
            ("GET", f"{spot}/allOrders", self.all_orders, False),
            ("GET", f"{spot}/myTrades", self.my_trades, False),
            ("GET", f"{spot}/account", self.spot_account, False),
            ("POST", f"{fut}/order", self.new_order, True),
            ("DELETE", f"{fut}/order", self.cancel_order, True),
            ("GET", f"{fut}/order", self.query_order, True),
            ("PUT", f"{fut}/order", self.modify_order, True),
            ("GET", f"{fut}/openOrders", self.open_orders, True),
            ("GET", f"{fut}/allOrders", self.all_orders, True),
            ("GET", f"{fut}/userTrades", self.my_trades, True),
            ("POST", f"{fut}/algoOrder", self.new_algo, True),
            ("DELETE", f"{fut}/algoOrder", self.cancel_algo, True),
            ("GET", f"{fut}/algoOrder", self.query_algo, True),
            ("GET", f"{fut}/openAlgoOrders", self.open_algos, True),
            ("GET", f"{fut}/allAlgoOrders", self.all_algos, True),
            ("GET", f"{fut}/leverageBracket", self.leverage_bracket, True),
        ]
        for version in ("/fapi/v2", "/fapi/v3"):
            table += [
                ("GET", f"{version}/account", self.futures_account, True),
                ("GET", f"{version}/positionRisk", self.position_risk, True),
            ]
        out = [web.route(m, path, self._signed(h, fut_)) for m, path, h, fut_ in table]
        for method in ("POST", "PUT", "DELETE"):
            out.append(web.route(method, f"{fut}/listenKey", self.listen_key))
        return out

    # -- authentication --------------------------------------------------------------------

    def _signed(self, handler: Handler, futures: bool) -> Any:
        async def bound(request: web.Request) -> web.Response:
            try:
                params = await self._authenticate(request)
                return await handler(params, futures)
            except BinanceError as error:
                return json_response({"code": error.code, "msg": error.msg}, error.status)

        return bound

    async def _authenticate(self, request: web.Request) -> Params:
        if not request.headers.get("X-MBX-APIKEY"):
            raise BinanceError(-2014, "API-key format invalid.", 401)
        query = request.query_string
        body = await request.text() if request.can_read_body else ""
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        signature = params.pop("signature", "")
        if not signature:
            raise mandatory("signature")
        payload = SIGNATURE.sub("", query).lstrip("&") + SIGNATURE.sub("", body).lstrip("&")
        if not verify(self.fake.api_secret, payload, signature):
            raise BinanceError(-1022, "Signature for this request is not valid.")
        check_timestamp(params)
        return params

    async def listen_key(self, request: web.Request) -> web.Response:
        """USDT-M user stream key: create (POST), keep alive (PUT), close (DELETE)."""
        if not request.headers.get("X-MBX-APIKEY"):
            return json_response({"code": -2014, "msg": "API-key format invalid."}, 401)
        if request.method == "DELETE":
            return json_response({})
        if request.method == "PUT":
            if not self.listen_keys:
                return json_response({"code": -1125, "msg": "This listenKey does not exist."}, 400)
            return json_response({"listenKey": next(iter(self.listen_keys))})
        if not self.listen_keys:
            self.listen_keys.add(uuid.uuid4().hex + uuid.uuid4().hex)
        return json_response({"listenKey": next(iter(self.listen_keys))})

    # -- helpers ---------------------------------------------------------------------------

    def _spec(self, params: Params, futures: bool, required: bool = True) -> SymbolSpec | None:
        market = params.get("symbol")
        if not market:
            if required:
                raise mandatory("symbol")
            return None
        for spec in self.fake.specs.values():
            if (spec.kind == "perpetual") == futures and market_id(spec) == market:
                if self.fake.is_delisted(spec.symbol):
                    break
                return spec
        raise BinanceError(-1121, "Invalid symbol.")

    def _refusal(self, error: OrderError, futures: bool, spec: SymbolSpec | None) -> BinanceError:
        code, msg = (FUTURES_ERRORS if futures else SPOT_ERRORS)[error.code]
        if spec is not None:
            msg = msg.format(min_notional=f"{spec.min_notional:g}")
        return BinanceError(code, msg)

    def _order_ids(self, params: Params, id_key: str, client_key: str) -> tuple[int | None, str]:
        order_id = integer(params, id_key)
        client_id = params.get(client_key, "")
        if order_id is None and not client_id:
            raise BinanceError(
                -1102,
                f"Param '{client_key}' or '{id_key}' must be sent, but both were empty/null!",
            )
        return order_id, client_id

    def _lookup(
        self, params: Params, futures: bool, algo: bool, id_key: str, client_key: str
    ) -> FakeOrder | None:
        """The order a query names, as the endpoint sees it: the plain endpoints show an
        algo order only once triggered (under its actual id), the algo ones only algos."""
        spec = self._spec(params, futures)
        order_id, client_id = self._order_ids(params, id_key, client_key)
        if futures and not algo and order_id is not None and order_id >= ACTUAL_ID_OFFSET:
            order_id -= ACTUAL_ID_OFFSET
        order = self.account.find(order_id=order_id, client_id=client_id or None)
        if order is None or spec is None or order.symbol != spec.symbol:
            return None
        if order.algo and not algo and not order.triggered:
            return None
        return None if algo and not order.algo else order

    def _tif(self, params: Params, type_: OrderType, post_only: bool, algo: bool) -> str:
        """Time in force: required for limit orders, except on the algo service (GTC)."""
        if post_only:
            return "GTX"
        tif = params.get("timeInForce", "")
        if type_ in NEEDS_PRICE and not tif and not algo:
            raise mandatory("timeInForce")
        if tif and tif not in ("GTC", "IOC", "FOK", "GTX"):
            raise BinanceError(-1115, "Invalid timeInForce.")
        return tif or "GTC"

    def _place(
        self, params: Params, spec: SymbolSpec, futures: bool, type_: OrderType, *,
        post_only: bool = False, algo: bool = False, client_key: str = "newClientOrderId",
        stop_key: str = "stopPrice",
    ) -> FakeOrder:  # fmt: skip
        side = params.get("side", "")
        if side not in ("BUY", "SELL"):
            raise mandatory("side") if not side else BinanceError(-1117, "Invalid side.")
        price = number(params, "price", required=type_ in NEEDS_PRICE)
        stop = number(params, stop_key, required=type_ in NEEDS_STOP)
        qty = number(params, "quantity")
        if qty is None:
            qty = self._quote_qty(params, spec, side, type_, futures)
        client_id = params.get(client_key, "")
        if client_id and not CLIENT_ID.match(client_id):
            raise BinanceError(
                -1100,
                f"Illegal characters found in parameter '{client_key}'; legal range is "
                f"'{CLIENT_ID.pattern}'.",
            )
        reduce_only = params.get("reduceOnly", "false").lower() == "true"
        if reduce_only and not futures:
            raise self._refusal(OrderError("reduce_only_rejected"), futures, spec)
        try:
            return self.account.place(
                spec.symbol,
                "buy" if side == "BUY" else "sell",
                type_,
                qty,
                price=price if type_ in NEEDS_PRICE else None,
                stop_price=stop if type_ in NEEDS_STOP else None,
                client_id=client_id or f"fake{uuid.uuid4().hex[:18]}",
                reduce_only=reduce_only,
                tif=self._tif(params, type_, post_only, algo),  # type: ignore[arg-type]
                algo=algo,
            )
        except OrderError as error:
            raise self._refusal(error, futures, spec) from None

    def _quote_qty(
        self, params: Params, spec: SymbolSpec, side: str, type_: OrderType, futures: bool
    ) -> float:
        """A spot market order by ``quoteOrderQty``: the base amount it buys at the touch,
        down to the lot."""
        cost = number(params, "quoteOrderQty")
        if cost is None or futures or type_ != "market":
            raise mandatory("quantity")
        tick = self.fake.snapshot(spec.symbol)
        price = tick.ask if side == "BUY" else tick.bid
        lots = int(cost / price / spec.lot_size + 1e-9)
        if lots < 1:
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        return round(lots * spec.lot_size, 12)

    def _row(self, order: FakeOrder, futures: bool, kind: str = "query") -> dict[str, Any]:
        if futures:
            return self.frames.futures_order(order, "query" if kind == "query" else "new")
        return self.frames.spot_order(order, kind)

    def _created(self, params: Params, order: FakeOrder, futures: bool) -> dict[str, Any]:
        """The answer to a new order, by ``newOrderRespType`` (spot FULL adds ``fills``)."""
        if futures:
            return self.frames.futures_order(order, "new")
        default = "FULL" if order.type in ("market", "limit") else "ACK"
        kind = params.get("newOrderRespType", default)
        row = self.frames.spot_order(order, "new")
        if kind == "ACK":
            keep = ("symbol", "orderId", "orderListId", "clientOrderId", "transactTime")
            return {k: row[k] for k in keep}
        if kind == "FULL":
            fills = self.account.fills(order.symbol, order_id=order.order_id)
            row["fills"] = [self.frames.spot_fill(f) for f in fills]
        return row

    @staticmethod
    def _window(params: Params, stamps: list[int]) -> list[bool]:
        start = integer(params, "startTime")
        end = integer(params, "endTime")
        return [(start is None or s >= start) and (end is None or s <= end) for s in stamps]

    # -- orders ----------------------------------------------------------------------------

    async def new_order(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures)
        assert spec is not None
        name = params.get("type", "")
        if not name:
            raise mandatory("type")
        if futures:
            if name in FUTURES_ORDER_TYPES and name not in ("LIMIT", "MARKET"):
                raise BinanceError(
                    -4120,
                    "Order type not supported for this endpoint. Please use the Algo Order "
                    "API endpoints instead.",
                )
            if name not in ("LIMIT", "MARKET"):
                raise BinanceError(-1116, "Invalid orderType.")
            type_: OrderType = "limit" if name == "LIMIT" else "market"
            post_only = False
        else:
            if name not in SPOT_TYPES:
                raise BinanceError(-1116, "Invalid orderType.")
            type_, post_only = SPOT_TYPES[name]
        try:
            order = self._place(params, spec, futures, type_, post_only=post_only)
        finally:
            await self.account.answer_gate("place")
        return json_response(self._created(params, order, futures))

    async def cancel_order(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures)
        assert spec is not None
        order_id, client_id = self._order_ids(params, "orderId", "origClientOrderId")
        if futures and order_id is not None and order_id >= ACTUAL_ID_OFFSET:
            order_id -= ACTUAL_ID_OFFSET
        try:
            target = self.account.find(
                order_id=order_id, client_id=client_id or None, include_hidden=True
            )
            if target is not None and target.algo and not target.triggered:
                raise OrderError("unknown_order")
            order = self.account.cancel(
                order_id=order_id, client_id=client_id or None, symbol=spec.symbol
            )
        except OrderError as error:
            await self.account.answer_gate("cancel")
            raise self._refusal(error, futures, spec) from None
        await self.account.answer_gate("cancel")
        row = self._row(order, futures, "cancel")
        if not futures:
            row["clientOrderId"] = params.get("newClientOrderId") or uuid.uuid4().hex[:22]
        return json_response(row)

    async def query_order(self, params: Params, futures: bool) -> web.Response:
        order = self._lookup(params, futures, False, "orderId", "origClientOrderId")
        if order is None:
            raise BinanceError(-2013, "Order does not exist.")
        return json_response(self._row(order, futures))

    async def modify_order(self, params: Params, futures: bool) -> web.Response:
        """USDT-M ``PUT order``: a LIMIT order's quantity and price, same order id."""
        spec = self._spec(params, futures)
        assert spec is not None
        order_id, client_id = self._order_ids(params, "orderId", "origClientOrderId")
        qty = number(params, "quantity", required=True)
        price = number(params, "price", required=True)
        target = self.account.find(
            order_id=order_id, client_id=client_id or None, include_hidden=True
        )
        if target is None or target.symbol != spec.symbol or not target.is_open:
            raise BinanceError(-2013, "Order does not exist.")
        if target.type != "limit" or target.algo:
            raise BinanceError(-4028, "Price is not valid for this order type.")
        side = params.get("side", "")
        if side and side != target.side.upper():
            raise BinanceError(-4012, "The side of the modified order must be the same.")
        try:
            order = self.account.amend(order_id=target.order_id, qty=qty, price=price)
        except OrderError as error:
            await self.account.answer_gate("amend")
            raise self._refusal(error, futures, spec) from None
        await self.account.answer_gate("amend")
        return json_response(self.frames.futures_order(order, "new"))

    async def cancel_replace(self, params: Params, futures: bool) -> web.Response:
        """Spot ``order/cancelReplace`` (ccxt's editOrder): cancel, then a new order with
        a new id; ``STOP_ON_FAILURE`` places nothing when the cancel fails. Binance's
        answers: both done 200; one half failed -2021 (HTTP 409); both failed, or the cancel
        failed and nothing was placed, -2022 (HTTP 400), each with ``data`` saying which."""
        spec = self._spec(params, futures)
        assert spec is not None
        mode = params.get("cancelReplaceMode", "")
        if mode not in ("STOP_ON_FAILURE", "ALLOW_FAILURE"):
            raise mandatory("cancelReplaceMode")
        if params.get("type", "") not in SPOT_TYPES:
            raise BinanceError(-1116, "Invalid orderType.")
        type_, post_only = SPOT_TYPES[params["type"]]
        order_id, client_id = self._order_ids(params, "cancelOrderId", "cancelOrigClientOrderId")
        out: dict[str, Any] = {"cancelResult": "SUCCESS", "newOrderResult": "NOT_ATTEMPTED"}
        try:
            old = self.account.cancel(order_id=order_id, client_id=client_id or None,
                                      symbol=spec.symbol)  # fmt: skip
            new_id = params.get("cancelNewClientOrderId") or uuid.uuid4().hex[:22]
            out["cancelResponse"] = self.frames.spot_order(old, "cancel") | {
                "clientOrderId": new_id
            }
        except OrderError as error:
            code, msg = SPOT_ERRORS[error.code]
            out |= {"cancelResult": "FAILURE", "cancelResponse": {"code": code, "msg": msg}}
        out["newOrderResponse"] = None
        if out["cancelResult"] == "SUCCESS" or mode == "ALLOW_FAILURE":
            try:
                order = self._place(params, spec, False, type_, post_only=post_only)
                out |= {"newOrderResult": "SUCCESS",
                        "newOrderResponse": self._created(params, order, False)}  # fmt: skip
            except BinanceError as error:
                out |= {"newOrderResult": "FAILURE",
                        "newOrderResponse": {"code": error.code, "msg": error.msg}}  # fmt: skip
        await self.account.answer_gate("amend")
        if out["cancelResult"] == out["newOrderResult"] == "SUCCESS":
            return json_response(out)
        if "SUCCESS" in (out["cancelResult"], out["newOrderResult"]):  # one half done
            return json_response(
                {"code": -2021, "msg": "Order cancel-replace partially failed.", "data": out}, 409
            )
        return json_response(
            {"code": -2022, "msg": "Order cancel-replace failed.", "data": out}, 400
        )

    async def open_orders(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures, required=False)
        orders = self.account.open_orders(None if spec is None else spec.symbol)
        rows = [
            self._row(o, futures)
            for o in orders
            if (self.fake.specs[o.symbol].kind == "perpetual") == futures
            and (not o.algo or o.triggered)
        ]
        return json_response(rows)

    async def all_orders(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures)
        assert spec is not None
        from_id = integer(params, "orderId")
        limit = min(integer(params, "limit") or 500, 1000)
        orders = [o for o in self.account.orders(spec.symbol) if not o.algo or o.triggered]
        keep = self._window(params, [ms(o.created_ns) for o in orders])
        rows = [
            self._row(o, futures)
            for o, ok in zip(orders, keep, strict=True)
            if ok and (from_id is None or o.order_id >= from_id)
        ]
        return json_response(rows[:limit] if from_id is not None else rows[-limit:])

    async def my_trades(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures)
        assert spec is not None
        order_id = integer(params, "orderId")
        from_id = integer(params, "fromId")
        limit = min(integer(params, "limit") or 500, 1000)
        if futures and order_id is not None and order_id >= ACTUAL_ID_OFFSET:
            order_id -= ACTUAL_ID_OFFSET
        fills = self.account.fills(spec.symbol, order_id=order_id)
        keep = self._window(params, [ms(f.ts_ns) for f in fills])
        chosen = [
            f for f, ok in zip(fills, keep, strict=True)
            if ok and (from_id is None or f.trade_id >= from_id)
        ]  # fmt: skip
        chosen = chosen[:limit] if from_id is not None else chosen[-limit:]
        orders = {o.order_id: o for o in self.account.orders(spec.symbol, include_hidden=True)}
        return json_response(
            [self.frames.my_trade(f, orders.get(f.order_id), futures) for f in chosen]
        )

    # -- algo (USDT-M conditional) ---------------------------------------------------------

    async def new_algo(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures)
        assert spec is not None
        if params.get("algoType") != "CONDITIONAL":
            raise mandatory("algoType")
        name = params.get("type", "")
        if name not in ALGO_TYPES:
            raise BinanceError(-1116, "Invalid orderType.")
        try:
            order = self._place(
                params, spec, True, ALGO_TYPES[name], algo=True,
                client_key="clientAlgoId", stop_key="triggerPrice",
            )  # fmt: skip
        finally:
            await self.account.answer_gate("place")
        return json_response(self.frames.algo_order(order, "new"))

    async def cancel_algo(self, params: Params, futures: bool) -> web.Response:
        algo_id, client_id = self._order_ids(params, "algoId", "clientAlgoId")
        target = self.account.find(
            order_id=algo_id, client_id=client_id or None, include_hidden=True
        )
        try:
            if target is None or not target.algo or target.triggered:
                raise OrderError("unknown_order")
            order = self.account.cancel(order_id=target.order_id)
        except OrderError as error:
            await self.account.answer_gate("cancel")
            raise self._refusal(error, True, None) from None
        await self.account.answer_gate("cancel")
        return json_response(self.frames.algo_order(order, "cancel"))

    async def query_algo(self, params: Params, futures: bool) -> web.Response:
        algo_id, client_id = self._order_ids(params, "algoId", "clientAlgoId")
        order = self.account.find(order_id=algo_id, client_id=client_id or None)
        if order is None or not order.algo:
            raise BinanceError(-2013, "Order does not exist.")
        return json_response(self.frames.algo_order(order))

    async def open_algos(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures, required=False)
        orders = self.account.open_orders(None if spec is None else spec.symbol, algo=True)
        return json_response([self.frames.algo_order(o) for o in orders if not o.triggered])

    async def all_algos(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, futures)
        assert spec is not None
        limit = min(integer(params, "limit") or 500, 1000)
        orders = [o for o in self.account.orders(spec.symbol) if o.algo]
        keep = self._window(params, [ms(o.created_ns) for o in orders])
        rows = [self.frames.algo_order(o) for o, ok in zip(orders, keep, strict=True) if ok]
        return json_response(rows[-limit:])

    # -- account ---------------------------------------------------------------------------

    async def spot_account(self, params: Params, futures: bool) -> web.Response:
        omit_zero = params.get("omitZeroBalances", "false") == "true"
        return json_response(self.frames.spot_account(self.account, omit_zero))

    async def position_risk(self, params: Params, futures: bool) -> web.Response:
        spec = self._spec(params, True, required=False)
        return json_response(self.frames.positions(self.account, spec))

    async def futures_account(self, params: Params, futures: bool) -> web.Response:
        return json_response(self.frames.futures_account(self.account))

    async def leverage_bracket(self, params: Params, futures: bool) -> web.Response:
        bracket = {"bracket": 1, "initialLeverage": 125, "notionalCap": 50_000_000,
                   "notionalFloor": 0, "maintMarginRatio": 0.004, "cum": 0.0}  # fmt: skip
        return json_response(
            [
                {"symbol": market_id(spec), "notionalCoef": 1.0, "brackets": [bracket]}
                for spec in self.fake.specs.values()
                if spec.kind == "perpetual"
            ]
        )
