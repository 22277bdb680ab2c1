"""Kraken Futures' signed requests and order endpoints, as ccxt 4.5 uses them (``sendorder``,
``editorder``, ``cancelorder``, ``cancelallorders``, ``openorders``, ``orders/status``);
``tests.fakes.matching`` does the matching, this module only speaks Kraken.

Signing: ``Authent = base64(HMAC-SHA512(base64decode(secret), SHA256(postData + Nonce +
endpointPath)))``, ``endpointPath`` the path without ``/derivatives`` (``/api/v3/sendorder``)
and ``postData`` the query string (ccxt puts every parameter there, POST too) or the body.
ccxt sends no ``Nonce``; one that comes is signed in. Kraken secrets are base64: the fake's
``api_secret`` must be one (the core's default and ``TEST_SECRET`` are), else every private
request fails with ``authenticationError``, as a wrong key does. The websocket
``challenge`` is signed the same way over the challenge text alone.

Requests answer ``{"result": "success", ...}`` with the outcome in ``sendStatus`` /
``cancelStatus`` / ``editStatus`` ``status``: ``placed``, ``cancelled``, ``edited``, or a
refusal (``insufficientAvailableFunds``, ``invalidSize``, ``invalidPrice``, ``notFound``,
``filled``, ``orderForEditNotFound``, ``postWouldExecute``, ``iocWouldNotExecute``,
``wouldNotReducePosition``, ``clientOrderIdAlreadyExist``...). ``native_rejects`` makes the
next orders fail with any Kraken status, e.g. ``wouldCauseLiquidation``, which ccxt does not
raise on: it returns an order with status ``rejected`` (the word in ``info["status"]``).
``editorder``'s ``size`` is the new open size (Kraken's default ``qtyMode``); ``triggerSignal``
is recorded and shown, but every trigger fires on the last price (the engine's).

``orders/status`` lists only open orders and those finished in the last ``status_window_s``
(5) exchange seconds, as Kraken's does: an older order is simply not there, which is not
proof that it never existed (``fills`` and ``/api/history/v2/orders`` still know it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import msgspec
from aiohttp import web

from tests.fakes.core import NS, SymbolSpec
from tests.fakes.kraken import iso, number
from tests.fakes.matching import TAKE_PROFIT_TYPES, FakeFill, FakeOrder, OrderError

if TYPE_CHECKING:
    from tests.fakes.krakenfutures import KrakenFuturesSkin

TEST_SECRET = base64.b64encode(b"keel fake kraken futures secret").decode()
"""A secret in Kraken's form (base64) for ``fake.api_secret`` and the test environment."""
ACCOUNT_UID = str(uuid.uuid5(uuid.NAMESPACE_URL, "krakenfutures:account"))
FILLS_KEPT = 100
STATUSES = {
    "insufficient_balance": "insufficientAvailableFunds",
    "min_notional": "invalidSize",
    "lot_size": "invalidSize",
    "tick_size": "invalidPrice",
    "duplicate_client_id": "clientOrderIdAlreadyExist",
    "reduce_only_rejected": "wouldNotReducePosition",
    "would_trigger_immediately": "invalidPrice",
    "post_only_rejected": "postWouldExecute",
    "bad_request": "invalidArgument",
}
WS_TYPES = {"lmt": "limit", "post": "limit", "ioc": "limit", "mkt": "market"}
Handler = Callable[[web.Request, dict[str, str]], Awaitable[web.Response]]


def order_uid(order_id: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"krakenfutures:order:{order_id}"))


def fill_uid(trade_id: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"krakenfutures:fill:{trade_id}"))


def client_of(client_id: str) -> str | None:
    """The ``cliOrdId`` Kraken shows: none for an order placed without one (the engine's
    ``auto-`` ids are its own)."""
    return None if not client_id or client_id.startswith("auto-") else client_id


def sign(secret: str, message: str) -> str:
    """Kraken Futures' signature of ``message``; raises ``ValueError`` for a secret that is
    not base64."""
    try:
        key = base64.b64decode(secret, validate=True)
    except binascii.Error as error:
        raise ValueError("the secret is not base64") from error
    digest = hashlib.sha256(message.encode()).digest()
    return base64.b64encode(hmac.new(key, digest, hashlib.sha512).digest()).decode()


