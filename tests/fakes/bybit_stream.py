"""The Bybit fake's private websocket ``/v5/private``: the real ``auth`` op, then the
``order``, ``execution``, ``position`` and ``wallet`` topics as ccxt.pro's ``watchOrders``,
``watchMyTrades``, ``watchPositions`` and ``watchBalance`` subscribe to them.

``{"op": "auth", "args": [key, expires, sign]}``: sign is the HMAC-SHA256 of
``GET/realtime{expires}`` keyed with ``fake.api_secret``; ``expires`` (wall ms, as ccxt
computes it) must not be past. A subscription before a successful auth is refused. Frames
come from the account's updates (none while ``faults.silent_user_stream``), queued in order
and written by one task: per fill ``execution``, then ``order``, then (linear) ``position``
and ``wallet``; per other change ``order`` (and ``wallet`` for a new order's locks).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from tests.fakes.bybit_rows import (
    LINEAR,
    MS,
    category_of,
    exec_row,
    order_row,
    position_row,
    wallet,
)
from tests.fakes.core import Connection
from tests.fakes.matching import FakeFill, FakeOrder

if TYPE_CHECKING:
    from tests.fakes.bybit_orders import BybitPrivate

PRIVATE_TOPICS = (
    "order",
    "order.spot",
    "order.linear",
    "execution",
    "execution.spot",
    "execution.linear",
    "position",
    "position.linear",
    "wallet",
)


class BybitStream:
    """The private websocket of one Bybit fake (see the module docstring)."""

    def __init__(self, private: BybitPrivate) -> None:
        self.private = private
        self.fake = private.fake
        self.account = private.account
        self.connections: set[Connection] = set()
        self._seq = itertools.count(1)
        self._frame_ids = itertools.count(1)
        self._outbox: deque[tuple[str, dict[str, Any]]] = deque()
        self._pump: asyncio.Task[None] | None = None
        self.account.on_update(self._on_update)

    async def on_open(self, conn: Connection) -> None:
        conn.state["private"] = set()
        self.connections.add(conn)

    async def on_message(self, conn: Connection, request: dict[str, Any]) -> None:
        op, req_id = request.get("op"), request.get("req_id")
        reply: dict[str, Any] = {"success": True, "ret_msg": "", "op": op}
        reply["conn_id"] = conn.state["conn_id"]
        if req_id is not None:
            reply["req_id"] = str(req_id)
        args = request.get("args")
        if op == "ping":
            now_ms = str(self.fake.now_ns() // MS)
            reply = {"req_id": str(req_id or ""), "op": "pong", "args": [now_ms]}
            reply["conn_id"] = conn.state["conn_id"]
        elif op == "auth":
            problem = self._auth_problem(args)
            conn.state["authed"] = not problem
            reply.update({"success": not problem, "ret_msg": problem})
        elif op in ("subscribe", "unsubscribe"):
            problem = self._topics_problem(conn, args)
            if problem:
                reply.update({"success": False, "ret_msg": problem})
            elif op == "subscribe":
                conn.state["private"].update(args)
            else:
                conn.state["private"].difference_update(args)
        else:
            reply.update({"success": False, "ret_msg": f"error:invalid op {op}"})
        await conn.send_json(reply)

    def _auth_problem(self, args: Any) -> str:
        if not isinstance(args, list) or len(args) != 3:
            return "Params Error"
        key, expires, signature = (str(a) for a in args)
        if not key:
            return "Params Error"
        if not expires.isdigit() or int(expires) < time.time_ns() // MS:
            return "Params Error: expires is expired"
        expected = self.private.sign(f"GET/realtime{expires}")
        if not hmac.compare_digest(signature, expected):
            return f"error sign! origin_string[GET/realtime{expires}]"
        return ""

    def _topics_problem(self, conn: Connection, args: Any) -> str:
        if not conn.state.get("authed"):
            return "Request not authorized"
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            return "error:args must be a list of topics"
        unknown = [a for a in args if a not in PRIVATE_TOPICS]
        return f"error:handler not found,topic:{unknown[0]}" if unknown else ""

    def _on_update(self, order: FakeOrder, fill: FakeFill | None) -> None:
        """Queue the frames of one account change (sent in order by one task)."""
        spec = self.fake.specs.get(order.symbol)
        if spec is None or not self.connections:
            return
        extra = self.private._extra(order)
        now_ms = self.fake.now_ns() // MS
        category = category_of(spec)
        if fill is not None:
            row = exec_row(spec, fill, order, extra, next(self._seq), ws=True)
            self._queue("execution", category, {"topic": "execution", "data": [row]}, now_ms)
        self._queue(
            "order",
            category,
            {"topic": "order", "data": [order_row(spec, order, extra, True)]},
            now_ms,
        )
        if fill is not None and category == LINEAR:
            position = self.account.positions.get(spec.symbol)
            row = position_row(spec, position, fill.price, self.fake.now_ns(), ws=True)
            self._queue("position", category, {"topic": "position", "data": [row]}, now_ms)
        if fill is not None or order.status == "new":
            frame = {"topic": "wallet", "data": [wallet(self.account.balances)]}
            self._queue("wallet", category, frame, now_ms)

    def _queue(self, topic: str, category: str, frame: dict[str, Any], now_ms: int) -> None:
        frame = {"id": f"fake-{next(self._frame_ids)}", **frame, "creationTime": now_ms}
        self._outbox.append((f"{topic}.{category}", frame))
        if self._pump is None or self._pump.done():
            self._pump = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        while self._outbox:
            name, frame = self._outbox.popleft()
            topic = name.split(".")[0]
            text = msgspec.json.encode(frame).decode()
            for conn in list(self.connections):
                if conn.ws.closed:
                    self.connections.discard(conn)
                    continue
                wanted: set[str] = conn.state.get("private", set())
                if topic in wanted or name in wanted:
                    await conn.send_text(text)
                    self.fake.frames_sent += 1
