"""Kraken Futures' account views, as ccxt 4.5 reads them: ``fills`` (fetchMyTrades),
``accounts`` (fetchBalance: the ``flex`` multi-collateral wallet), ``openpositions``
(fetchPositions) and the history API's order events (``/api/history/v2/orders``:
fetchClosedOrders, fetchCanceledOrders). Signed like every private request
(``KrakenFuturesOrders.private``).
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.fakes.core import FakeExchange
from tests.fakes.kraken import iso, number
from tests.fakes.krakenfutures_orders import (
    ACCOUNT_UID,
    FILLS_KEPT,
    client_of,
    fill_uid,
    kraken_type,
    order_uid,
)
from tests.fakes.matching import FakeFill, FakeOrder

if TYPE_CHECKING:
    from tests.fakes.krakenfutures import KrakenFuturesSkin


def text(value: float) -> str:
    """A decimal string without float noise or a trailing ``.0``."""
    return format(Decimal(repr(round(value, 12))).normalize(), "f")


def flex_wallet(fake: FakeExchange) -> dict[str, Any]:
    """The multi-collateral wallet in the websocket's names (REST renames a few)."""
    currencies: dict[str, Any] = {}
    for asset, balance in sorted(fake.account.balances.items()):
        code = "XBT" if asset == "BTC" else asset
        currencies[code] = {
            "quantity": balance.total,
            "value": balance.total,
            "collateral_value": balance.total,
            "available": balance.free,
            "haircut": 0.0,
            "conversion_spread": 0.0,
        }
    total = sum(b.total for b in fake.account.balances.values())
    used = sum(b.used for b in fake.account.balances.values())
    pnl = sum(
        p.unrealized(fake.snapshot(s).trade.price, fake.specs[s].contract_size)
        for s, p in fake.account.positions.items()
        if s in fake.specs
    )
    return {
        "currencies": currencies,
        "balance_value": total,
        "portfolio_value": total + pnl,
        "collateral_value": total,
        "initial_margin": used,
        "initial_margin_without_orders": used,
        "maintenance_margin": used / 2,
        "pnl": pnl,
        "unrealized_funding": 0.0,
        "total_unrealized": pnl,
        "total_unrealized_as_margin": pnl,
        "margin_equity": total + pnl,
        "available_margin": total + pnl - used,
    }


