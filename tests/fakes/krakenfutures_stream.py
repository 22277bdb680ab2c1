"""Kraken Futures' authenticated websocket feeds, as ccxt.pro 4.5 uses them.

``{"event": "challenge", "api_key": K}`` is answered with a uuid to sign (``sign`` over the
challenge alone); each private subscribe then carries ``api_key``, ``original_challenge``
and ``signed_challenge``, and a wrong one gets ``{"event": "alert", "message": "Failed to
subscribe to authenticated feed"}``. Feeds: ``open_orders`` (a snapshot, then one frame per
change: ``new_placed_order_by_user``, ``partial_fill``, ``edited_by_user``,
``stop_order_triggered``, ``full_fill`` and cancels as ``{"order_id", "is_cancel": true,
"reason"}``), ``fills`` (``cli_ord_id`` on updates only), ``balances`` (the flex wallet) and
``open_positions``. Frames go out in the order the account changed, one writer per socket;
``faults.silent_user_stream`` stops them at the source (the engine calls nobody).
"""

from __future__ import annotations

import asyncio
import hmac
import uuid
from typing import TYPE_CHECKING, Any

from tests.fakes.core import Connection
from tests.fakes.kraken import number
from tests.fakes.krakenfutures_account import flex_wallet
from tests.fakes.krakenfutures_orders import (
    ACCOUNT_UID,
    FILLS_KEPT,
    WS_TYPES,
    client_of,
    fill_uid,
    kraken_type,
    order_uid,
    sign,
)
from tests.fakes.matching import FakeFill, FakeOrder

if TYPE_CHECKING:
    from tests.fakes.krakenfutures import KrakenFuturesSkin


