"""Crash tests of the IB gateway: ``kill -9`` at the three points of part 2 (issue 15).

The gateway runs as a real process (``keel run gateway``) against the TWS fake on a real
nats-server. It reaches the fake through a loopback relay in this test that can hold
everything IB says back while letting the gateway's requests through: IB acts while the
gateway hears nothing. The three points:

- between placing an order and IB's answer (the relay holds from the ``placeOrder`` on);
- between two partial fills of a resting order (the test, as the exchange, executes it in
  parts: one heard, one made while the gateway is dead, one after its restart);
- while a protective stop fills (one part heard, the rest made while the relay holds, then
  the kill).

Each time the fake is the judge: one order on IB per client id (nothing sent twice, no stop
placed again), each IB execution exactly one recorded fill (its id IB's ``execId``), and the
ledger folded from the log equal to the fake's position.
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
from tests.fakes.tws.orders import Working
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
    ``placeOrder`` to IB and from then on holds every byte IB sends back (``holding`` set
    by hand holds from now on). A new connection is relayed whole again."""

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


class Crash:
    """The fake, the relay and the gateway process, killed and started again by a test."""

    def __init__(self, tws: TwsFake, bus: Bus, url: str, work: Path) -> None:
        self.tws, self.bus, self.url, self.work = tws, bus, url, work
        self.clock = tws.clock
        self.relay = Relay(tws.port)
        self.log = work / "gateway.log"
        self.config = work / "keel.json"
        self.args = ["cli.app", "run", "gateway", "--venue", VENUE, "--config", str(self.config)]
        self.gateway: asyncio.subprocess.Process | None = None

    async def open(self) -> None:
        await self.relay.start()
        entry = {**venue_entry(self.relay.port), "gateway": msgspec.to_builtins(CONFIG)}
        self.config.write_bytes(msgspec.json.encode({"venues": [entry]}))
        await self.start()

    async def start(self) -> None:
        assert self.gateway is None or self.gateway.returncode is not None
        self.gateway = await start_keel(self.args, self.work, self.url, self.clock, self.log)
        await until(lambda: self.tws.sessions, "the gateway's IB session")
        await asyncio.sleep(1.0)  # its order consumer in place

    async def kill(self) -> None:
        assert self.gateway is not None
        await kill(self.gateway)
        await until(lambda: not self.tws.sessions, "the killed session closed")

    async def close(self) -> None:
        if self.gateway is not None:
            await kill(self.gateway)
        await self.relay.stop()

    async def send(self, coid: str, **fields: object) -> VenueOrder:
        order = VenueOrder(
            **{
                "ts": self.clock.now_ns(),
                "action": "new",
                "client_order_id": coid,
                "venue_client_id": venue_client_id(VENUE, coid, 0),
                "strategy": "s1",
                "venue": VENUE,
                "symbol": "AAPL",
                "side": "buy",
                "qty": 10.0,
                **MARKETS["AAPL"],
                **fields,
            }  # type: ignore[arg-type]
        )
        vcid = order.venue_client_id
        await self.bus.publish(order, Envelope.root(content_id("crash", vcid), order.ts))
        return order

    async def answers(self, vcid: str) -> list[VenueAnswer]:
        return await answers(self.bus, vcid)

    async def answered(self, vcid: str, check: Callable[[list[VenueAnswer]], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        while not check(await self.answers(vcid)):
            if time.monotonic() > deadline:
                said = [(a.kind, a.source, a.fill_qty) for a in await self.answers(vcid)]
                raise AssertionError(f"{vcid}: {said}\n{self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.1)

    async def filled(self, vcid: str, qty: float) -> None:
        await self.answered(vcid, lambda got: filled_qty(got) >= qty)

    def placed(self, vcid: str) -> list[Working]:
        return [o for o in self.tws.broker.orders.values() if o.ticket.order_ref == vcid]

    def price(self) -> float:
        (listing,) = [x for x in self.tws.catalogue.by_conid.values() if x.localSymbol == "AAPL"]
        return self.tws.price(listing)

    async def exactly_once(self, vcid: str) -> list[VenueAnswer]:
        """The order is on IB once, and its executions are its recorded fills, each once."""
        await asyncio.sleep(2.0)  # room for a second copy, were one to come
        got = await self.answers(vcid)
        assert len(self.placed(vcid)) == 1
        executions = [e.exec_id for e in self.tws.broker.executions if e.order_ref == vcid]
        fills = [a.trade_id for a in got if a.kind == "fill"]
        assert sorted(fills) == sorted(executions), (fills, executions)
        return got

    async def ledger_is_the_fakes(self) -> float:
        """The venue journal folded from the log holds IB's AAPL position."""
        journal = VenueJournal(VENUE)
        found = await read_caught_up(self.bus, "VENUE", "venue.>", DeliverPolicy.ALL)
        for stored in found:
            event = stored.event
            if isinstance(event, VenueOrder | VenueAnswer | VenueAdoption | Discrepancy):
                journal.apply(event)
        positions = list(self.tws.broker.positions.values())
        held = sum(p.qty for p in positions)
        assert math.isclose(journal.position("AAPL"), held, abs_tol=1e-9), positions
        return held


@pytest.fixture
async def tws() -> AsyncIterator[TwsFake]:
    async with TwsFake(ScaledClock(START, RATE)) as fake:
        yield fake


@pytest.fixture
async def crash(
    tws: TwsFake, bus: Bus, nats_server: EmbeddedServer, tmp_path: Path
) -> AsyncIterator[Crash]:
    case = Crash(tws, bus, nats_server.url, tmp_path)
    try:
        await case.open()
        yield case
    finally:
        await case.close()


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


def filled_qty(got: list[VenueAnswer]) -> float:
    return sum(a.fill_qty for a in got if a.kind == "fill")


def accepted(got: list[VenueAnswer]) -> bool:
    return any(a.kind == "accepted" for a in got)


async def test_kill_between_place_and_ibs_answer(crash: Crash) -> None:
    tws = crash.tws
    crash.relay.hold_after_place = True
    order = await crash.send("crash-1")
    vcid = order.venue_client_id
    await asyncio.wait_for(crash.relay.holding.wait(), WAIT_S)
    await crash.kill()
    placed = crash.placed(vcid)
    assert len(placed) == 1 and placed[0].status == "Filled"
    assert not [a for a in await crash.answers(vcid) if a.kind in ("accepted", "fill")]

    await crash.start()
    await crash.filled(vcid, 10)
    got = await crash.exactly_once(vcid)
    # The restart's first reconciliation finds IB's execution by its orderRef: the leg
    # handed to the killed process is filled, not sent again nor declared failed.
    said = [(a.kind, a.source) for a in got]
    assert ("fill", "reconcile") in said, said
    assert not {"rejected", "missing", "canceled"} & {a.kind for a in got}, said

    # Again with a resting limit: after the restart IB's open orders (the session's
    # sync, or a query by client id) show it working, still the one order on IB.
    await asyncio.sleep(1.0)
    crash.relay.hold_after_place = True
    low = round(crash.price() * 0.5, 2)
    rest = await crash.send("crash-2", order_type="limit", limit_price=low)
    rest_id = rest.venue_client_id
    await asyncio.wait_for(crash.relay.holding.wait(), WAIT_S)
    await crash.kill()
    await crash.start()
    await crash.answered(rest_id, accepted)
    await asyncio.sleep(2.0)
    said = [(a.kind, a.source) for a in await crash.answers(rest_id)]
    assert {kind for kind, _ in said} <= {"unknown", "accepted"}, said
    resting = crash.placed(rest_id)
    assert len(resting) == 1 and resting[0].status == "Submitted"
    assert await crash.ledger_is_the_fakes() == 10.0
    assert len(tws.broker.orders) == 2


async def test_kill_between_two_partial_fills(crash: Crash) -> None:
    """A resting limit the exchange (the test) executes in three parts: the first heard
    live, the second made while the gateway is dead (reconciliation's to recover), the
    third after its restart (the stream's)."""
    tws = crash.tws
    low = round(crash.price() * 0.5, 2)
    order = await crash.send("parts", order_type="limit", limit_price=low)
    vcid = order.venue_client_id
    await crash.answered(vcid, accepted)
    (working,) = crash.placed(vcid)
    tws.broker.execute(working, 4.0, low, tws.now())
    await crash.filled(vcid, 4.0)
    await crash.kill()

    tws.broker.execute(working, 3.0, low, tws.now())
    await crash.start()
    await crash.filled(vcid, 7.0)
    said = [(a.kind, a.source) for a in await crash.answers(vcid)]
    assert ("fill", "reconcile") in said, said
    tws.broker.execute(working, 3.0, low, tws.now())
    await crash.filled(vcid, 10.0)

    got = await crash.exactly_once(vcid)
    assert filled_qty(got) == 10.0 and working.status == "Filled"
    assert not {"rejected", "missing", "canceled"} & {a.kind for a in got}
    assert await crash.ledger_is_the_fakes() == 10.0
    assert len(tws.broker.orders) == 1


async def test_kill_while_a_protective_stop_fills(crash: Crash) -> None:
    """A long position's protective stop fills in two parts: the first heard, then IB's
    messages stop reaching the gateway, the rest fills and the gateway dies. Restarted, it
    must take the stop for filled (its fills from reconciliation), not for a missing stop to
    place again."""
    tws = crash.tws
    entry = await crash.send("entry")
    await crash.filled(entry.venue_client_id, 10.0)
    floor = round(crash.price() * 0.5, 2)
    stop = await crash.send(
        "guard", side="sell", order_type="stop", stop_price=floor, protective=True
    )
    vcid = stop.venue_client_id
    await crash.answered(vcid, accepted)
    (working,) = crash.placed(vcid)
    assert working.ticket.order_type == "STP" and working.status == "Submitted"
    # The market falls through the stop (far below it, so the fake's own matching never
    # triggers it): the exchange, this test, fills it in two parts.
    tws.broker.execute(working, 4.0, floor, tws.now())
    await crash.filled(vcid, 4.0)
    crash.relay.holding.set()
    tws.broker.execute(working, 6.0, floor, tws.now())
    await crash.kill()

    await crash.start()
    await crash.filled(vcid, 10.0)
    got = await crash.exactly_once(vcid)
    said = [(a.kind, a.source) for a in got]
    assert ("fill", "reconcile") in said, said
    assert not {"rejected", "missing", "canceled"} & {a.kind for a in got}, said
    assert await crash.ledger_is_the_fakes() == 0.0
    assert len(tws.broker.orders) == 2  # the entry and the one stop: none placed again