def kraken_type(order: FakeOrder) -> str:
    """The ``orderType`` a client would have sent for this engine order."""
    if order.type == "market":
        return "mkt"
    if order.type == "limit":
        return {"IOC": "ioc", "FOK": "ioc", "GTX": "post"}.get(order.tif, "lmt")
    return "take_profit" if order.type in TAKE_PROFIT_TYPES else "stp"


class KrakenFuturesOrders:
    """Signed requests, and the order endpoints of one Kraken Futures fake."""

    def __init__(self, skin: KrakenFuturesSkin) -> None:
        self.skin = skin
        self.fake = skin.fake
        self.account = skin.fake.account
        self.status_window_s = 5.0
        self.native_rejects: list[str] = []
        """Kraken statuses the next ``sendorder`` calls answer with (any word Kraken uses)."""
        self.signals: dict[int, str] = {}
        self.signal_next = "last"
        self.uids: dict[str, int] = {}

    # -- REST plumbing ---------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        api = "/derivatives/api/v3"
        return [
            web.post(f"{api}/sendorder", self.private(self.send_order)),
            web.post(f"{api}/editorder", self.private(self.edit_order)),
            web.post(f"{api}/cancelorder", self.private(self.cancel_order)),
            web.post(f"{api}/cancelallorders", self.private(self.cancel_all)),
            web.get(f"{api}/openorders", self.private(self.open_orders)),
            web.get(f"{api}/orders/status", self.private(self.orders_status)),
            web.post(f"{api}/orders/status", self.private(self.orders_status)),
        ]

    def private(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def checked(request: web.Request) -> web.Response:
            body = await request.text()
            post_data = body or request.rel_url.raw_query_string
            if not self.signed(request, post_data):
                return self.skin.answer({"result": "error", "error": "authenticationError"}, 401)
            pairs = parse_qsl(body or request.rel_url.raw_query_string, keep_blank_values=True)
            params: dict[str, str] = {}
            for key, value in pairs:  # repeated keys (orderIds=a&orderIds=b) join with ","
                params[key] = f"{params[key]},{value}" if key in params else value
            return await handler(request, params)

        return checked

    def signed(self, request: web.Request, post_data: str) -> bool:
        given = request.headers.get("Authent", "")
        if not request.headers.get("APIKey") or not given:
            return False
        endpoint = request.path.removeprefix("/derivatives")
        nonce = request.headers.get("Nonce", "")
        canonical = urlencode(parse_qsl(post_data, keep_blank_values=True))
        try:
            wanted = {
                sign(self.fake.api_secret, d + nonce + endpoint) for d in (post_data, canonical)
            }
        except ValueError:
            return False
        return any(hmac.compare_digest(given, w) for w in wanted)

    def ok(self, body: dict[str, Any]) -> web.Response:
        return self.skin.answer({"result": "success"} | body)

    def spec_of(self, params: dict[str, str]) -> SymbolSpec | None:
        return self.skin.by_id.get(params.get("symbol", "").upper())

    def lookup(self, uid: str) -> int | None:
        if uid not in self.uids:
            for order in self.account.orders(include_hidden=True):
                self.uids[order_uid(order.order_id)] = order.order_id
        return self.uids.get(uid)

    def target(self, params: dict[str, str], *keys: str) -> tuple[int | None, str | None]:
        """The engine order id (from the Kraken uuid) or client id a request names."""
        for key in keys:
            if params.get(key):
                return self.lookup(params[key]) or -1, None
        return None, params.get("cliOrdId") or None

    # -- orders ----------------------------------------------------------------------------

    async def send_order(self, request: web.Request, params: dict[str, str]) -> web.Response:
        spec = self.spec_of(params)
        received = iso(self.fake.now_ns(), 3)
        if spec is None:
            return self.skin.answer({"result": "error", "error": "contractNotFound"}, 400)
        kind = params.get("orderType", "")
        try:
            size = float(params.get("size", ""))
            limit = float(params["limitPrice"]) if params.get("limitPrice") else None
            stop = float(params["stopPrice"]) if params.get("stopPrice") else None
        except ValueError:
            return self.refusal("sendStatus", "invalidArgument", received)
        if params.get("side") not in ("buy", "sell"):
            return self.refusal("sendStatus", "invalidSide", received)
        shape = self.shape(kind, limit, stop)
        if isinstance(shape, str):
            return self.refusal("sendStatus", shape, received)
        if self.native_rejects:
            status = self.native_rejects.pop(0)
            await self.account.answer_gate("place")
            return self.refusal("sendStatus", status, received)
        engine_type, tif = shape
        self.signal_next = params.get("triggerSignal", "last")
        try:
            order = self.account.place(
                spec.symbol,
                "buy" if params["side"] == "buy" else "sell",
                engine_type,
                size,
                price=limit,
                stop_price=stop,
                client_id=params.get("cliOrdId", ""),
                reduce_only=params.get("reduceOnly", "").lower() == "true",
                tif=tif,
            )
        except OrderError as error:
            await self.account.answer_gate("place")
            return self.refused(error, "sendStatus", received)
        await self.account.answer_gate("place")
        fills = self.account.fills(order_id=order.order_id)
        if order.status == "expired" and not fills:
            status = "postWouldExecute" if tif == "GTX" else "iocWouldNotExecute"
            return self.refusal("sendStatus", status, received)
        events = self.executions(order, fills)
        if order.is_open:
            events.append(self.place_event(order))
        out: dict[str, Any] = {
            "order_id": order_uid(order.order_id),
            "status": "placed",
            "receivedTime": received,
            "orderEvents": events,
        }
        if params.get("cliOrdId"):
            out["cliOrdId"] = params["cliOrdId"]
        return self.ok({"sendStatus": out})

    @staticmethod
    def shape(kind: str, limit: float | None, stop: float | None) -> tuple[Any, Any] | str:
        """Engine (type, time in force) of a Kraken ``orderType``, or the refusal status."""
        if kind in ("lmt", "post", "ioc"):
            if limit is None:
                return "invalidPrice"
            return "limit", {"lmt": "GTC", "post": "GTX", "ioc": "IOC"}[kind]
        if kind == "mkt":
            return "market", "GTC"
        if kind == "stp":
            if stop is None:
                return "invalidPrice"
            return ("stop_limit" if limit is not None else "stop"), "GTC"
        if kind == "take_profit":
            if stop is None:
                return "invalidPrice"
            return ("take_profit_limit" if limit is not None else "take_profit"), "GTC"
        return "invalidOrderType"

    def refused(self, error: OrderError, envelope: str, received: str) -> web.Response:
        if error.code == "bad_symbol":
            return self.skin.answer({"result": "error", "error": "marketInactive"}, 400)
        if error.code == "unknown_order":
            status = "orderForEditNotFound" if envelope == "editStatus" else "notFound"
            return self.refusal(envelope, status, received)
        return self.refusal(envelope, STATUSES[error.code], received)

    def refusal(self, envelope: str, status: str, received: str) -> web.Response:
        return self.ok({envelope: {"status": status, "receivedTime": received, "orderEvents": []}})

    async def cancel_order(self, request: web.Request, params: dict[str, str]) -> web.Response:
        received = iso(self.fake.now_ns(), 3)
        order_id, client_id = self.target(params, "order_id", "orderId")
        if order_id is None and client_id is None:
            return self.skin.answer({"result": "error", "error": "requiredArgumentMissing"}, 400)
        found = self.account.find(order_id=order_id, client_id=client_id, include_hidden=True)
        try:
            order = self.account.cancel(order_id=order_id, client_id=client_id)
        except OrderError:
            await self.account.answer_gate("cancel")
            status = "filled" if found is not None and found.status == "filled" else "notFound"
            return self.refusal("cancelStatus", status, received)
        await self.account.answer_gate("cancel")
        event = self.order_event(order) | {"uid": order_uid(order.order_id), "type": "CANCEL"}
        out = {
            "status": "cancelled",
            "order_id": order_uid(order.order_id),
            "receivedTime": received,
            "orderEvents": [event],
        }
        if params.get("cliOrdId"):
            out["cliOrdId"] = params["cliOrdId"]
        return self.ok({"cancelStatus": out})

    async def cancel_all(self, request: web.Request, params: dict[str, str]) -> web.Response:
        spec = self.spec_of(params)
        symbol = spec.symbol if spec is not None else None
        events, cancelled = [], []
        for order in self.account.open_orders(symbol, include_hidden=True):
            self.account.cancel(order_id=order.order_id)
            uid = order_uid(order.order_id)
            cancelled.append({"order_id": uid, "cliOrdId": client_of(order.client_id)})
            events.append(self.order_event(order) | {"uid": uid, "type": "CANCEL"})
        await self.account.answer_gate("cancel")
        out = {
            "receivedTime": iso(self.fake.now_ns(), 3),
            "cancelOnly": params.get("symbol", "all").upper() if spec else "all",
            "status": "cancelled" if cancelled else "noOrdersToCancel",
            "cancelledOrders": cancelled,
            "orderEvents": events,
        }
        return self.ok({"cancelStatus": out})

    async def edit_order(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """``size`` is the new OPEN size (Kraken's default ``qtyMode`` relative): the engine's
        total is what filled plus it."""
        received = iso(self.fake.now_ns(), 3)
        order_id, client_id = self.target(params, "orderId", "order_id")
        before = self.account.find(order_id=order_id, client_id=client_id, include_hidden=True)
        if before is None or not before.is_open:
            await self.account.answer_gate("amend")
            return self.refusal("editStatus", "orderForEditNotFound", received)
        old = msgspec.structs.replace(before)
        try:
            size = float(params["size"]) if params.get("size") else None
            limit = float(params["limitPrice"]) if params.get("limitPrice") else None
            stop = float(params["stopPrice"]) if params.get("stopPrice") else None
        except ValueError:
            return self.refusal("editStatus", "invalidArgument", received)
        if stop is not None and old.stop_price is None:
            return self.refusal("editStatus", "orderForEditNotAStop", received)
        try:
            order = self.account.amend(
                order_id=old.order_id,
                qty=None if size is None else round(old.filled + size, 12),
                price=limit,
                stop_price=stop,
            )
        except OrderError as error:
            await self.account.answer_gate("amend")
            return self.refused(error, "editStatus", received)
        await self.account.answer_gate("amend")
        event = {
            "old": self.order_event(old)["order"],
            "new": self.order_event(order)["order"],
            "reducedQuantity": None,
            "type": "EDIT",
        }
        out = {
            "status": "edited",
            "orderId": order_uid(order.order_id),
            "receivedTime": received,
            "orderEvents": [event],
        }
        return self.ok({"editStatus": out})

    # -- order shapes ----------------------------------------------------------------------

    def order_body(self, order: FakeOrder, filled: float | None = None) -> dict[str, Any]:
        spec = self.fake.specs[order.symbol]
        return {
            "orderId": order_uid(order.order_id),
            "cliOrdId": client_of(order.client_id),
            "type": kraken_type(order),
            "symbol": self.skin.ids[order.symbol],
            "side": order.side,
            "quantity": number(order.qty, spec.lot_size),
            "filled": number(order.filled if filled is None else filled, spec.lot_size),
            "limitPrice": order.price,
            "reduceOnly": order.reduce_only,
            "timestamp": iso(order.created_ns, 3),
            "lastUpdateTimestamp": iso(order.updated_ns, 3),
        }

    def trigger_body(self, order: FakeOrder) -> dict[str, Any]:
        spec = self.fake.specs[order.symbol]
        rising = (order.side == "buy") == (order.type not in TAKE_PROFIT_TYPES)
        return {
            "uid": order_uid(order.order_id),
            "clientId": client_of(order.client_id),
            "type": "lmt" if order.price is not None else "ioc",
            "symbol": self.skin.ids[order.symbol],
            "side": order.side,
            "quantity": number(order.qty, spec.lot_size),
            "limitPrice": order.price,
            "triggerPrice": order.stop_price,
            "triggerSide": "trigger_above" if rising else "trigger_below",
            "triggerSignal": f"{self.signals.get(order.order_id, 'last')}_price",
            "reduceOnly": order.reduce_only,
            "timestamp": iso(order.created_ns, 3),
            "lastUpdateTimestamp": iso(order.updated_ns, 3),
        }

    def order_event(self, order: FakeOrder) -> dict[str, Any]:
        """The order as an ``orderEvents`` entry shows it: a waiting trigger order as
        ``orderTrigger``, anything else as ``order``."""
        if order.stop_price is not None and not order.triggered:
            return {"orderTrigger": self.trigger_body(order)}
        return {"order": self.order_body(order)}

    def place_event(self, order: FakeOrder) -> dict[str, Any]:
        return self.order_event(order) | {"reducedQuantity": None, "type": "PLACE"}

    def executions(self, order: FakeOrder, fills: list[FakeFill]) -> list[dict[str, Any]]:
        spec = self.fake.specs[order.symbol]
        events, done = [], 0.0
        for fill in fills:
            events.append(
                {
                    "type": "EXECUTION",
                    "executionId": fill_uid(fill.trade_id),
                    "price": fill.price,
                    "amount": number(fill.qty, spec.lot_size),
                    "orderPriorEdit": None,
                    "orderPriorExecution": self.order_body(order, done),
                    "takerReducedQuantity": None,
                }
            )
            done += fill.qty
        return events

    # -- queries ---------------------------------------------------------------------------

    async def open_orders(self, request: web.Request, params: dict[str, str]) -> web.Response:
        rows = [self.open_row(o) for o in self.account.open_orders()]
        return self.ok({"openOrders": rows})

    def open_row(self, order: FakeOrder) -> dict[str, Any]:
        spec = self.fake.specs[order.symbol]
        trigger = order.stop_price is not None and not order.triggered
        row: dict[str, Any] = {
            "order_id": order_uid(order.order_id),
            "cliOrdId": client_of(order.client_id),
            "symbol": self.skin.ids[order.symbol],
            "side": order.side,
            "orderType": ("take_profit" if order.type in TAKE_PROFIT_TYPES else "stop")
            if trigger
            else kraken_type(order),
            "unfilledSize": number(order.remaining, spec.lot_size),
            "receivedTime": iso(order.created_ns, 3),
            "status": "partiallyFilled" if order.filled > 0 else "untouched",
            "filledSize": number(order.filled, spec.lot_size),
            "reduceOnly": order.reduce_only,
            "lastUpdateTime": iso(order.updated_ns, 3),
        }
        if order.price is not None:
            row["limitPrice"] = order.price
        if trigger:
            row["stopPrice"] = order.stop_price
            row["triggerSignal"] = self.signals.get(order.order_id, "last")
        return row

    async def orders_status(self, request: web.Request, params: dict[str, str]) -> web.Response:
        ids = [i for i in params.get("orderIds", "").split(",") if i]
        clients = [c for c in params.get("cliOrdIds", "").split(",") if c]
        horizon = self.fake.now_ns() - int(self.status_window_s * NS)
        rows = []
        for order in self.account.orders():
            if order.is_open or order.updated_ns >= horizon:
                wanted = not ids and not clients
                if (
                    wanted
                    or order_uid(order.order_id) in ids
                    or client_of(order.client_id) in clients
                ):
                    rows.append(self.status_row(order))
        return self.ok({"orders": rows})

    def status_row(self, order: FakeOrder) -> dict[str, Any]:
        trigger = order.stop_price is not None and not order.triggered
        body = self.order_body(order) | {
            "type": "TRIGGER_ORDER" if trigger else "ORDER",
            "algoId": None,
            "priceTriggerOptions": None,
            "triggerTime": None,
        }
        if order.stop_price is not None:
            body["priceTriggerOptions"] = {
                "triggerPrice": order.stop_price,
                "triggerSignal": self.signals.get(order.order_id, "last").upper(),
                "triggerSide": self.trigger_body(order)["triggerSide"].upper(),
            }
        if order.is_open:
            status = "TRIGGER_PLACED" if trigger else "ENTERED_BOOK"
            reason = "PARTIAL_FILL" if order.filled > 0 else None
        elif order.status == "filled":
            status, reason = "FULLY_EXECUTED", "FULL_FILL"
        else:
            status = "CANCELLED"
            reason = "CANCELLED_BY_USER" if order.status == "canceled" else "NOT_EXECUTED"
        return {"order": body, "status": status, "updateReason": reason, "error": None}
