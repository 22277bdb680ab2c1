"""What the in-process gateway tests share, for a ccxt exchange fake (``tests/test_gateway.py``)
and for the TWS fake (``tests/test_ib_gateway.py``): the gateway as a task on the test's bus,
the orders a test sends it, and the answers it stored, read back from the log.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope, content_id
from contracts.venue_events import VenueAnswer, VenueOrder
from eventstore.bus import Bus
from eventstore.log_reader import read_caught_up
from services.runtime.cancelling import end_tasks
from services.runtime.clock import Clock
from services.venues.client_ids import venue_client_id
from services.venues.config import VenueConfig
from services.venues.gateway.worker import SHUTDOWN_S, Gateway
from tests.fakes.core import FakeExchange
from tests.fakes.kraken_orders import ccxt_secret as kraken_secret
from tests.fakes.krakenfutures_orders import TEST_SECRET as KF_SECRET

READY_S = 30.0
"""How long a gateway may take to come up (a loaded machine starts slowly)."""


def secret_for(fake: FakeExchange) -> str:
    """The secret ccxt holds for the fake: Kraken's are base64 (of the fake's own)."""
    if fake.exchange_id == "krakenfutures":
        fake.api_secret = KF_SECRET
        return KF_SECRET
    if fake.exchange_id == "kraken":
        return kraken_secret(fake)
    return fake.api_secret


STOP_S = 60.0
"""A clean stop ends the gateway's run within this (a hang fails by name)."""


class GatewayHarness:
    """One venue's gateway on ``bus``; ``send`` orders, read its ``answers``."""

    def __init__(self, bus: Bus, venue: VenueConfig, clock: Clock, work: Path) -> None:
        self.bus, self.venue, self.clock, self.work = bus, venue, clock, work
        self.gateway: Gateway | None = None
        self.task: asyncio.Task[None] | None = None
        self.orders = 0

    async def _run(self, gateway: Gateway) -> Gateway:
        """The gateway as a task, once it says it is ready (or its failure, raised)."""
        self.gateway, self.task = gateway, asyncio.create_task(gateway.run())
        ready = asyncio.create_task(gateway.ready.wait())
        await asyncio.wait([ready, self.task], timeout=READY_S, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self.task.done():
            self.task.result()
        assert gateway.ready.is_set(), "the gateway did not come up"
        return gateway

    async def stop(self, hard: bool = False) -> None:
        """A clean stop, or ``hard``: the task is cancelled wherever it is (a crash). A stop
        that hangs fails with where the gateway was, its task ended by cancels first (a task
        left running would block the test loop's teardown for good)."""
        assert self.gateway is not None and self.task is not None
        if hard:
            self.task.cancel()
        else:
            self.gateway.stop()
        done, _ = await asyncio.wait([self.task], timeout=STOP_S)
        if not done:
            where = io.StringIO()
            self.task.print_stack(file=where)
            stuck = await end_tasks([self.task], SHUTDOWN_S)
            ended = "it would not end" if stuck else "ended by cancels"
            raise AssertionError(
                f"the gateway did not stop within {STOP_S:.0f} s ({ended}): {where.getvalue()}"
            )
        if not self.task.cancelled():
            self.task.result()

    async def _send(
        self, symbol: str, qty: float, fields: Mapping[str, object], stamp: Mapping[str, object]
    ) -> VenueOrder:
        """An order for ``symbol`` onto the log; ``fields`` override the defaults (a buy of
        ``qty`` at market, a fresh client order id), ``stamp`` adds the order manager's
        instrument fields."""
        self.orders += 1
        rest = dict(fields)
        coid = str(rest.pop("client_order_id", f"o{self.orders}"))
        name = self.venue.name
        order = VenueOrder(
            ts=self.clock.now_ns(),
            action=rest.pop("action", "new"),  # type: ignore[arg-type]
            client_order_id=coid,
            venue_client_id=str(rest.pop("venue_client_id", venue_client_id(name, coid, 0))),
            strategy="s1",
            venue=name,
            symbol=symbol,
            side=rest.pop("side", "buy"),  # type: ignore[arg-type]
            qty=float(rest.pop("qty", qty)),  # type: ignore[arg-type]
            **{**stamp, **rest},  # type: ignore[arg-type]
        )
        event_id = content_id("test-order", order.venue_client_id, order.action, order.ts)
        await self.bus.publish(order, Envelope.root(event_id, order.ts))
        return order

    async def events(self, kind: type, subject: str) -> list:
        found = await read_caught_up(self.bus, "VENUE", subject, DeliverPolicy.ALL)
        return [s.event for s in found if isinstance(s.event, kind)]

    async def answers(self, vcid: str | None = None) -> list[VenueAnswer]:
        found = await self.events(VenueAnswer, f"venue.answer.{self.venue.name}.>")
        return [a for a in found if vcid is None or a.venue_client_id == vcid]

    async def answer(
        self, vcid: str, check: Callable[[VenueAnswer], bool], what: str, timeout: float = 20.0
    ) -> VenueAnswer:
        deadline = time.monotonic() + timeout
        while True:
            for answer in await self.answers(vcid):
                if check(answer):
                    return answer
            if self.task is not None and self.task.done():
                self.task.result()
            if time.monotonic() > deadline:
                got = [(a.kind, a.source, a.reason) for a in await self.answers(vcid)]
                raise AssertionError(f"timed out waiting for {what}; answers: {got}")
            await asyncio.sleep(0.05)
