"""Kraken spot's private REST side, as ccxt 4.5.90 uses it, over ``matching.Account``.

Auth is Kraken's: ``API-Key`` (any non-empty key), ``API-Sign`` = base64 HMAC-SHA512 over
``path + SHA256(nonce + body)`` keyed with the base64-decoded secret, and a nonce that must
grow per key. The secret ccxt holds is ``ccxt_secret(fake)`` (``fake.api_secret``, base64 by
default; another string is encoded): tests put that in the variable the credentials name.
Fees are in the quote on both sides (``account.fee_asset = "quote"``); a stop or
take-profit already past its trigger is accepted and fires at once (``trigger_now="fill"``).
Failures are Kraken's words in an HTTP 200 envelope: ``EAPI:Invalid key``,
``EAPI:Invalid signature``, ``EAPI:Invalid nonce``.

ccxt's calls: ``createOrder`` -> ``AddOrder`` (``cl_ord_id`` from ``clientOrderId``;
``stopLossPrice``/``takeProfitPrice`` make ``stop-loss``/``stop-loss-limit``/``take-profit``;
``reduce_only=true``, which spot without margin refuses; ``timeinforce``; ``oflags=post``);
``cancelOrder`` -> ``CancelOrder`` (``txid`` or ``cl_ord_id``; a finished or unknown order is
``EOrder:Unknown order``); ``cancelOrders`` -> ``CancelOrderBatch``; ``cancelAllOrders`` ->
``CancelAll``; ``editOrder`` -> ``AmendOrder`` (in place, by ``txid`` or ``cl_ord_id``:
``order_qty``, ``limit_price`` of a limit type, ``trigger_price`` of a triggered type; a
quantity at or below the filled one cancels the rest, as Kraken documents; a trigger already
crossed fires at once, as on ``AddOrder``; the answer is only an ``amend_id``, which ccxt
reports as the order's id); ``fetchOrder`` -> ``QueryOrders`` (an
unknown txid is ``EOrder:Invalid order``; ccxt sends a ``clientOrderId`` as ``userref``, which
Kraken requires to be an integer: find an order by client id with ``fetchOpenOrders`` /
``fetchClosedOrders`` and ``params={"clientOrderId": ...}``, which send ``cl_ord_id``);
``fetchMyTrades`` -> ``TradesHistory`` (newest first, 50 a page); ``fetchBalance`` ->
``BalanceEx``; ccxt.pro's ``authenticate`` -> ``GetWebSocketsToken`` (the channel itself is
``kraken_executions.py``). Order ids are ``O``-txids and trade ids ``T``-txids that map back
to the engine's numbers (``txid``/``txid_number``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from tests.fakes.core import FakeExchange, SymbolSpec, fmt
from tests.fakes.kraken import KrakenSkin, asset_ids
from tests.fakes.matching import (
    LIMIT_TYPES,
    TRIGGERED_TYPES,
    FakeFill,
    FakeOrder,
    GateKind,
    OrderError,
)

TXID_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
TXID_SPACE = 32**16
TXID_MUL = 0x9E3779B97F4A7C15F39D | 1
TXID_INV = pow(TXID_MUL, -1, TXID_SPACE)
PAGE = 50
AUTO_ID = "auto-"
"""The engine's client id for an order placed without one: Kraken shows no ``cl_ord_id``."""
TOKEN_EXPIRES_S = 900
UUID = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")
"""A ``cl_ord_id`` is a UUID (long or short form) or free text of at most 18 characters."""
ERRORS = {
    "insufficient_balance": "EOrder:Insufficient funds",
    "min_notional": "EOrder:Cost minimum not met",
    "lot_size": "EOrder:Order minimum not met",
    "tick_size": "EGeneral:Invalid arguments:price",
    "unknown_order": "EOrder:Unknown order",
    "duplicate_client_id": "EOrder:Duplicate order",
    "reduce_only_rejected": "EOrder:Reduce only:No position exists",
    "would_trigger_immediately": "EGeneral:Invalid arguments:price",
    "post_only_rejected": "EOrder:Post only order",
    "bad_symbol": "EQuery:Unknown asset pair",
    "bad_request": "EGeneral:Invalid arguments",
}
ORDER_TYPES = {  # Kraken ordertype -> engine type
    "market": "market",
    "limit": "limit",
    "stop-loss": "stop",
    "stop-loss-limit": "stop_limit",
    "take-profit": "take_profit",
    "take-profit-limit": "take_profit_limit",
}
KRAKEN_TYPES = {engine: kraken for kraken, engine in ORDER_TYPES.items()}
REST_STATUS = {
    "new": "open",
    "partially_filled": "open",
    "filled": "closed",
    "canceled": "canceled",
    "rejected": "canceled",
    "expired": "expired",
}


