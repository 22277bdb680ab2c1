"""The exchange calls a gateway makes, through ccxt, with each exchange's own parameters.

Every order carries Keel's deterministic client id (``clientOrderId``: ccxt sends it as
Binance ``newClientOrderId``/``clientAlgoId``, Bybit ``orderLinkId``, Kraken ``cl_ord_id``,
Kraken Futures ``cliOrdId``). Stops are ``triggerPrice`` orders (Kraken spot:
``stopLossPrice``; Bybit contracts also name the trigger direction); Binance USDT-M routes
them to its algo endpoints, so queries and cancels of a stop there say ``trigger``.
``reduceOnly`` goes to contract markets only (spot has no such flag). Kraken Futures takes
immediate-or-cancel only as a lower-case ``ioc`` and has no fill-or-kill (refused here, never
sent as a resting order).

A spot account locks the asset each open order may spend, so a protective leg cannot be
placed again before the old one is gone (``locks_balance``); Binance spot replaces it in one
request (``order/cancelReplace``, ``replace``) and says which half failed
(``replace_failure``). Bybit's conditional orders hold nothing until they trigger (and are
cancelled then if the account cannot cover them), so on Bybit spot a bracket's target goes
out as a conditional take-profit-limit too (``triggerPrice`` = its limit): neither leg holds
the base, whichever triggers first sells it, and a moved stop is placed before the old one
is canceled. Kraken spot and IB move a stop in place instead (``AmendOrder``; IB's modify,
``edit``): one order, never off the exchange; ``carries`` tells whether an order already has
a leg's values. At IB the closing legs of one bracket share an OCA group (``ocaGroup``), so
IB cancels the target when the stop fills and the stop when the target does.

``classify`` sorts ccxt's exceptions: a refusal (``rejected``, with the exchange's own
message), an outcome nobody knows (``unknown``: timeouts, dropped connections, 5xx), or a
rate limit (``backoff``: the same request again after a jittered wait).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, TypeVar

import ccxt
import ccxt.pro
import msgspec

from contracts.venue_events import VenueOrder
from services.runtime.clock import Clock
from services.venues.ccxt_exchange import Redactor
from services.venues.ib.ib_orders import oca_group

Outcome = Literal["rejected", "unknown", "backoff"]
T = TypeVar("T")
REASON_MAX = 300
_JSON_MSG = re.compile(r'"(?:msg|retMsg|message|error)"\s*:\s*\[?\s*"([^"]+)"')


def classify(exc: BaseException) -> Outcome:
    """What an exception from an exchange call means for the order it was about."""
    if isinstance(exc, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
        return "backoff"
    if isinstance(exc, ccxt.ExchangeError):  # the exchange refused: a bad key included
        return "rejected"
    return "unknown"  # network trouble, 5xx, a bad answer, a nonce, anything unforeseen


def exchange_reason(exc: BaseException, redactor: Redactor, exchange_id: str = "") -> str:
    """The exchange's own words for a refusal (its JSON ``msg``/``retMsg``/``error`` when
    ccxt quotes the body), with the exception class; secrets redacted, length bounded."""
    text = redactor.redact(str(exc))
    found = _JSON_MSG.search(text)
    words = found.group(1) if found else text.removeprefix(f"{exchange_id} ")
    code = re.search(r'"(?:code|retCode)"\s*:\s*(-?\d+)', text)
    prefix = f"{type(exc).__name__}"
    if code:
        prefix += f" {code.group(1)}"
    return f"{prefix}: {words}"[:REASON_MAX]


class ReplaceFailure(msgspec.Struct, frozen=True):
    """What a refused Binance cancel-replace did: whether the old order was canceled, and
    why the new one was not placed (the exchange's words)."""

    canceled: bool
    reason: str


def replace_failure(exc: BaseException, redactor: Redactor) -> ReplaceFailure | None:
    """The halves of a refused ``order/cancelReplace`` (-2021 one failed, -2022 both, its
    ``data`` quoted by ccxt); None for any other error."""
    text = str(exc)
    start = text.find("{")
    try:
        body = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        return None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or "cancelResult" not in data:
        return None
    canceled = data.get("cancelResult") == "SUCCESS"
    if data.get("newOrderResult") == "NOT_ATTEMPTED":
        said = data.get("cancelResponse") or {}
        why = f"not placed: the cancel of the old order failed ({said.get('msg', '')})"
    else:
        said = data.get("newOrderResponse") or {}
        why = f"{said.get('code', '')}: {said.get('msg', '')}"
    words = redactor.redact(f"{type(exc).__name__} {why}")[:REASON_MAX]
    return ReplaceFailure(canceled, words)


def backoff_s(attempt: int, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, 0.5 * 2**attempt)]."""
    return rng.uniform(0.0, min(cap, 0.5 * 2 ** min(attempt, 16)))


class OrderCalls:
    """One exchange's order calls, shaped for its ccxt class; every call rides out rate
    limits (``backoff``) and raises anything else for the caller to classify."""

    def __init__(
        self,
        exchange: ccxt.pro.Exchange,
        clock: Clock,
        backoff_max_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.exchange = exchange
        self.id: str = exchange.id
        self.clock = clock
        self.backoff_max_s = backoff_max_s
        self.rng = rng or random.Random()
        self.backoffs = 0

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        attempt = 0
        while True:
            try:
                return await make()
            except (ccxt.DDoSProtection, ccxt.RateLimitExceeded):
                self.backoffs += 1
                await self.clock.sleep(backoff_s(attempt, self.backoff_max_s, self.rng))
                attempt += 1

    @property
    def per_symbol(self) -> bool:
        """Binance and Bybit list open orders per symbol (Binance: ccxt warns without one,
        and all symbols at once weigh 40 times one; Bybit: a listing is of one category)."""
        return self.id in ("binance", "binanceusdm", "bybit")

    @property
    def rest_fills_lack_fee(self) -> bool:
        """Kraken Futures' REST fills carry no fee: only its stream's fills say it."""
        return self.id == "krakenfutures"

    def is_contract(self, symbol: str) -> bool:
        market = self.exchange.markets.get(symbol) if self.exchange.markets else None
        return bool(market and market.get("contract"))

    def algo(self, leg: VenueOrder) -> bool:
        """Whether the exchange keeps this leg apart from plain orders (Binance USDT-M's algo
        orders, Bybit's conditional orders, spot ones too): queries and cancels say so."""
        if self.bybit_target(leg):
            return True
        if leg.stop_price is None:
            return False
        return self.id == "bybit" or (self.id == "binanceusdm" and self.is_contract(leg.symbol))

    def bybit_target(self, leg: VenueOrder) -> bool:
        """A bracket's target on Bybit spot (the one reduce-only limit the order manager
        sends that protects nothing), sent as a conditional take-profit-limit."""
        return (
            self.id == "bybit"
            and leg.order_type == "limit"
            and leg.reduce_only
            and not leg.protective
            and not self.is_contract(leg.symbol)
        )

    def locks_balance(self, leg: VenueOrder) -> bool:
        """Whether each open order of this market holds what it may spend (spot), so a
        second protective leg is refused while the first still holds the position. Bybit's
        conditional orders hold nothing until they trigger."""
        if self.id == "bybit" and (leg.stop_price is not None or self.bybit_target(leg)):
            return False
        return not self.is_contract(leg.symbol)

    def replaces_at_once(self, leg: VenueOrder) -> bool:
        """Whether the exchange cancels and places in one request (Binance spot)."""
        return self.id == "binance" and not self.is_contract(leg.symbol)

    def order_params(self, leg: VenueOrder) -> dict[str, Any]:
        params: dict[str, Any] = {"clientOrderId": leg.venue_client_id}
        if leg.stop_price is not None:
            if self.id == "kraken":
                params["stopLossPrice"] = leg.stop_price
            else:
                params["triggerPrice"] = leg.stop_price
            if self.id == "bybit" and self.is_contract(leg.symbol):
                params["triggerDirection"] = "ascending" if leg.side == "buy" else "descending"
        elif self.bybit_target(leg):
            params["triggerPrice"] = leg.limit_price  # Bybit spot: above the market, rising
        if leg.reduce_only and self.is_contract(leg.symbol):
            params["reduceOnly"] = True
        if self.id == "ib" and (leg.reduce_only or leg.protective):
            params["ocaGroup"] = oca_group(leg.client_order_id)
        if leg.order_type in ("limit", "stop_limit"):
            params["timeInForce"] = leg.time_in_force
            if self.id == "krakenfutures":
                if leg.time_in_force == "FOK":
                    raise ccxt.InvalidOrder("krakenfutures has no fill-or-kill orders")
                params["timeInForce"] = leg.time_in_force.lower()
        return params

    def _query_params(self, leg: VenueOrder) -> dict[str, Any]:
        return {"trigger": True} if self.algo(leg) else {}

    async def submit(self, leg: VenueOrder) -> dict[str, Any]:
        kind = "limit" if leg.order_type in ("limit", "stop_limit") else "market"
        return await self.call(
            lambda: self.exchange.create_order(
                leg.symbol, kind, leg.side, leg.qty, leg.limit_price, self.order_params(leg)
            )
        )

    async def replace(
        self, old: VenueOrder, new: VenueOrder
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Binance spot ``order/cancelReplace`` (``STOP_ON_FAILURE``: nothing is placed when
        the cancel fails): the old order canceled by its client id and the new one placed
        under its own, in one request. The exchange's answers for both, as ccxt orders."""
        exchange = self.exchange
        market = exchange.market(new.symbol)
        kind = "limit" if new.order_type in ("limit", "stop_limit") else "market"
        params = self.order_params(new)
        params = {k: v for k, v in params.items() if k not in ("clientOrderId", "triggerPrice")}
        params |= {"newClientOrderId": new.venue_client_id}
        params |= {"cancelOrigClientOrderId": old.venue_client_id}
        if new.stop_price is not None:
            params["stopPrice"] = new.stop_price
        payload = exchange.edit_spot_order_request(
            None, new.symbol, kind, new.side, new.qty, new.limit_price, params
        )
        got = await self.call(lambda: exchange.privatePostOrderCancelReplace(payload))
        canceled = exchange.parse_order(got.get("cancelResponse") or {}, market)
        placed = exchange.parse_order(got.get("newOrderResponse") or {}, market)
        return canceled, placed

    async def edit(self, leg: VenueOrder) -> dict[str, Any]:
        """Kraken spot ``AmendOrder``: the open order of ``leg``'s client id keeps its id and
        gets ``leg``'s quantity, limit and trigger (``stopLossPrice`` -> ``trigger_price``).
        The answer is only an ``amend_id``, never the order's state. IB modifies the order
        with ``placeOrder`` under its own orderId (``IbExchange.edit_order``, the trigger
        as ``triggerPrice``) and answers with its new values. Other exchanges refuse
        (``NotSupported``, an ``ExchangeError``: the order keeps its values)."""
        if self.id not in ("kraken", "ib"):
            raise ccxt.NotSupported(f"{self.id} does not amend orders in place")
        kind = "limit" if leg.order_type in ("limit", "stop_limit") else "market"
        params: dict[str, Any] = {"clientOrderId": leg.venue_client_id}
        if leg.stop_price is not None:
            params["stopLossPrice" if self.id == "kraken" else "triggerPrice"] = leg.stop_price
        return await self.call(
            lambda: self.exchange.edit_order(
                None, leg.symbol, kind, leg.side, leg.qty, leg.limit_price, params
            )
        )

    def carries(self, order: Mapping[str, Any], leg: VenueOrder) -> bool:
        """Whether the exchange's ``order`` already has ``leg``'s quantity, limit and trigger
        (to the market's precision; Kraken names a stop's trigger ``stopLossPrice``): an
        amendment of it would change nothing."""
        exchange = self.exchange

        def same(have: Any, want: float | None, to: Callable[[str, float], str]) -> bool:
            if want is None:
                return True
            return have is not None and float(have) == float(to(leg.symbol, want))

        return (
            same(order.get("amount"), leg.qty, exchange.amount_to_precision)
            and same(
                order.get("stopLossPrice") or order.get("triggerPrice"),
                leg.stop_price,
                exchange.price_to_precision,
            )
            and (
                leg.order_type not in ("limit", "stop_limit")
                or same(order.get("price"), leg.limit_price, exchange.price_to_precision)
            )
        )

    async def cancel(self, leg: VenueOrder, venue_order_id: str) -> dict[str, Any]:
        """Cancel by client id where the exchange takes one, else by the exchange's id."""
        params = self._query_params(leg)
        if self.id == "bybit":  # ccxt passes Bybit's own key through, and only that one
            params["orderLinkId"] = leg.venue_client_id
        elif self.id in ("binance", "binanceusdm", "kraken", "krakenfutures", "ib"):
            params["clientOrderId"] = leg.venue_client_id
        return await self.call(
            lambda: self.exchange.cancel_order(venue_order_id or None, leg.symbol, params)
        )

    async def find(self, leg: VenueOrder) -> dict[str, Any] | None:
        """The exchange's order for ``leg``, looked up by client id; None when the exchange
        says it has none. A failed query raises: absence is never concluded from it."""
        cid = leg.venue_client_id
        if self.id in ("binance", "binanceusdm"):
            params = {**self._query_params(leg), "clientOrderId": cid}
            try:
                return await self.call(lambda: self.exchange.fetch_order(None, leg.symbol, params))
            except ccxt.OrderNotFound:
                return None
        extra = {
            "bybit": {"orderLinkId": cid, **self._query_params(leg)},
            "kraken": {"cl_ord_id": cid},
        }.get(self.id, {})
        for fetch in (self.exchange.fetch_open_orders, self.exchange.fetch_closed_orders):
            orders = await self.call(lambda f=fetch: f(leg.symbol, None, None, dict(extra)))
            for order in orders:
                if str(order.get("clientOrderId") or "") == cid:
                    return order
        return None

    async def open_orders(self, symbols: list[str]) -> list[dict[str, Any]]:
        """Every open order, conditional/algo ones included (Binance USDT-M lists those
        apart). Raises when any part fails: a partial list is never taken for all."""
        found: list[dict[str, Any]] = []
        targets: list[str | None] = list(symbols) if self.per_symbol else [None]
        for symbol in targets:
            found += await self.call(lambda s=symbol: self.exchange.fetch_open_orders(s))
            if symbol is not None and self.id in ("binanceusdm", "bybit"):
                found += await self.call(
                    lambda s=symbol: self.exchange.fetch_open_orders(
                        s, None, None, {"trigger": True}
                    )
                )
        unique = {str(o.get("id")): o for o in found}  # a book may list one twice
        return list(unique.values())

    async def trades(self, symbol: str, since_ms: int | None) -> list[dict[str, Any]]:
        return await self.call(lambda: self.exchange.fetch_my_trades(symbol, since_ms))

    async def positions(self, symbols: list[str]) -> dict[str, float]:
        """Signed contract positions by symbol (base units)."""
        rows = await self.call(lambda: self.exchange.fetch_positions(symbols))
        out: dict[str, float] = {}
        for row in rows:
            size = float(row.get("contracts") or 0.0) * float(row.get("contractSize") or 1.0)
            sign = -1.0 if row.get("side") == "short" else 1.0
            out[str(row.get("symbol"))] = out.get(str(row.get("symbol")), 0.0) + sign * size
        return out

    async def balances(self) -> dict[str, float]:
        """Total balance per asset: what fills and fees move (Binance USDT-M: the wallet
        balance; ccxt's total there is the margin balance, which moves with the market)."""
        found: Mapping[str, Any] = await self.call(self.exchange.fetch_balance)
        totals = {str(k): float(v) for k, v in (found.get("total") or {}).items() if v is not None}
        info = found.get("info")
        if self.id == "binanceusdm" and isinstance(info, Mapping):
            for row in info.get("assets") or ():
                if row.get("walletBalance") is not None:
                    totals[str(row.get("asset"))] = float(row["walletBalance"])
        return totals