class KrakenFuturesStream:
    """The private feeds of one Kraken Futures fake, fed by the account's updates."""

    def __init__(self, skin: KrakenFuturesSkin) -> None:
        self.skin = skin
        self.fake = skin.fake
        self.account = skin.fake.account
        self.signals = skin.orders.signals
        self.known: dict[int, FakeOrder] = {}
        self.feeds: dict[Connection, set[str]] = {}
        self.outboxes: dict[Connection, asyncio.Queue[dict[str, Any]]] = {}
        self.writers: set[asyncio.Task[None]] = set()
        self.seq = 0
        self.account.on_update(self.on_update)

    async def on_private(self, conn: Connection, message: dict[str, Any]) -> None:
        """``challenge`` and the subscribe/unsubscribe of the authenticated feeds."""
        if message.get("event") == "challenge":
            if not message.get("api_key"):
                await conn.send_json({"event": "error", "message": "Invalid API key"})
                return
            challenge = str(uuid.uuid4())
            conn.state["challenge"] = challenge
            await conn.send_json({"event": "challenge", "message": challenge})
            return
        feed = str(message.get("feed"))
        if not self.authentic(conn, message):
            await conn.send_json(
                {"event": "alert", "message": "Failed to subscribe to authenticated feed"}
            )
            return
        keys = ("api_key", "original_challenge", "signed_challenge")
        ack = {"event": f"{message['event']}d", "feed": feed} | {k: message[k] for k in keys}
        await conn.send_json(ack)
        feeds = self.feeds.setdefault(conn, set())
        if message["event"] == "unsubscribe":
            feeds.discard(feed)
            return
        feeds.add(feed)
        if conn not in self.outboxes:
            self.outboxes[conn] = asyncio.Queue()
            task = asyncio.get_running_loop().create_task(self.writer(conn))
            self.writers.add(task)
            task.add_done_callback(self.writers.discard)
        self.outboxes[conn].put_nowait(self.snapshot(feed))

    def authentic(self, conn: Connection, message: dict[str, Any]) -> bool:
        challenge = conn.state.get("challenge")
        if not challenge or message.get("original_challenge") != challenge:
            return False
        try:
            wanted = sign(self.fake.api_secret, challenge)
        except ValueError:
            return False
        return hmac.compare_digest(str(message.get("signed_challenge", "")), wanted)

    async def writer(self, conn: Connection) -> None:
        """Sends one socket's private frames in the order the account produced them; ends
        soon after the socket closes, frames or not."""
        outbox = self.outboxes[conn]
        try:
            while not conn.ws.closed:
                try:
                    frame = await asyncio.wait_for(outbox.get(), 0.5)
                except TimeoutError:
                    continue
                await conn.send_json(frame)
        except (ConnectionError, RuntimeError):  # the peer went away mid-write
            pass
        finally:
            self.outboxes.pop(conn, None)
            self.feeds.pop(conn, None)

    def snapshot(self, feed: str) -> dict[str, Any]:
        now_ms = self.fake.now_ns() // 1_000_000
        if feed == "open_orders":
            orders = [self.ws_order(o) for o in self.account.open_orders()]
            return {"feed": "open_orders_snapshot", "account": ACCOUNT_UID, "orders": orders}
        if feed == "fills":
            rows = [self.ws_fill(f) for f in self.account.fills()[-FILLS_KEPT:]]
            for row in rows:
                row.pop("cli_ord_id")  # only updates carry it
            return {"feed": "fills_snapshot", "account": ACCOUNT_UID, "fills": rows}
        if feed == "balances":
            return {
                "feed": "balances_snapshot",
                "account": ACCOUNT_UID,
                "holding": {},
                "futures": {},
                "flex_futures": flex_wallet(self.fake),
                "timestamp": now_ms,
                "seq": self.next_seq(),
            }
        return self.positions_frame()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def positions_frame(self) -> dict[str, Any]:
        positions = []
        for symbol, position in sorted(self.account.positions.items()):
            if position.qty == 0 or symbol not in self.fake.specs:
                continue
            spec = self.fake.specs[symbol]
            mark = self.fake.snapshot(symbol).trade.price
            notional = abs(position.qty) * position.entry_price * spec.contract_size
            positions.append(
                {
                    "instrument": self.skin.ids[symbol],
                    "balance": number(position.qty, spec.lot_size),
                    "pnl": position.unrealized(mark, spec.contract_size),
                    "entry_price": position.entry_price,
                    "mark_price": mark,
                    "index_price": mark,
                    "liquidation_threshold": 0.0,
                    "effective_leverage": 0.0,
                    "return_on_equity": 0.0,
                    "unrealized_funding": 0.0,
                    "initial_margin": notional / self.account.leverage,
                    "initial_margin_with_orders": notional / self.account.leverage,
                    "maintenance_margin": notional / self.account.leverage / 2,
                    "pnl_currency": spec.settle or spec.quote,
                }
            )
        return {
            "feed": "open_positions",
            "account": ACCOUNT_UID,
            "positions": positions,
            "seq": self.next_seq(),
            "timestamp": self.fake.now_ns() // 1_000_000,
        }

    def ws_order(self, order: FakeOrder) -> dict[str, Any]:
        spec = self.fake.specs[order.symbol]
        trigger = order.stop_price is not None and not order.triggered
        frame: dict[str, Any] = {
            "instrument": self.skin.ids[order.symbol],
            "time": order.created_ns // 1_000_000,
            "last_update_time": order.updated_ns // 1_000_000,
            "qty": number(order.remaining, spec.lot_size),
            "filled": number(order.filled, spec.lot_size),
            "limit_price": order.price or 0.0,
            "stop_price": order.stop_price or 0.0,
            "type": ("take_profit" if order.type == "take_profit" else "stop")
            if trigger
            else WS_TYPES.get(kraken_type(order), "limit"),
            "order_id": order_uid(order.order_id),
            "cli_ord_id": client_of(order.client_id),
            "direction": 0 if order.side == "buy" else 1,
            "reduce_only": order.reduce_only,
        }
        if trigger:
            frame["triggerSignal"] = self.signals.get(order.order_id, "last")
        return frame

    def ws_fill(self, fill: FakeFill) -> dict[str, Any]:
        spec = self.fake.specs[fill.symbol]
        order = self.known.get(fill.order_id)
        kind = kraken_type(order) if order is not None else "lmt"
        return {
            "instrument": self.skin.ids[fill.symbol],
            "time": fill.ts_ns // 1_000_000,
            "price": fill.price,
            "seq": fill.trade_id,
            "buy": fill.side == "buy",
            "qty": number(fill.qty, spec.lot_size),
            "remaining_order_qty": number(order.remaining, spec.lot_size) if order else 0.0,
            "order_id": order_uid(fill.order_id),
            "cli_ord_id": client_of(fill.client_id),
            "fill_id": fill_uid(fill.trade_id),
            "fill_type": "maker" if fill.maker else "taker",
            "fee_paid": fill.fee,
            "fee_currency": fill.fee_currency,
            "taker_order_type": WS_TYPES.get(kind, "limit") if not fill.maker else "limit",
            "order_type": WS_TYPES.get(kind, "stop"),
        }

    def on_update(self, order: FakeOrder, fill: FakeFill | None) -> None:
        """Every change of the account, as the frames of the feeds that show it."""
        previous = self.known.get(order.order_id)
        self.known[order.order_id] = order
        if previous is None and order.stop_price is not None:
            self.signals.setdefault(order.order_id, self.skin.orders.signal_next)
        frames: list[tuple[str, dict[str, Any]]] = []
        if fill is not None:
            frames.append(
                ("fills", {"feed": "fills", "username": ACCOUNT_UID, "fills": [self.ws_fill(fill)]})
            )
        frames.extend(("open_orders", f) for f in self.order_frames(previous, order, fill))
        if fill is not None:
            balances = {
                "feed": "balances",
                "account": ACCOUNT_UID,
                "flex_futures": flex_wallet(self.fake),
                "timestamp": fill.ts_ns // 1_000_000,
                "seq": self.next_seq(),
            }
            frames += [("balances", balances), ("open_positions", self.positions_frame())]
        for conn, feeds in list(self.feeds.items()):
            outbox = self.outboxes.get(conn)
            for feed, frame in frames:
                if outbox is not None and feed in feeds:
                    outbox.put_nowait(frame)

    def order_frames(
        self, previous: FakeOrder | None, order: FakeOrder, fill: FakeFill | None
    ) -> list[dict[str, Any]]:
        uid = order_uid(order.order_id)
        if order.status in ("canceled", "expired", "rejected"):
            reason = "cancelled_by_user" if order.status == "canceled" else "not_enough_margin"
            if order.tif in ("IOC", "FOK") or order.type == "market":
                reason = "ioc_order_failed_because_it_would_not_be_executed"
            return [{"feed": "open_orders", "order_id": uid, "is_cancel": True, "reason": reason}]
        if order.status == "filled":
            body = self.ws_order(order)
            return [
                {"feed": "open_orders", "order": body, "is_cancel": True, "reason": "full_fill"}
            ]
        if fill is not None:
            reason = "partial_fill"
        elif previous is None:
            reason = "new_placed_order_by_user"
        elif order.triggered and not previous.triggered:
            reason = "stop_order_triggered"
        else:
            reason = "edited_by_user"
        return [
            {
                "feed": "open_orders",
                "order": self.ws_order(order),
                "is_cancel": False,
                "reason": reason,
            }
        ]