class KrakenFuturesAccount:
    """What the account holds and did, over the matching engine's state."""

    def __init__(self, skin: KrakenFuturesSkin) -> None:
        self.skin = skin
        self.fake = skin.fake
        self.account = skin.fake.account

    def routes(self) -> list[web.RouteDef]:
        api, private = "/derivatives/api/v3", self.skin.orders.private
        return [
            web.get(f"{api}/fills", private(self.fills)),
            web.get(f"{api}/accounts", private(self.accounts)),
            web.get(f"{api}/openpositions", private(self.open_positions)),
            web.get("/api/history/v2/orders", private(self.history_orders)),
        ]

    def ok(self, body: dict[str, Any]) -> web.Response:
        return self.skin.answer({"result": "success"} | body)

    async def fills(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """The 100 newest fills, or the 100 before ``lastFillTime``; newest first."""
        rows = [self.fill_row(f) for f in reversed(self.account.fills())]
        if params.get("lastFillTime"):
            rows = [r for r in rows if r["fillTime"] < params["lastFillTime"]]
        return self.ok({"fills": rows[:FILLS_KEPT]})

    def fill_row(self, fill: FakeFill) -> dict[str, Any]:
        spec = self.fake.specs[fill.symbol]
        return {
            "fill_id": fill_uid(fill.trade_id),
            "symbol": self.skin.ids[fill.symbol],
            "side": fill.side,
            "order_id": order_uid(fill.order_id),
            "cliOrdId": client_of(fill.client_id),
            "size": number(fill.qty, spec.lot_size),
            "price": fill.price,
            "fillTime": iso(fill.ts_ns, 3),
            "fillType": "maker" if fill.maker else "taker",
            "fee_paid": fill.fee,
            "fee_currency": fill.fee_currency,
        }

    async def accounts(self, request: web.Request, params: dict[str, str]) -> web.Response:
        flex = flex_wallet(self.fake)
        currencies = {
            code: {
                "quantity": row["quantity"],
                "value": row["value"],
                "collateral": row["collateral_value"],
                "available": row["available"],
            }
            for code, row in flex["currencies"].items()
        }
        margin = flex["initial_margin"]
        return self.ok(
            {
                "accounts": {
                    "cash": {"balances": {}, "type": "cashAccount"},
                    "flex": {
                        "currencies": currencies,
                        "initialMargin": margin,
                        "initialMarginWithOrders": margin,
                        "maintenanceMargin": margin / 2,
                        "balanceValue": flex["balance_value"],
                        "portfolioValue": flex["portfolio_value"],
                        "collateralValue": flex["collateral_value"],
                        "pnl": flex["pnl"],
                        "unrealizedFunding": 0.0,
                        "totalUnrealized": flex["total_unrealized"],
                        "totalUnrealizedAsMargin": flex["total_unrealized"],
                        "availableMargin": flex["available_margin"],
                        "marginEquity": flex["margin_equity"],
                        "type": "multiCollateralMarginAccount",
                    },
                }
            }
        )

    async def open_positions(self, request: web.Request, params: dict[str, str]) -> web.Response:
        rows = []
        for symbol, position in sorted(self.account.positions.items()):
            if position.qty == 0 or symbol not in self.fake.specs:
                continue
            spec = self.fake.specs[symbol]
            rows.append(
                {
                    "side": "long" if position.qty > 0 else "short",
                    "symbol": self.skin.ids[symbol],
                    "price": position.entry_price,
                    "fillTime": iso(position.updated_ns, 3),
                    "size": number(abs(position.qty), spec.lot_size),
                    "unrealizedFunding": 0.0,
                }
            )
        return self.ok({"openPositions": rows})

    async def history_orders(self, request: web.Request, params: dict[str, str]) -> web.Response:
        """Order events, newest first, as ccxt's fetchClosedOrders/fetchCanceledOrders read
        them: ``OrderPlaced`` (``filled`` as now), then ``OrderUpdated`` ``full_fill`` or
        ``OrderCancelled``; ``since`` in ms."""
        since = int(params.get("since", "0") or 0) * 1_000_000
        elements = []
        for order in self.account.orders():
            if order.created_ns < since:
                continue
            at_once = sum(
                f.qty
                for f in self.account.fills(order_id=order.order_id)
                if f.ts_ns <= order.created_ns
            )
            placed = self.history_order(order, at_once)
            elements.append(self.element(order, order.created_ns, "OrderPlaced", placed))
            if order.status == "filled" and at_once < order.qty:
                done = self.history_order(order, order.filled)
                event = {"oldOrder": placed, "newOrder": done, "reason": "full_fill"}
                elements.append(self.element(order, order.updated_ns, "OrderUpdated", event))
            elif order.status in ("canceled", "expired"):
                elements.append(
                    self.element(order, order.updated_ns, "OrderCancelled", {"order": placed})
                )
        elements.sort(key=lambda e: -int(e["timestamp"]))
        count = int(params.get("count", "0") or 0) or len(elements)
        return self.ok({"elements": elements[:count], "accountUid": ACCOUNT_UID})

    def history_order(self, order: FakeOrder, filled: float) -> dict[str, Any]:
        """The order with ``filled`` done, numbers as strings (``"0"``, not ``"0.0"``)."""
        return {
            "uid": order_uid(order.order_id),
            "accountUid": ACCOUNT_UID,
            "tradeable": self.skin.ids[order.symbol],
            "direction": "Buy" if order.side == "buy" else "Sell",
            "quantity": text(order.qty - filled),
            "filled": text(filled),
            "timestamp": str(order.created_ns // 1_000_000),
            "limitPrice": "" if order.price is None else text(order.price),
            "orderType": {"lmt": "Limit", "post": "Post", "stp": "Stop"}.get(
                kraken_type(order), "IoC"
            ),
            "clientId": client_of(order.client_id) or "",
            "reduceOnly": order.reduce_only,
            "lastUpdateTimestamp": str(order.updated_ns // 1_000_000),
        }

    @staticmethod
    def element(order: FakeOrder, ts_ns: int, kind: str, event: dict[str, Any]) -> dict[str, Any]:
        uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"krakenfutures:event:{order.order_id}:{kind}"))
        if kind == "OrderPlaced":
            event = {
                "order": event,
                "reason": "new_user_order",
                "reducedQuantity": "",
                "algoId": "",
            }
        return {"uid": uid, "timestamp": str(ts_ns // 1_000_000), "event": {kind: event}}
