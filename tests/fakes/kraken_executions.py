"""Kraken spot's ws v2 ``executions`` and ``balances`` channels (``/ws-auth/v2``), as
ccxt.pro 4.5.90 reads them (``watchOrders``, ``watchMyTrades``, ``watchBalance``).

A subscribe needs a token from ``GetWebSocketsToken`` (else ``ESession:Invalid session``);
then a snapshot (open orders by default, the last 50 fills with ``snap_trades``) and an item
per engine change. ccxt routes a frame by its first item's ``exec_type`` (``trade`` to my
trades, anything else to orders), so every frame here carries one item: a new order is
``pending_new`` then ``new``; a fill a ``trade`` item (``exec_id`` = the trade's txid, as
``TradesHistory`` keys it), then ``filled`` when the order is done; an amend ``amended``; a
triggered stop ``status``; ``canceled``/``expired``/``filled`` items are sparse (no
``symbol``), as Kraken sends them. ccxt reads a ws order's ``clientOrderId`` from
``order_userref``; the ``cl_ord_id`` is in ``info``. ``balances``: a snapshot of every
asset's total, then a ledger entry per asset a trade moves (``ref_id`` = the trade's txid).
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.fakes.core import Connection
from tests.fakes.kraken import iso, number
from tests.fakes.kraken_orders import AUTO_ID, KRAKEN_TYPES, PAGE, KrakenPrivate, txid
from tests.fakes.matching import FakeFill, FakeOrder

CHANNELS = ("executions", "balances")


class KrakenExecutions:
    """Who listens on ``executions`` and what each engine change sends them."""

    def __init__(self, private: KrakenPrivate) -> None:
        self.private = private
        self.skin = private.skin
        self.fake = private.fake
        self.seen: dict[int, tuple[Any, ...]] = {}
        self.events = 0
        self.listeners: set[Connection] = set()
        self.balance_listeners: set[Connection] = set()
        self.flushing: set[asyncio.Task[None]] = set()
        self.fake.account.on_update(self.on_update)

    async def on_message(self, conn: Connection, message: dict[str, Any], echo: dict) -> None:
        """A subscribe/unsubscribe on the authenticated socket (ping is the skin's)."""
        method = message.get("method")
        params = message.get("params") or {}
        channel = params.get("channel")
        stamp = self.skin.stamp(iso(self.fake.now_ns()))
        refusal = {"method": method, "success": False} | echo | stamp
        if method not in ("subscribe", "unsubscribe") or channel not in CHANNELS:
            error = f"Subscription name invalid: {channel}" if channel else "Malformed request"
            await conn.send_json({"error": error} | refusal)
            return
        if params.get("token") not in self.private.tokens:
            await conn.send_json({"error": "ESession:Invalid session"} | refusal)
            return
        result = {"channel": channel, "snapshot": True}
        if channel == "executions":
            result["maxratecount"] = 180
        await conn.send_json({"method": method, "result": result, "success": True} | echo | stamp)
        listeners = self.listeners if channel == "executions" else self.balance_listeners
        if method == "unsubscribe":
            listeners.discard(conn)
            return
        listeners.add(conn)
        if channel == "balances":
            await self.send(conn, channel, "snapshot", self.balance_snapshot())
            return
        if params.get("snap_trades", False):
            fills = self.fake.account.fills()[-PAGE:]
            data = [self.trade_item(f) for f in reversed(fills)]
            await self.send(conn, channel, "snapshot", data)
        if params.get("snap_orders", True):
            orders = self.fake.account.open_orders()
            data = [self.order_item(o, "new") for o in orders]
            await self.send(conn, channel, "snapshot", data)

    def listening(self, conn: Connection) -> bool:
        return conn in self.listeners or conn in self.balance_listeners

    async def send(self, conn: Connection, channel: str, kind: str, data: list[Any]) -> None:
        sequence = conn.state.get(f"sequence:{channel}", 0) + 1
        conn.state[f"sequence:{channel}"] = sequence
        frame = {"channel": channel, "type": kind, "data": data, "sequence": sequence}
        await conn.send_json(frame)

    def on_update(self, order: FakeOrder, fill: FakeFill | None) -> None:
        """The engine changed an order: the items Kraken would stream, one frame each."""
        before = self.seen.get(order.order_id)
        now = (order.status, order.qty, order.price, order.stop_price, order.triggered)
        self.seen[order.order_id] = now
        items: list[dict[str, Any]] = []
        if before is None:
            items += [self.order_item(order, "pending_new"), self.order_item(order, "new")]
        elif fill is None and before[1:] != now[1:] and order.status == before[0]:
            kind = "status" if order.triggered and not before[4] else "amended"
            items.append(self.order_item(order, kind))
        if fill is not None:
            items.append(self.trade_item(fill, order))
        if order.status in ("filled", "canceled", "expired", "rejected") and (
            before is None or before[0] != order.status
        ):
            items.append(self.closing_item(order))
        self.queue(self.listeners, "executions", [[item] for item in items])
        if fill is not None:
            self.queue(self.balance_listeners, "balances", [self.balance_moves(fill)])

    def queue(self, listeners: set[Connection], channel: str, frames: list[list[Any]]) -> None:
        """Each frame's data for every listener, written in order by one task per socket."""
        for conn in list(listeners):
            if conn.ws.closed:
                listeners.discard(conn)
                continue
            conn.state.setdefault("outbox", []).extend((channel, data) for data in frames)
            if frames and not conn.state.get("flushing"):
                conn.state["flushing"] = True
                task = asyncio.get_running_loop().create_task(self.flush(conn))
                self.flushing.add(task)
                task.add_done_callback(self.flushing.discard)

    async def flush(self, conn: Connection) -> None:
        outbox: list[tuple[str, list[Any]]] = conn.state["outbox"]
        try:
            while outbox and not conn.ws.closed:
                channel, data = outbox.pop(0)
                await self.send(conn, channel, "update", data)
        except (ConnectionError, RuntimeError):
            self.listeners.discard(conn)
            self.balance_listeners.discard(conn)
        finally:
            conn.state["flushing"] = False

    def balance_snapshot(self) -> list[dict[str, Any]]:
        out = []
        for asset, balance in sorted(self.fake.account.balances.items()):
            total = round(balance.total, 10)
            wallets = [{"type": "spot", "id": "main", "balance": total}]
            out.append(
                {"asset": asset, "asset_class": "currency", "balance": total, "wallets": wallets}
            )
        return out

    def balance_moves(self, fill: FakeFill) -> list[dict[str, Any]]:
        """A trade's two ledger entries (base and quote), each with the balance after it."""
        spec = self.fake.specs[fill.symbol]
        sign = 1.0 if fill.side == "buy" else -1.0
        out = []
        for asset, amount in (
            (spec.base, sign * fill.qty),
            (spec.quote, -sign * fill.qty * fill.price),
        ):
            fee = fill.fee if fill.fee_currency == asset else 0.0
            self.events += 1
            out.append(
                {
                    "ledger_id": txid("L", self.events, salt=11),
                    "ref_id": txid("T", fill.trade_id),
                    "timestamp": iso(fill.ts_ns),
                    "type": "trade",
                    "asset": asset,
                    "asset_class": "currency",
                    "category": "trade",
                    "wallet_type": "spot",
                    "wallet_id": "main",
                    "amount": round(amount, 10),
                    "fee": round(fee, 10),
                    "balance": round(self.fake.account.balances[asset].total, 10),
                }
            )
        return out

    def common(self, order: FakeOrder, exec_type: str) -> dict[str, Any]:
        spec = self.fake.specs[order.symbol]
        self.events += 1
        item: dict[str, Any] = {
            "order_id": txid("O", order.order_id),
            "order_userref": self.private.userrefs.get(order.order_id, 0),
            "exec_id": txid("L", self.events, salt=7),
            "exec_type": exec_type,
            "order_status": "pending_new" if exec_type == "pending_new" else order.status,
            "cum_qty": number(order.filled, spec.lot_size),
            "cum_cost": round(order.filled * order.avg_price, 8),
            "avg_price": number(order.avg_price, spec.tick_size),
            "fee_usd_equiv": round(self.usd(order.symbol, order.fee_paid, order.avg_price), 8),
            "timestamp": iso(order.updated_ns),
        }
        if not order.client_id.startswith(AUTO_ID):
            item["cl_ord_id"] = order.client_id
        return item

    def order_item(self, order: FakeOrder, exec_type: str) -> dict[str, Any]:
        """A full order item (pending_new, new, amended, status and the snapshot's)."""
        spec = self.fake.specs[order.symbol]
        tick = spec.tick_size
        item = self.common(order, exec_type) | {
            "symbol": order.symbol,
            "side": order.side,
            "order_type": KRAKEN_TYPES[order.type],
            "order_qty": number(order.qty, spec.lot_size),
            "time_in_force": "GTC" if order.tif == "GTX" else order.tif,
            "post_only": order.tif == "GTX",
            "reduce_only": order.reduce_only,
            "fee_ccy_pref": "fciq",
        }
        if order.price is not None:
            item |= {"limit_price": number(order.price, tick), "limit_price_type": "static"}
        if order.stop_price is not None:
            item["triggers"] = {
                "reference": "last",
                "price": number(order.stop_price, tick),
                "price_type": "static",
                "actual_price": number(order.stop_price, tick),
                "status": "triggered" if order.triggered else "untriggered",
            }
        if exec_type == "amended":
            item |= {"amended": True, "reason": "User requested"}
        return item

    def closing_item(self, order: FakeOrder) -> dict[str, Any]:
        """Filled, canceled or expired: sparse, as Kraken sends it."""
        kind = {"filled": "filled", "expired": "expired"}.get(order.status, "canceled")
        item = self.common(order, kind)
        if kind != "filled":
            reason = "User requested" if order.status == "canceled" else "Order expired"
            item |= {"order_status": kind, "cancel_reason": reason, "reason": reason}
        return item

    def trade_item(self, fill: FakeFill, order: FakeOrder | None = None) -> dict[str, Any]:
        spec = self.fake.specs[fill.symbol]
        order = order or self.fake.account.find(order_id=fill.order_id, include_hidden=True)
        item = (
            self.common(order, "trade")
            if order is not None
            else {"order_id": txid("O", fill.order_id), "exec_type": "trade"}
        )
        item |= {
            "exec_id": txid("T", fill.trade_id),
            "trade_id": fill.trade_id,
            "symbol": fill.symbol,
            "side": fill.side,
            "last_qty": number(fill.qty, spec.lot_size),
            "last_price": number(fill.price, spec.tick_size),
            "liquidity_ind": "m" if fill.maker else "t",
            "cost": round(fill.qty * fill.price, 8),
            "fees": [{"asset": fill.fee_currency, "qty": fill.fee}],
            "fee_usd_equiv": round(
                self.usd(fill.symbol, fill.fee, fill.price, fill.fee_currency), 8
            ),
            "timestamp": iso(fill.ts_ns),
        }
        if order is not None:
            item |= {
                "order_type": KRAKEN_TYPES[order.type],
                "order_status": "filled" if order.status == "filled" else "partially_filled",
            }
        return item

    def usd(self, symbol: str, fee: float, price: float, currency: str = "") -> float:
        """A fee in USD, roughly: a fee in the base is worth ``price`` quote each."""
        spec = self.fake.specs[symbol]
        return fee * price if currency == spec.base else fee
