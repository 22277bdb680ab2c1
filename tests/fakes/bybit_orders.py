"""The private side of the Bybit fake: v5 unified-account trading, spot and linear USDT.

REST, each request signed as ccxt signs it (``X-BAPI-SIGN`` = HMAC-SHA256 of timestamp +
key + recv window + the JSON body of a POST or the query string of a GET, keyed with
``fake.api_secret``; a mismatch is retCode 10004 "error sign!", a timestamp outside the recv
window of the wall clock 10002):

- ``/v5/user/query-api`` and ``/v5/account/info``: a UTA 2.0 account, so ccxt takes its
  unified paths; ``/v5/asset/coin/query-info``: ccxt's ``fetchCurrencies`` once it has keys;
- ``/v5/order/create|amend|cancel|cancel-all``: orders go to the exchange-neutral
  ``fake.account`` (``matching.py``); a conditional order (``triggerPrice``) is a stop or a
  take-profit (with a limit price: ``stop_limit`` or ``take_profit_limit``) by its
  ``triggerDirection`` and side (spot: by where the trigger is from the last price); spot
  conditional orders live in the ``StopOrder`` book (``orderFilter``) and are cancelled or
  listed only through it, as on Bybit. A conditional order holds no balance or margin
  until it triggers (Bybit's Place Order: "the conditional order does not occupy the
  margin"); one the account cannot cover when it triggers is cancelled (``Cancelled``,
  ``cancelType`` ``CancelByCannotAffordOrderCost``);
- ``/v5/order/realtime``: open orders (spot: the ``Order`` book unless ``orderFilter`` says
  otherwise; linear: all); with ``orderId``/``orderLinkId`` the order in any state (still
  in its book), which ccxt's ``fetchOrder(..., {"acknowledged": True})`` relies on;
  ``openOnly=1``: closed ones;
  ``/v5/order/history``: finished orders (``orderStatus`` filters);
- ``/v5/execution/list``, ``/v5/account/wallet-balance`` (``UNIFIED``), ``/v5/position/list``.

The websocket ``/v5/private`` is ``bybit_stream.py``; record shapes are ``bybit_rows.py``.
Faults ``drop_next``, ``hang_next`` and ``ack_delay_s`` come from the account's
``place``/``answer_gate`` and the core's middleware.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from tests.fakes.bybit_rows import (
    LINEAR,
    MS,
    SPOT,
    Extra,
    api_key_info,
    coin_row,
    default_extra,
    exec_row,
    order_id_text,
    order_row,
    parse_order_id,
    position_row,
    price_text,
    wallet,
)
from tests.fakes.bybit_stream import BybitStream
from tests.fakes.core import FakeExchange, SymbolSpec
from tests.fakes.matching import Account, FakeOrder, GateKind, OrderError, OrderType

if TYPE_CHECKING:
    from tests.fakes.bybit import BybitSkin

Params = dict[str, str]
TIF_IN = {"GTC": "GTC", "IOC": "IOC", "FOK": "FOK", "PostOnly": "GTX"}
FINISHED = ("Filled", "Cancelled", "PartiallyFilledCanceled", "Rejected", "Deactivated")
MIN_VALUE = "Order does not meet minimum order value"
DUPLICATE = "OrderLinkedID is duplicate"
POST_ONLY_SPOT = "The LIMIT-MAKER order is rejected due to invalid price."
CANNOT_AFFORD = "CancelByCannotAffordOrderCost"
# engine refusal -> (spot retCode, spot retMsg, linear retCode, linear retMsg)
ERRORS: dict[str, tuple[int, str, int, str]] = {
    "insufficient_balance": (
        170131,
        "Insufficient balance.",
        110007,
        "ab not enough for new order",
    ),
    "min_notional": (170140, "Order value exceeded lower limit.", 110094, MIN_VALUE),
    "lot_size": (170137, "Order quantity has too many decimals.", 10001, "Qty invalid"),
    "tick_size": (170134, "Order price has too many decimals.", 10001, "Price invalid"),
    "unknown_order": (170213, "Order does not exist.", 110001, "order not exists or too late"),
    "duplicate_client_id": (170141, "Duplicate clientOrderId.", 110072, DUPLICATE),
    "reduce_only_rejected": (10001, "params error", 110017, "Reduce-only rule not satisfied"),
    "would_trigger_immediately": (170210, "New order rejected.", 110092, "expect Rising"),
    "post_only_rejected": (170218, POST_ONLY_SPOT, 10001, "PostOnly will take liquidity"),
    "bad_symbol": (170121, "Invalid symbol.", 10001, "params error: symbol invalid"),
    "bad_request": (10001, "params error", 10001, "params error"),
}


class BybitError(Exception):
    """A request Bybit answers with a non-zero retCode."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def as_text(value: Any) -> str:
    """A JSON body value as Bybit reads it (ccxt sends booleans and numbers too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def positive(params: Params, key: str) -> float | None:
    raw = params.get(key, "")
    if raw in ("", "0"):
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BybitError(10001, f"params error: {key} invalid") from None
    if value <= 0:
        raise BybitError(10001, f"params error: {key} invalid")
    return value


class BybitPrivate:
    """Private REST and websocket of one Bybit fake (see the module docstring)."""

    def __init__(self, skin: BybitSkin) -> None:
        self.skin = skin
        self.fake: FakeExchange = skin.fake
        self.extras: dict[int, Extra] = {}
        self._pending: Extra | None = None
        self.account: Account = self.fake.account
        self.account.conditional_holds = False  # held when triggered, cancelled if short
        self.stream = BybitStream(self)

    def sign(self, payload: str) -> str:
        return hmac.new(self.fake.api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()

    def routes(self) -> list[web.RouteDef]:
        reads: dict[str, Callable[[Params], Any]] = {
            "/v5/user/query-api": lambda p: api_key_info(self.fake.now_ns()),
            "/v5/account/info": self._account_info,
            "/v5/asset/coin/query-info": self._coin_info,
            "/v5/order/realtime": self._realtime,
            "/v5/order/history": self._history,
            "/v5/execution/list": self._executions,
            "/v5/account/wallet-balance": self._wallet_balance,
            "/v5/position/list": self._positions,
        }
        writes: dict[str, tuple[Callable[[Params], Any], GateKind]] = {
            "/v5/order/create": (self._create, "place"),
            "/v5/order/cancel": (self._cancel, "cancel"),
            "/v5/order/amend": (self._amend, "amend"),
            "/v5/order/cancel-all": (self._cancel_all, "cancel"),
        }
        routes = [web.get(path, self._serve(fn, None)) for path, fn in reads.items()]
        routes += [web.post(path, self._serve(fn, gate)) for path, (fn, gate) in writes.items()]
        return routes

    def _serve(
        self, handler: Callable[[Params], Any], gate: GateKind | None
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            try:
                params = await self._verified(request)
            except BybitError as error:
                return self.skin._answer({}, error.code, error.message)
            try:
                answer = self.skin._answer(handler(params))
            except BybitError as error:
                answer = self.skin._answer({}, error.code, error.message)
            if gate is not None:
                await self.account.answer_gate(gate)
            return answer

        return serve

    async def _verified(self, request: web.Request) -> Params:
        """The request's parameters once its signature checks out."""
        key = request.headers.get("X-BAPI-API-KEY", "")
        if not key:
            raise BybitError(10003, "API key is invalid.")
        stamp = request.headers.get("X-BAPI-TIMESTAMP", "")
        window = request.headers.get("X-BAPI-RECV-WINDOW", "")
        body = await request.text() if request.method == "POST" else ""
        payload = body if request.method == "POST" else request.query_string
        origin = f"{stamp}{key}{window}{payload}"
        given = request.headers.get("X-BAPI-SIGN", "")
        if not hmac.compare_digest(given, self.sign(origin)):
            raise BybitError(10004, f"error sign! origin_string[{origin}]")
        self._check_time(stamp, window)
        if request.method != "POST":
            return dict(request.query)
        try:
            decoded = msgspec.json.decode(body or "{}")
        except msgspec.DecodeError:
            decoded = None
        if not isinstance(decoded, dict):
            raise BybitError(10001, "params error: the body is not a JSON object")
        return {k: as_text(v) for k, v in decoded.items()}

    @staticmethod
    def _check_time(stamp: str, window: str) -> None:
        """Bybit's rule ``server - recv_window <= timestamp < server + 1000``, against the
        wall clock: ccxt stamps requests with its own wall time, not the fake's scaled one."""
        now_ms = time.time_ns() // MS
        try:
            sent, allowed = int(stamp), int(window or 5000)
        except ValueError:
            raise BybitError(10001, "params error: X-BAPI-TIMESTAMP is invalid") from None
        if not now_ms - allowed <= sent < now_ms + 1000:
            raise BybitError(
                10002,
                "invalid request, please check your server timestamp or recv_window param. "
                f"req_timestamp[{sent}],server_timestamp[{now_ms}],recv_window[{allowed}]",
            )

    # -- lookups ---------------------------------------------------------------------------

    def _category(self, params: Params) -> str:
        category = params.get("category", "")
        if category not in (SPOT, LINEAR):
            raise BybitError(10001, "params error: Category is invalid")
        return category

    def _symbol(self, category: str, params: Params, required: bool = False) -> SymbolSpec | None:
        symbol_id = params.get("symbol", "")
        if not symbol_id:
            if required:
                raise BybitError(10001, "params error: symbol is required")
            return None
        spec = self.skin._listed(category, symbol_id)
        if spec is None:
            raise self._refusal(OrderError("bad_symbol"), category)
        return spec

    def _refusal(self, error: OrderError, category: str) -> BybitError:
        spot_code, spot_msg, code, msg = ERRORS[error.code]
        return BybitError(spot_code, spot_msg) if category == SPOT else BybitError(code, msg)

    def _extra(self, order: FakeOrder) -> Extra:
        extra = self.extras.get(order.order_id)
        if extra is None and self._pending is not None:  # the order being placed right now
            extra = self.extras[order.order_id] = self._pending
            self._pending = None
        if extra is None:
            extra = default_extra(self.fake.specs[order.symbol], order)
        if order.order_id in self.account.starved:
            extra.cancel_type = CANNOT_AFFORD
        return extra

    def _target(self, category: str, params: Params, hidden: bool) -> FakeOrder | None:
        """The order ``orderId`` (first) or ``orderLinkId`` names, in ``category``."""
        if params.get("orderId"):
            order_id = parse_order_id(category, params["orderId"])
            found = self.account.find(order_id=order_id, include_hidden=hidden)
        elif params.get("orderLinkId"):
            found = self.account.find(client_id=params["orderLinkId"], include_hidden=hidden)
        else:
            return None
        in_category = found is not None and self._extra(found).category == category
        return found if in_category else None

    def _book_matches(self, order: FakeOrder, category: str, order_filter: str) -> bool:
        """Whether ``order`` is in the book ``orderFilter`` names (spot keeps three apart)."""
        if not order_filter:
            return category != SPOT or self._extra(order).order_filter == "Order"
        return self._extra(order).order_filter == order_filter

    # -- account ---------------------------------------------------------------------------

    def _account_info(self, params: Params) -> dict[str, Any]:
        return {
            "marginMode": "REGULAR_MARGIN",
            "updatedTime": str(self.fake.listed_ns // MS),
            "unifiedMarginStatus": 5,
            "dcpStatus": "OFF",
            "timeWindow": 10,
            "smpGroup": 0,
            "isMasterTrader": False,
            "spotHedgingStatus": "OFF",
        }

    def _coin_info(self, params: Params) -> dict[str, Any]:
        coins = set(self.account.balances)
        for spec in self.fake.specs.values():
            coins.update((spec.base, spec.quote))
        wanted = params.get("coin", "")
        return {"rows": [coin_row(c) for c in sorted(coins) if wanted in ("", c)]}

    def _wallet_balance(self, params: Params) -> dict[str, Any]:
        if params.get("accountType") != "UNIFIED":
            raise BybitError(10001, "accountType only support UNIFIED.")
        wanted = set(filter(None, params.get("coin", "").split(",")))
        return {"list": [wallet(self.account.balances, wanted)]}

    def _positions(self, params: Params) -> dict[str, Any]:
        if params.get("category") == "inverse":  # a category this account holds nothing in
            return {"list": [], "nextPageCursor": "", "category": "inverse"}
        if self._category(params) != LINEAR:
            raise BybitError(10001, "params error: category only support linear or option")
        spec = self._symbol(LINEAR, params)
        settle = params.get("settleCoin", "")
        if spec is None and not settle and not params.get("baseCoin"):
            raise BybitError(10001, "Missing some parameters that must be filled in")
        rows = []
        for candidate in self.skin._specs(LINEAR):
            if spec is not None and candidate.symbol != spec.symbol:
                continue
            if settle and settle != (candidate.settle or candidate.quote):
                continue
            if params.get("baseCoin", candidate.base) != candidate.base:
                continue
            position = self.account.positions.get(candidate.symbol)
            if spec is None and (position is None or position.qty == 0):
                continue  # without a symbol Bybit lists only open positions
            mark = self.fake.snapshot(candidate.symbol).candle.close
            rows.append(position_row(candidate, position, mark, self.fake.now_ns()))
        return {"list": rows, "nextPageCursor": "", "category": LINEAR}

    # -- orders ----------------------------------------------------------------------------

    def _create(self, params: Params) -> dict[str, Any]:
        category = self._category(params)
        spec = self._symbol(category, params, required=True)
        assert spec is not None
        side = {"Buy": "buy", "Sell": "sell"}.get(params.get("side", ""))
        kind = params.get("orderType", "")
        if side is None or kind not in ("Market", "Limit"):
            raise BybitError(10001, "params error: side or orderType invalid")
        qty = positive(params, "qty")
        if qty is None:
            raise BybitError(10001, "params error: qty invalid")
        price = positive(params, "price") if kind == "Limit" else None
        if kind == "Limit" and price is None:
            raise BybitError(10001, "params error: price invalid")
        tif = TIF_IN.get(params.get("timeInForce", "GTC"))
        if tif is None:
            raise BybitError(10001, "params error: timeInForce invalid")
        trigger = positive(params, "triggerPrice")
        order_filter = params.get("orderFilter", "Order") if category == SPOT else "Order"
        if order_filter not in ("Order", "StopOrder", "tpslOrder"):
            raise BybitError(170202, "Invalid orderFilter parameter.")
        if category == SPOT and (trigger is None) != (order_filter == "Order"):
            raise BybitError(10001, "params error: triggerPrice goes with orderFilter")
        last = self.fake.snapshot(spec.symbol).trade.price
        direction = self._direction(params, category, trigger, last)
        market_unit, quote_qty = "", ""
        if category == SPOT and kind == "Market":
            market_unit = params.get("marketUnit") or ("quoteCoin" if side == "buy" else "baseCoin")
            if market_unit == "quoteCoin":
                quote_qty = params["qty"]
                qty = self._base_for(spec, qty, side)
        engine_type = self._engine_type(kind, side, trigger, direction)
        reduce_only = category == LINEAR and params.get("reduceOnly") == "true"
        self._pending = Extra(
            category=category,
            order_filter=order_filter,
            market_unit=market_unit,
            quote_qty=quote_qty,
            trigger_direction=direction,
            order_type=kind,
            last_on_created=price_text(last, spec),
        )
        try:
            order = self.account.place(
                spec.symbol,
                side,  # type: ignore[arg-type]
                engine_type,
                qty,
                price=price,
                stop_price=trigger,
                client_id=params.get("orderLinkId", ""),
                reduce_only=reduce_only,
                tif="GTC" if kind == "Market" else tif,  # type: ignore[arg-type]
                algo=order_filter == "StopOrder",
            )
        except OrderError as error:
            if error.code == "would_trigger_immediately" and category == LINEAR:
                raise self._wrong_side(direction, trigger, last, spec) from None
            raise self._refusal(error, category) from None
        finally:
            pending, self._pending = self._pending, None
        if pending is not None:  # no update consumed it (no listener, or a silent stream)
            self.extras[order.order_id] = pending
        return {"orderId": order_id_text(category, order.order_id), "orderLinkId": order.client_id}

    @staticmethod
    def _wrong_side(
        direction: int, trigger: float | None, last: float, spec: SymbolSpec
    ) -> BybitError:
        """110092/110093: a trigger already on the far side of the last price."""
        where = f"trigger_price[{price_text(trigger or 0.0, spec)}]"
        now = f"current[{price_text(last, spec)}]"
        if direction == 1:
            return BybitError(110092, f"expect Rising, but {where} <= {now}")
        return BybitError(110093, f"expect Falling, but {where} >= {now}")

    def _direction(self, params: Params, category: str, trigger: float | None, last: float) -> int:
        """1 rising, 2 falling; spot infers it from where the trigger is."""
        if trigger is None:
            return 0
        given = params.get("triggerDirection", "")
        if category == SPOT or not given:
            if category == LINEAR:
                raise BybitError(10001, "params error: triggerDirection is required")
            return 1 if trigger > last else 2
        if given not in ("1", "2"):
            raise BybitError(10001, "params error: triggerDirection invalid")
        return int(given)

    @staticmethod
    def _engine_type(kind: str, side: str, trigger: float | None, direction: int) -> OrderType:
        if trigger is None:
            return "limit" if kind == "Limit" else "market"
        stop_like = (direction == 1) == (side == "buy")
        if kind == "Limit":
            return "stop_limit" if stop_like else "take_profit_limit"
        return "stop" if stop_like else "take_profit"

    def _base_for(self, spec: SymbolSpec, quote_qty: float, side: str) -> float:
        """The base quantity a spot market order of ``quote_qty`` quote buys or sells now."""
        tick = self.fake.snapshot(spec.symbol)
        touch = tick.ask if side == "buy" else tick.bid
        lots = int(quote_qty / touch / spec.lot_size + 1e-9)
        if lots < 1:
            raise BybitError(170140, "Order value exceeded lower limit.")
        return round(lots * spec.lot_size, 12)

    def _cancel(self, params: Params) -> dict[str, Any]:
        category = self._category(params)
        spec = self._symbol(category, params, required=True)
        order_filter = params.get("orderFilter", "") if category == SPOT else ""
        order = self._target(category, params, hidden=True)
        unknown = self._refusal(OrderError("unknown_order"), category)
        if order is None and not (params.get("orderId") or params.get("orderLinkId")):
            raise BybitError(10001, "params error: orderId or orderLinkId is required")
        if order is None or order.symbol != (spec.symbol if spec else ""):
            raise unknown
        if not self._book_matches(order, category, order_filter):
            raise unknown
        try:
            self.extras.setdefault(order.order_id, self._extra(order)).cancel_type = "CancelByUser"
            done = self.account.cancel(order_id=order.order_id)
        except OrderError as error:
            raise self._refusal(error, category) from None
        return {"orderId": order_id_text(category, done.order_id), "orderLinkId": done.client_id}

    def _amend(self, params: Params) -> dict[str, Any]:
        category = self._category(params)
        spec = self._symbol(category, params, required=True)
        order = self._target(category, params, hidden=True)
        if order is None or spec is None or order.symbol != spec.symbol or not order.is_open:
            raise self._refusal(OrderError("unknown_order"), category)
        qty, price, trigger = (positive(params, k) for k in ("qty", "price", "triggerPrice"))
        if qty is None and price is None and trigger is None:
            raise BybitError(10001, "params error: nothing to amend")
        try:
            done = self.account.amend(
                order_id=order.order_id, qty=qty, price=price, stop_price=trigger
            )
        except OrderError as error:
            raise self._refusal(error, category) from None
        return {"orderId": order_id_text(category, done.order_id), "orderLinkId": done.client_id}

    def _cancel_all(self, params: Params) -> dict[str, Any]:
        category = self._category(params)
        spec = self._symbol(category, params)
        if category == LINEAR and spec is None and not params.get("settleCoin"):
            raise BybitError(10001, "params error: symbol or settleCoin is required")
        order_filter = params.get("orderFilter", "") if category == SPOT else ""
        done = []
        for order in self.account.open_orders(spec.symbol if spec else None, include_hidden=True):
            extra = self._extra(order)
            if extra.category != category or not self._book_matches(order, category, order_filter):
                continue
            self.extras.setdefault(order.order_id, extra).cancel_type = "CancelByUser"
            self.account.cancel(order_id=order.order_id)
            done.append(
                {"orderId": order_id_text(category, order.order_id), "orderLinkId": order.client_id}
            )
        return {"list": done, "success": "1"}

    # -- queries ---------------------------------------------------------------------------

    def _listing(self, params: Params, open_only: bool) -> tuple[str, list[FakeOrder]]:
        category = self._category(params)
        spec = self._symbol(category, params)
        if params.get("orderId") or params.get("orderLinkId"):
            order = self._target(category, params, hidden=False)
            found = [order] if order is not None else []
        else:
            symbol = spec.symbol if spec else None
            found = [o for o in self.account.orders(symbol) if self._extra(o).category == category]
            found = [o for o in found if o.is_open == open_only]
        if spec is not None:
            found = [o for o in found if o.symbol == spec.symbol]
        order_filter = params.get("orderFilter", "")
        found = [o for o in found if self._book_matches(o, category, order_filter)]
        return category, sorted(found, key=lambda o: o.created_ns, reverse=True)

    def _page(self, category: str, params: Params, rows: list[Any], limit: int) -> dict[str, Any]:
        try:
            size = max(1, min(int(params.get("limit") or limit), 100))
            start = int(params.get("cursor") or 0)
        except ValueError:
            raise BybitError(10001, "params error: limit or cursor invalid") from None
        page = rows[start : start + size]
        more = start + size < len(rows)
        return {
            "nextPageCursor": str(start + size) if more else "",
            "category": category,
            "list": page,
        }

    def _realtime(self, params: Params) -> dict[str, Any]:
        category = self._category(params)
        if category == LINEAR and not any(
            params.get(k) for k in ("symbol", "settleCoin", "baseCoin")
        ):
            raise BybitError(10001, "Missing some parameters that must be filled in")
        open_only = params.get("openOnly", "0") == "0"
        category, found = self._listing(params, open_only)
        rows = [order_row(self.fake.specs[o.symbol], o, self._extra(o)) for o in found]
        return self._page(category, params, rows, 20)

    def _history(self, params: Params) -> dict[str, Any]:
        category, found = self._listing(params, open_only=False)
        wanted = params.get("orderStatus", "")
        rows = []
        for order in found:
            row = order_row(self.fake.specs[order.symbol], order, self._extra(order))
            if row["orderStatus"] in FINISHED and wanted in ("", row["orderStatus"]):
                rows.append(row)
        return self._page(category, params, rows, 20)

    def _executions(self, params: Params) -> dict[str, Any]:
        category = self._category(params)
        spec = self._symbol(category, params)
        target = self._target(category, params, hidden=True)
        if (params.get("orderId") or params.get("orderLinkId")) and target is None:
            return self._page(category, params, [], 50)
        try:
            start = int(params["startTime"]) * MS if params.get("startTime") else None
            end = int(params["endTime"]) * MS if params.get("endTime") else None
        except ValueError:
            raise BybitError(10001, "params error: startTime or endTime invalid") from None
        orders = {o.order_id: o for o in self.account.orders(include_hidden=True)}
        rows = []
        fills = self.account.fills(spec.symbol if spec else None, start, target and target.order_id)
        for seq, fill in enumerate(fills, start=1):
            order = orders.get(fill.order_id)
            if order is None or self._extra(order).category != category:
                continue
            if end is not None and fill.ts_ns > end:
                continue
            rows.append(
                exec_row(self.fake.specs[fill.symbol], fill, order, self._extra(order), seq)
            )
        rows.reverse()
        return self._page(category, params, rows, 50)