class Refusal(Exception):
    """A request Kraken refuses, with Kraken's own error string."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def txid(prefix: str, number: int, salt: int = 0) -> str:
    """A Kraken-looking id (``OL7LNO-R4SAD-6UINEU``) that maps back to ``number``."""
    value = ((number + salt * 7919) * TXID_MUL) % TXID_SPACE
    chars = []
    for _ in range(16):
        value, digit = divmod(value, 32)
        chars.append(TXID_LETTERS[digit])
    text = "".join(chars)
    return f"{prefix}{text[:5]}-{text[5:10]}-{text[10:]}"


def txid_number(text: str, prefix: str, salt: int = 0) -> int | None:
    """The number behind a ``txid`` (None for anything that is not one of ours)."""
    raw = text.replace("-", "")
    if len(text) != 19 or len(raw) != 17 or not raw.startswith(prefix):
        return None
    value = 0
    for char in reversed(raw[1:]):
        digit = TXID_LETTERS.find(char)
        if digit < 0:
            return None
        value = value * 32 + digit
    return (value * TXID_INV) % TXID_SPACE - salt * 7919


def ccxt_secret(fake: FakeExchange) -> str:
    """The secret string ccxt must hold: Kraken secrets are base64 (the key is its bytes).
    ``fake.api_secret`` is one by default and is used as it is; any other string a test sets
    is taken as the key's bytes and encoded."""
    try:
        base64.b64decode(fake.api_secret, validate=True)
    except binascii.Error:
        return base64.b64encode(fake.api_secret.encode()).decode()
    return fake.api_secret


