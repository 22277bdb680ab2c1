"""Crash test of the IB gateway: ``kill -9`` between placing an order and IB's answer.

The gateway runs as a real process (``keel run gateway``) against the TWS fake on a real
nats-server. It reaches the fake through a loopback relay in this test that, on seeing the
gateway's ``placeOrder`` go by, lets it through to IB and then holds everything IB says
back: IB has the order (and, a market order, fills it) while the gateway hears nothing.
The gateway is killed there and started again. Then the fake is the judge: one order for
the client id (the restarted gateway asked for it by ``orderRef`` instead of sending it
again), each execution one recorded fill, and the ledger folded from the log equal to the
fake's position.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest
from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope, content_id
from contracts.venue_events import Discrepancy, VenueAdoption, VenueAnswer, VenueOrder
from eventstore.bus import Bus
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from services.venues.client_ids import venue_client_id
from services.venues.journal import VenueJournal
from tests.fakes.clock import ScaledClock
from tests.fakes.tws import TwsFake
from tests.gateway_process import kill, start_keel
from tests.test_ib_gateway import CONFIG, MARKETS, VENUE, venue_entry

NS = 1_000_000_000
START = int(dt.datetime(2024, 3, 5, 15, 0, tzinfo=dt.UTC).timestamp()) * NS
RATE = 10.0
WAIT_S = 40.0
"""Bound of every wait: a loaded machine starts a process slowly."""
PLACE_ORDER = b"3\0"


class Relay:
    """A TCP relay to the fake that, once ``hold_after_place`` is set, forwards the next
    ``placeOrder`` to IB and from then on holds every byte IB sends back."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.hold_after_place = False
        self.holding = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self.holding.clear()
        ups = asyncio.create_task(self._client_to_ib(reader, up_writer))
        downs = asyncio.create_task(self._ib_to_client(up_reader, writer))
        self._tasks |= {ups, downs}
        await asyncio.wait([ups, downs], return_when=asyncio.FIRST_COMPLETED)
        for task in (ups, downs):
            task.cancel()
        for w in (writer, up_writer):
            with contextlib.suppress(Exception):
                w.close()

    async def _client_to_ib(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        up.write(await reader.readexactly(4))  # "API\0"
        while True:
            head = await reader.readexactly(4)
            body = await reader.readexactly(int.from_bytes(head, "big"))
            up.write(head + body)
            await up.drain()
            if self.hold_after_place and body.startswith(PLACE_ORDER):
                self.hold_after_place = False
                self.holding.set()

    async def _ib_to_client(self, up: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await up.read(65_536)
            if not data:
                return
            if self.holding.is_set():
                continue  # IB's answers never reach the gateway
            writer.write(data)
            await writer.drain()


@pytest.fixture
async def tws() -> AsyncIterator[TwsFake]:
    async with TwsFake(ScaledClock(START, RATE)) as fake:
        yield fake


async def until(check: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def answers(bus: Bus, vcid: str) -> list[VenueAnswer]:
    found = await read_caught_up(bus, "VENUE", f"venue.answer.{VENUE}.>", DeliverPolicy.ALL)
    return [
        s.event
        for s in found
        if isinstance(s.event, VenueAnswer) and s.event.venue_client_id == vcid
    ]


async def test_kill_between_place_and_ibs_answer(
    tws: TwsFake, bus: Bus, nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    relay = Relay(tws.port)
    await relay.start()
    config = tmp_path / "keel.json"
    entry = {**venue_entry(relay.port), "gateway": msgspec.to_builtins(CONFIG)}
    config.write_bytes(msgspec.json.encode({"venues": [entry]}))
    args = ["cli.app", "run", "gateway", "--venue", VENUE, "--config", str(config)]
    log = tmp_path / "gateway.log"
    clock = tws.clock
    gateway = await start_keel(args, tmp_path, nats_server.url, clock, log)
    try:
        await until(lambda: tws.sessions, "the gateway's IB session")
        await asyncio.sleep(1.0)  # its order consumer in place
        relay.hold_after_place = True
        order = VenueOrder(
            ts=clock.now_ns(),
            action="new",
            client_order_id="crash-1",
            venue_client_id=venue_client_id(VENUE, "crash-1", 0),
            strategy="s1",
            venue=VENUE,
            symbol="AAPL",
            side="buy",
            qty=10.0,
            **MARKETS["AAPL"],  # type: ignore[arg-type]
        )
        vcid = order.venue_client_id
        await bus.publish(order, Envelope.root(content_id("crash", vcid), order.ts))
        await asyncio.wait_for(relay.holding.wait(), WAIT_S)
        await kill(gateway)
        placed = [o for o in tws.broker.orders.values() if o.ticket.order_ref == vcid]
        assert len(placed) == 1 and placed[0].status == "Filled"
        assert not [a for a in await answers(bus, vcid) if a.kind in ("accepted", "fill")]

        await until(lambda: not tws.sessions, "the killed session closed")
        gateway = await start_keel(args, tmp_path, nats_server.url, clock, log)

        async def filled() -> bool:
            return sum(a.fill_qty for a in await answers(bus, vcid) if a.kind == "fill") >= 10

        deadline = time.monotonic() + WAIT_S
        while not await filled():
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # room for a second copy, were one to come
        got = await answers(bus, vcid)
        # The restart's first reconciliation finds IB's execution by its orderRef: the leg
        # handed to the killed process is filled, not sent again nor declared failed.
        said = [(a.kind, a.source) for a in got]
        assert ("fill", "reconcile") in said, said
        assert not {"rejected", "missing", "canceled"} & {a.kind for a in got}, said
        executions = [e.exec_id for e in tws.broker.executions if e.order_ref == vcid]
        fills = [a.trade_id for a in got if a.kind == "fill"]
        assert sorted(fills) == sorted(executions)  # each execution exactly once
        assert [o.ticket.order_ref for o in tws.broker.orders.values()].count(vcid) == 1

        # Again with a resting limit: after the restart IB's open orders (the session's
        # sync, or a query by client id) show it working, still the one order on IB.
        await asyncio.sleep(1.0)
        relay.hold_after_place = True
        listing = tws.catalogue.by_conid[placed[0].listing.conId]
        low = round(tws.price(listing) * 0.5, 2)
        rest = msgspec.structs.replace(
            order,
            ts=clock.now_ns(),
            client_order_id="crash-2",
            venue_client_id=venue_client_id(VENUE, "crash-2", 0),
            order_type="limit",
            limit_price=low,
        )
        rest_id = rest.venue_client_id
        await bus.publish(rest, Envelope.root(content_id("crash", rest_id), rest.ts))
        await asyncio.wait_for(relay.holding.wait(), WAIT_S)
        await kill(gateway)
        await until(lambda: not tws.sessions, "the killed session closed")
        gateway = await start_keel(args, tmp_path, nats_server.url, clock, log)

        async def found() -> bool:
            return any(a.kind == "accepted" for a in await answers(bus, rest_id))

        deadline = time.monotonic() + WAIT_S
        while not await found():
            assert time.monotonic() < deadline, await answers(bus, rest_id)
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        said = [(a.kind, a.source) for a in await answers(bus, rest_id)]
        assert {kind for kind, _ in said} <= {"unknown", "accepted"}, said
        resting = [o for o in tws.broker.orders.values() if o.ticket.order_ref == rest_id]
        assert len(resting) == 1 and resting[0].status == "Submitted"

        journal = VenueJournal(VENUE)
        found = await read_caught_up(bus, "VENUE", "venue.>", DeliverPolicy.ALL)
        for stored in found:
            event = stored.event
            if isinstance(event, VenueOrder | VenueAnswer | VenueAdoption | Discrepancy):
                journal.apply(event)
        (position,) = tws.broker.positions.values()
        assert math.isclose(journal.position("AAPL"), position.qty) and position.qty == 10.0
    finally:
        await kill(gateway)
        await relay.stop()
