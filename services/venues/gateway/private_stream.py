"""The private websocket: ``watch_my_trades`` and ``watch_orders`` through ccxt.pro.

Each result is handed to the dealer as it comes; ``last_ns`` is when the stream last said
anything, so the gateway's poller knows when it has been silent for ``poll_after_s`` and
REST polling must take over. A watch that fails (a dropped connection, an expired listen
key, a refused key) is watched again after a jittered backoff; the stream never stops the
gateway, but three failures in a row are reported (``on_health``: the gateway says it is
degraded until a watch answers again).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import ccxt.pro

from services.runtime.clock import Clock
from services.venues.ccxt_exchange import Redactor
from services.venues.gateway.ccxt_orders import backoff_s, exchange_reason

log = logging.getLogger("keel.gateway")
Handler = Callable[[list[Mapping[str, Any]]], Awaitable[None]]
Health = Callable[[bool, str], Awaitable[None]]
FAILING_AFTER = 3
"""Watch failures in a row after which the stream is said to fail (the gateway degraded)."""


class PrivateStream:
    def __init__(
        self,
        exchange: ccxt.pro.Exchange,
        clock: Clock,
        redactor: Redactor,
        on_trades: Handler,
        on_orders: Handler,
        backoff_max_s: float,
        on_health: Health,
    ) -> None:
        self.exchange = exchange
        self.clock = clock
        self.redactor = redactor
        self.on_trades = on_trades
        self.on_orders = on_orders
        self.backoff_max_s = backoff_max_s
        self.on_health = on_health
        self.failing_watches: set[str] = set()
        self.last_ns = clock.now_ns()
        self.failures = 0
        self.frames = 0
        self.first = asyncio.Event()
        """Set once a first result (a snapshot, on exchanges that send one) is handled."""
        self.first_trades = asyncio.Event()
        """Set once the trades watch's first result (its snapshot of recent fills) is handled."""
        self._rng = random.Random()

    async def run(self) -> None:
        """Both watches until cancelled."""
        await asyncio.gather(
            self._watch("watch_my_trades", self.exchange.watch_my_trades, self.on_trades),
            self._watch("watch_orders", self.exchange.watch_orders, self.on_orders),
        )

    async def _watch(
        self, name: str, watch: Callable[[], Awaitable[list[Mapping[str, Any]]]], handle: Handler
    ) -> None:
        attempt = 0
        seen: set[str] = set()
        while True:
            try:
                items = await watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures += 1
                reason = exchange_reason(exc, self.redactor, self.exchange.id)
                log.warning("%s failed: %s", name, reason)
                attempt += 1
                if attempt >= FAILING_AFTER and name not in self.failing_watches:
                    self.failing_watches.add(name)
                    if len(self.failing_watches) == 1:
                        await self.on_health(False, f"{name}: {reason}")
                await self.clock.sleep(backoff_s(attempt, self.backoff_max_s, self._rng))
                continue
            attempt = 0
            if name in self.failing_watches:
                self.failing_watches.discard(name)
                if not self.failing_watches:
                    await self.on_health(True, "")
            self.last_ns = self.clock.now_ns()
            self.frames += 1
            fresh = [i for i in items if _key(i) not in seen]
            seen.update(_key(i) for i in fresh)
            if len(seen) > 50_000:
                seen.clear()
            if fresh:
                await handle(fresh)
            self.first.set()
            if handle is self.on_trades:
                self.first_trades.set()


def _key(item: Mapping[str, Any]) -> str:
    """ccxt's caches hand back earlier items again: a trade by its id, an order by its id,
    status and filled quantity."""
    return f"{item.get('id')}|{item.get('status', '')}|{item.get('filled', '')}"