def sign(path: str, body: str, nonce: str, secret_b64: str) -> str:
    digest = hashlib.sha256((nonce + body).encode()).digest()
    mac = hmac.new(base64.b64decode(secret_b64), path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def flag(value: Any) -> bool:
    return str(value).lower() == "true"


class KrakenPrivate:
    """The private REST endpoints of one ``KrakenSkin``, and what they remember beyond the
    engine: nonces per key, websocket tokens, userrefs and order flags."""

    def __init__(self, skin: KrakenSkin) -> None:
        self.skin = skin
        self.fake = skin.fake
        self.nonces: dict[str, int] = {}
        self.tokens: set[str] = set()
        self.userrefs: dict[int, int] = {}
        self.oflags: dict[int, str] = {}
        self.amends = 0
        self.fake.account.fee_asset = "quote"  # Kraken spot charges the quote on both sides

    # -- REST ------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        handlers: dict[str, Callable[[dict[str, str]], Awaitable[Any]]] = {
            "AddOrder": self.add_order,
            "CancelOrder": self.cancel_order,
            "CancelAll": self.cancel_all,
            "CancelOrderBatch": self.cancel_order_batch,
            "AmendOrder": self.amend_order,
            "QueryOrders": self.query_orders,
            "OpenOrders": self.open_orders,
            "ClosedOrders": self.closed_orders,
            "TradesHistory": self.trades_history,
            "QueryTrades": self.query_trades,
            "Balance": self.balance,
            "BalanceEx": self.balance_ex,
            "GetWebSocketsToken": self.websockets_token,
        }
        return [
            web.post(f"/0/private/{name}", self.private(handler))
            for name, handler in handlers.items()
        ]

    def private(
        self, handler: Callable[[dict[str, str]], Awaitable[Any]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            body = (await request.read()).decode()
            if request.content_type == "application/json":
                raw = json.loads(body or "{}")
                params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}
            else:
                params = dict(parse_qsl(body, keep_blank_values=True))
            problem = self.authenticate(request, body, params)
            if problem:
                return self.skin.answer(errors=(problem,))
            try:
                return self.skin.answer(await handler(params))
            except OrderError as error:
                return self.skin.answer(errors=(ERRORS.get(error.code, ERRORS["bad_request"]),))
            except Refusal as refusal:
                return self.skin.answer(errors=(refusal.message,))

        return endpoint

    def authenticate(self, request: web.Request, body: str, params: dict[str, str]) -> str:
        key = request.headers.get("API-Key", "")
        if not key:
            return "EAPI:Invalid key"
        nonce = params.get("nonce", "")
        expected = sign(request.path, body, nonce, ccxt_secret(self.fake))
        if not hmac.compare_digest(request.headers.get("API-Sign", ""), expected):
            return "EAPI:Invalid signature"
        if not nonce.isdigit() or int(nonce) <= self.nonces.get(key, 0):
            return "EAPI:Invalid nonce"
        self.nonces[key] = int(nonce)
        return ""

    async def acted(self, kind: GateKind, action: Callable[[], FakeOrder]) -> FakeOrder:
        """``action`` on the engine, then the account's answer faults (held or never sent),
        a refusal included; a dropped request (``NoAnswer`` from the engine) skips them."""
        try:
            order = action()
        except OrderError:
            await self.fake.account.answer_gate(kind)
            raise
        await self.fake.account.answer_gate(kind)
        return order

    def spec(self, pair: str) -> SymbolSpec:
        spec = self.skin.spec_of(pair)
        if spec is None:
            raise Refusal(ERRORS["bad_symbol"])
        return spec

    def number(self, params: dict[str, str], name: str) -> float | None:
        text = params.get(name)
        if text is None or text == "":
            return None
        try:
            return float(text)
        except ValueError:
            raise Refusal(f"EGeneral:Invalid arguments:{name}") from None

    async def add_order(self, params: dict[str, str]) -> dict[str, Any]:
        spec = self.spec(params.get("pair", ""))
        side = params.get("type", "")
        kind = ORDER_TYPES.get(params.get("ordertype", ""))
        volume = self.number(params, "volume")
        if side not in ("buy", "sell"):
            raise Refusal("EGeneral:Invalid arguments:type")
        if kind is None:
            raise Refusal("EGeneral:Invalid arguments:ordertype")
        if volume is None or volume <= 0:
            raise Refusal("EGeneral:Invalid arguments:volume")
        first = self.number(params, "price")
        second = self.number(params, "price2")
        conditional = kind in TRIGGERED_TYPES
        price = (second if conditional else first) if kind in LIMIT_TYPES else None
        stop = first if conditional else None
        if kind in LIMIT_TYPES and price is None:
            raise Refusal("EGeneral:Invalid arguments:price")
        if conditional and stop is None:
            raise Refusal("EGeneral:Invalid arguments:price")
        oflags = params.get("oflags", "")
        tif = params.get("timeinforce", "GTC").upper()
        if tif not in ("GTC", "IOC"):
            raise Refusal("EGeneral:Invalid arguments:timeinforce")
        userref = params.get("userref", "")
        if userref and not userref.lstrip("-").isdigit():
            raise Refusal("EGeneral:Invalid arguments:userref")
        client_id = params.get("cl_ord_id", "")
        if len(client_id) > 18 and not UUID.fullmatch(client_id):
            raise Refusal("EGeneral:Invalid arguments:cl_ord_id")
        descr = {"order": self.description(spec, side, kind, volume, price, stop)}
        if flag(params.get("validate")):
            return {"descr": descr}
        order = await self.acted(
            "place",
            lambda: self.fake.account.place(
                spec.symbol,
                side,  # type: ignore[arg-type]
                kind,  # type: ignore[arg-type]
                volume,
                price=price,
                stop_price=stop,
                client_id=client_id,
                reduce_only=flag(params.get("reduce_only")),
                tif="GTX" if "post" in oflags.split(",") else tif,  # type: ignore[arg-type]
                trigger_now="fill",  # Kraken takes a trigger already passed and fires it
            ),
        )
        if userref:
            self.userrefs[order.order_id] = int(userref)
        self.oflags[order.order_id] = oflags
        return {"descr": descr, "txid": [txid("O", order.order_id)]}

    def description(
        self,
        spec: SymbolSpec,
        side: str,
        kind: str,
        qty: float,
        price: float | None,
        stop: float | None,
    ) -> str:
        tick = spec.tick_size
        head = f"{side} {qty:.8f} {self.skin.names[spec.symbol][1]} @ "
        if kind == "market":
            return head + "market"
        if kind == "limit":
            return head + f"limit {fmt(price or 0.0, tick, 1)}"
        words = "take profit" if kind.startswith("take_profit") else "stop loss"
        text = head + f"{words} {fmt(stop or 0.0, tick, 1)}"
        return text + (f" -> limit {fmt(price, tick, 1)}" if price is not None else "")

    def target(self, params: dict[str, str]) -> dict[str, Any]:
        """The engine's lookup keywords for a ``txid`` (ours or a userref) or ``cl_ord_id``."""
        client_id = params.get("cl_ord_id", "")
        if client_id:
            return {"client_id": client_id}
        given = params.get("txid", "")
        number = txid_number(given, "O")
        if number is None and given.lstrip("-").isdigit():
            refs = [oid for oid, ref in self.userrefs.items() if ref == int(given)]
            number = refs[-1] if refs else None
        if number is None:
            raise Refusal(ERRORS["unknown_order"])
        return {"order_id": number}

    async def cancel_order(self, params: dict[str, str]) -> dict[str, Any]:
        where = self.target(params)
        await self.acted("cancel", lambda: self.fake.account.cancel(**where))
        return {"count": 1}

    async def cancel_all(self, params: dict[str, str]) -> dict[str, Any]:
        account = self.fake.account
        orders = account.open_orders(include_hidden=True)
        for order in orders:
            account.cancel(order_id=order.order_id)
        await account.answer_gate("cancel")
        return {"count": len(orders)}

    async def cancel_order_batch(self, params: dict[str, str]) -> dict[str, Any]:
        """ccxt's ``cancelOrders``: a JSON body whose ``orders`` are txids or client ids."""
        account = self.fake.account
        count = 0
        for given in json.loads(params.get("orders", "[]")):
            number = txid_number(str(given), "O")
            where = {"order_id": number} if number is not None else {"client_id": str(given)}
            order = account.find(**where, include_hidden=True)
            if order is not None and order.is_open:
                account.cancel(order_id=order.order_id)
                count += 1
        await account.answer_gate("cancel")
        return {"count": count}

    async def amend_order(self, params: dict[str, str]) -> dict[str, Any]:
        where = self.target(params)
        order = self.fake.account.find(**where, include_hidden=True)
        if order is None or order.status not in ("new", "partially_filled"):
            raise Refusal(ERRORS["unknown_order"])
        qty = self.number(params, "order_qty")
        limit = self.number(params, "limit_price")
        trigger = self.number(params, "trigger_price")
        if limit is not None and order.type not in LIMIT_TYPES:
            raise Refusal("EGeneral:Invalid arguments:limit_price")
        if trigger is not None and order.type not in TRIGGERED_TYPES:
            raise Refusal("EGeneral:Invalid arguments:trigger_price")
        account = self.fake.account
        if qty is not None and qty <= order.filled + 1e-12:
            # Kraken: an amendment below the filled quantity cancels what remains.
            await self.acted("amend", lambda: account.cancel(order_id=order.order_id))
            self.amends += 1
            return {"amend_id": txid("T", self.amends, salt=3)}
        await self.acted(
            "amend",
            lambda: account.amend(
                **where, qty=qty, price=limit, stop_price=trigger, trigger_now="fill"
            ),
        )
        self.amends += 1
        return {"amend_id": txid("T", self.amends, salt=3)}

    async def query_orders(self, params: dict[str, str]) -> dict[str, Any]:
        userref = params.get("userref", "")
        if userref and not userref.lstrip("-").isdigit():
            raise Refusal("EGeneral:Invalid arguments:userref")
        result: dict[str, Any] = {}
        for given in filter(None, params.get("txid", "").split(",")):
            number = txid_number(given, "O")
            order = None if number is None else self.fake.account.find(order_id=number)
            if order is None:
                raise Refusal("EOrder:Invalid order")
            if userref and self.userrefs.get(order.order_id, 0) != int(userref):
                continue
            result[given] = self.order_info(order, flag(params.get("trades")))
        if not result and not params.get("txid"):
            raise Refusal("EGeneral:Invalid arguments:txid")
        return result

    def visible(self, orders: list[FakeOrder], params: dict[str, str]) -> list[FakeOrder]:
        client_id = params.get("cl_ord_id", "")
        userref = params.get("userref", "")
        out = []
        for order in orders:
            if client_id and order.client_id != client_id:
                continue
            if userref and str(self.userrefs.get(order.order_id, 0)) != userref:
                continue
            out.append(order)
        return out

    async def open_orders(self, params: dict[str, str]) -> dict[str, Any]:
        orders = self.visible(self.fake.account.open_orders(), params)
        trades = flag(params.get("trades"))
        return {"open": {txid("O", o.order_id): self.order_info(o, trades) for o in orders}}

    async def closed_orders(self, params: dict[str, str]) -> dict[str, Any]:
        done = [o for o in self.fake.account.orders() if REST_STATUS[o.status] != "open"]
        done = self.window(self.visible(done, params), params, lambda o: o.created_ns)
        done.reverse()
        offset = int(params.get("ofs", "0") or 0)
        trades = flag(params.get("trades"))
        page = done[offset : offset + PAGE]
        closed = {txid("O", o.order_id): self.order_info(o, trades) for o in page}
        return {"closed": closed, "count": len(done)}

    def window(self, rows: list[Any], params: dict[str, str], when: Callable[[Any], int]) -> list:
        """Kraken's ``start``/``end``: unix seconds, both exclusive."""
        start = self.number(params, "start")
        end = self.number(params, "end")
        return [
            r
            for r in rows
            if (start is None or when(r) > start * 1e9) and (end is None or when(r) < end * 1e9)
        ]

    def order_info(self, order: FakeOrder, with_trades: bool = False) -> dict[str, Any]:
        spec = self.fake.specs[order.symbol]
        tick, names = spec.tick_size, self.skin.names[order.symbol]
        kind = KRAKEN_TYPES[order.type]
        first = order.price if order.type == "limit" else order.stop_price
        second = order.price if order.type in ("stop_limit", "take_profit_limit") else None
        status = REST_STATUS[order.status]
        fills = self.fake.account.fills(order_id=order.order_id)
        info: dict[str, Any] = {
            "refid": None,
            "userref": self.userrefs.get(order.order_id, 0),
            "status": status,
            "opentm": order.created_ns / 1e9,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": names[1],
                "type": order.side,
                "ordertype": kind,
                "price": fmt(first, tick, 1) if first is not None else "0",
                "price2": fmt(second, tick, 1) if second is not None else "0",
                "leverage": "none",
                "order": self.description(
                    spec, order.side, order.type, order.qty, order.price, order.stop_price
                ),
                "close": "",
            },
            "vol": f"{order.qty:.8f}",
            "vol_exec": f"{order.filled:.8f}",
            "cost": fmt(order.filled * order.avg_price, tick, 5),
            "fee": f"{order.fee_paid:.8f}",
            "price": fmt(order.avg_price, tick, 5),
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": self.fee_flags(order, fills),
            "reason": "User requested" if order.status == "canceled" else None,
        }
        if not order.client_id.startswith(AUTO_ID):
            info["cl_ord_id"] = order.client_id
        if status != "open":
            info["closetm"] = order.updated_ns / 1e9
        if with_trades and fills:
            info["trades"] = [txid("T", f.trade_id) for f in fills]
        return info

    def fee_flags(self, order: FakeOrder, fills: list[FakeFill]) -> str:
        base = self.fake.specs[order.symbol].base
        fee = "fcib" if fills and fills[0].fee_currency == base else "fciq"
        given = [f for f in self.oflags.get(order.order_id, "").split(",") if f == "post"]
        return ",".join([*given, fee])

    def trade_info(self, fill: FakeFill) -> dict[str, Any]:
        spec = self.fake.specs[fill.symbol]
        tick, lot = spec.tick_size, spec.lot_size
        order = self.fake.account.find(order_id=fill.order_id, include_hidden=True)
        kind = KRAKEN_TYPES[order.type] if order is not None else "market"
        return {
            "ordertxid": txid("O", fill.order_id),
            "postxid": txid("T", fill.trade_id, salt=5),
            "pair": self.skin.names[fill.symbol][0],
            "time": fill.ts_ns / 1e9,
            "type": fill.side,
            "ordertype": kind.replace("-", " ") if "-" in kind else kind,
            "price": fmt(fill.price, tick, 5),
            "cost": fmt(fill.qty * fill.price, tick, 5),
            "fee": f"{fill.fee:.8f}",
            "vol": fmt(fill.qty, lot, 8),
            "margin": "0.00000",
            "leverage": "0",
            "misc": "",
            "trade_id": fill.trade_id,
            "maker": fill.maker,
        }

    async def trades_history(self, params: dict[str, str]) -> dict[str, Any]:
        fills = self.window(self.fake.account.fills(), params, lambda f: f.ts_ns)
        fills.reverse()
        offset = int(params.get("ofs", "0") or 0)
        page = fills[offset : offset + PAGE]
        trades = {txid("T", f.trade_id): self.trade_info(f) for f in page}
        return {"trades": trades, "count": len(fills)}

    async def query_trades(self, params: dict[str, str]) -> dict[str, Any]:
        wanted = {txid_number(t, "T") for t in params.get("txid", "").split(",") if t}
        fills = [f for f in self.fake.account.fills() if f.trade_id in wanted]
        if not fills:
            raise Refusal("EOrder:Invalid order")
        return {txid("T", f.trade_id): self.trade_info(f) for f in fills}

    def amounts(self) -> dict[str, tuple[str, float, float]]:
        """Kraken asset id -> (unified code, total, held for open orders)."""
        out = {}
        for code, balance in self.fake.account.balances.items():
            out[asset_ids(code)[0]] = (code, balance.free + balance.used, balance.used)
        return out

    async def balance(self, params: dict[str, str]) -> dict[str, Any]:
        return {asset: f"{total:.10f}" for asset, (_, total, _) in self.amounts().items()}

    async def balance_ex(self, params: dict[str, str]) -> dict[str, Any]:
        return {
            asset: {"balance": f"{total:.10f}", "hold_trade": f"{held:.10f}"}
            for asset, (_, total, held) in self.amounts().items()
        }

    async def websockets_token(self, params: dict[str, str]) -> dict[str, Any]:
        token = base64.b64encode(secrets.token_bytes(32)).decode()
        self.tokens.add(token)
        return {"token": token, "expires": TOKEN_EXPIRES_S}
