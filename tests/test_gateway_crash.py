"""Crash tests of the venue gateway: ``kill -9`` at the three worst moments, then a restart.

The gateway runs as a real process (``keel run gateway``, ``tests/gateway_process.py``)
against an exchange fake on a real nats-server, beside the execution role (``keel run
execution``): plain orders go in as ``OrderCommand`` through the order manager, protective
stops as ``VenueOrder`` legs (a protective leg is what a bracket's stop becomes). One flow
per exchange, the exchanges side by side, each on its own server and fake. The gateway is killed (1) between submitting
an order and the exchange's answer (the fake places it and holds the answer,
``faults.ack_delay_s``, with its private stream silent), (2) between two partial fills of an
order (``faults.fill_parts``) and (3) while the exchange fills a protective stop that the
market triggered (in parts). After each restart the exchange (``fake.account``) is the
judge: no client id has two orders and no order exists that nobody sent, every trade is
exactly one recorded fill answer (and, for the order manager's orders, one fill report),
working orders and stops still work, and the ledger folded from the log (the venue
journal: baseline plus fills) equals the exchange's positions and balances, with the venue
running (not halted).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope, content_id
from contracts.events import Bar, ExecutionReport, OrderCommand
from contracts.venue_events import Discrepancy, VenueAdoption, VenueAnswer, VenueOrder, VenueStatus
from eventstore.bus import Bus
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from services.venues.client_ids import answer_event_id, venue_client_id
from services.venues.gateway.config import GatewayConfig
from services.venues.journal import VenueJournal
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange, start_fake
from tests.fakes.matching import FakeOrder
from tests.fakes.prices import NS, PricePath, default_symbols, unit
from tests.gateway_process import kill, start_gateway, start_keel, write_config
from tests.test_gateway import KEY, secret_for

RATE = 10.0
VENUE = "cx"
ALL_EXCHANGES = ("binance", "binanceusdm", "bybit", "kraken", "krakenfutures")
EXCHANGES = tuple(
    e for e in os.environ.get("KEEL_CRASH_EXCHANGES", ",".join(ALL_EXCHANGES)).split(",") if e
)
"""All of them unless ``KEEL_CRASH_EXCHANGES`` (comma-separated) narrows a run to some."""
GATEWAY = GatewayConfig(
    poll_after_s=5.0,
    poll_every_s=1.0,
    reconcile_every_s=20.0,
    unknown_queries=3,
    unknown_within_s=6.0,
    unknown_then="fail",
)
QTY = 0.004
WAIT_S = 120.0
"""Bound of every wait: generous, a loaded machine starts a process slowly."""
PARTS = 6
"""Parts of the order killed between partial fills: one a tick (1.5 s), a wide window."""
STOP_PARTS = 4
"""Parts of the triggered stop (one lot each)."""
MINUTE = 60 * NS
CYCLE = 1000
"""Minutes of the price path before it starts over (over an hour and a half of wall time)."""


def falling_sawtooth() -> PricePath:
    """A market that makes a new low every two minutes (down 0.3 %, up 0.2 %) for
    ``CYCLE`` minutes before the path starts over: a sell stop just below the price
    triggers within a few exchange minutes."""
    bars: list[Bar] = []
    price = 100.0
    for k in range(CYCLE):
        close = price * (0.997 if k % 2 == 0 else 1.002)
        bars.append(
            Bar(
                ts=(k + 1) * MINUTE,
                venue="path",
                symbol="X",
                interval="1m",
                open_time=k * MINUTE,
                close_time=(k + 1) * MINUTE,
                open=price,
                high=max(price, close),
                low=min(price, close),
                close=close,
                volume=10.0,
            )
        )
        price = close
    return PricePath.from_bars(bars)


def exchange_start(symbol: str) -> int:
    """Exchange time hours behind the wall (ccxt clamps some requests to its own clock), at
    the first minute of ``symbol``'s cycle, so a test never sees the path start over."""
    offset = int(unit(symbol, "offset") * CYCLE)
    k = time.time_ns() // MINUTE - 3 * 60
    k -= (k + offset) % CYCLE
    return k * MINUTE


class Case:
    """One exchange fake, its own nats-server and the gateway process trading it."""

    def __init__(self, root: Path, exchange_id: str) -> None:
        self.root, self.exchange_id = root, exchange_id
        root.mkdir(parents=True)
        self.server = EmbeddedServer(root / "nats").start()
        self._bus: Bus | None = None
        self._fake: FakeExchange | None = None
        self.symbols = default_symbols(exchange_id, 1)
        self.clock = ScaledClock(exchange_start(self.symbols[0].symbol), RATE)
        self.process: asyncio.subprocess.Process | None = None
        self.execution: asyncio.subprocess.Process | None = None
        self.managed: set[str] = set()
        """Venue client ids of the order manager's legs (sent as ``OrderCommand``)."""
        self.log = root / "gateway.log"
        self.sent: list[VenueOrder] = []
        self.point = "start"

    async def open(self) -> Case:
        self._bus = await Bus.connect(self.server.url, name="crash-test")
        path = falling_sawtooth()
        self._fake = await start_fake(self.exchange_id, self.symbols, self.clock, path=path)
        self.secrets = (KEY, secret_for(self.fake))
        self.config = write_config(self.root / "keel.json", self.fake, VENUE, GATEWAY)
        self.symbol = next(iter(self.fake.specs))
        self.spec = self.fake.specs[self.symbol]
        args = ["cli.app", "run", "execution", "--config", str(self.config)]
        self.execution = await start_keel(
            args, self.root, self.server.url, self.clock, self.root / "execution.log"
        )
        return self

    async def close(self) -> None:
        if self.process is not None:
            await kill(self.process)
        if self.execution is not None:
            await kill(self.execution)
        if self._bus is not None:
            await self._bus.close()
        if self._fake is not None:
            await self._fake.stop()
        self.server.stop()

    @property
    def bus(self) -> Bus:
        assert self._bus is not None, "Case.open() first"
        return self._bus

    @property
    def fake(self) -> FakeExchange:
        assert self._fake is not None, "Case.open() first"
        return self._fake

    @property
    def perpetual(self) -> bool:
        return self.spec.kind == "perpetual"

    # -- the gateway process --------------------------------------------------------------

    async def start(self) -> None:
        """Start the gateway and wait for its status after the start-up reconciliation."""
        before = len(await self.statuses())
        self.process = await start_gateway(
            self.root, self.server.url, self.clock, self.config, VENUE, self.secrets, self.log,
        )  # fmt: skip
        deadline = time.monotonic() + WAIT_S
        while True:
            states = [(s.state, s.reason) for s in (await self.statuses())[before:]]
            halts = [reason for state, reason in states if state == "halted"]
            assert not halts, self.trouble(f"halted at start: {halts[-1]}")
            if any(state == "running" for state, _ in states):
                return
            assert self.process.returncode is None, self.trouble("the gateway exited")
            assert time.monotonic() < deadline, self.trouble("the gateway did not come up")
            await asyncio.sleep(0.05)

    async def crash(self) -> None:
        assert self.process is not None
        assert await kill(self.process) == -9

    def trouble(self, what: str) -> str:
        tail = self.log.read_text(errors="replace").splitlines()[-25:]
        return f"{self.exchange_id}, {self.point}: {what}; gateway log:\n" + "\n".join(tail)

    # -- orders and what the log holds ----------------------------------------------------

    async def send(self, coid: str, side: str, qty: float, **fields: object) -> VenueOrder:
        order = VenueOrder(
            ts=self.clock.now_ns(),
            action="new",
            client_order_id=coid,
            venue_client_id=venue_client_id(VENUE, coid, 0),
            strategy="s1",
            venue=VENUE,
            symbol=self.symbol,
            side=side,  # type: ignore[arg-type]
            qty=qty,
            **fields,  # type: ignore[arg-type]
        )
        event_id = content_id("crash-test-order", order.venue_client_id)
        assert await self.bus.publish(order, Envelope.root(event_id, order.ts))
        self.sent.append(order)
        return order

    async def command(self, coid: str, side: str, qty: float, **fields: object) -> VenueOrder:
        """An order through the order manager (the execution role): its leg 0 as the
        execution role sends it to the gateway."""
        cmd = OrderCommand(
            ts=self.clock.now_ns(),
            action="new",
            client_order_id=coid,
            strategy="s1",
            venue=VENUE,
            symbol=self.symbol,
            side=side,  # type: ignore[arg-type]
            qty=qty,
            **fields,  # type: ignore[arg-type]
        )
        assert await self.bus.publish(
            cmd, Envelope.root(content_id("crash-test-cmd", coid), cmd.ts)
        )
        vcid = venue_client_id(VENUE, coid, 0)
        self.managed.add(vcid)
        found: list[VenueOrder] = []

        async def sent() -> bool:
            orders = await self.events(f"venue.order.{VENUE}.>")
            found[:] = [
                o for o in orders if isinstance(o, VenueOrder) and o.venue_client_id == vcid
            ]
            return bool(found)

        await self.until(sent, f"the order manager's leg of {coid}")
        self.sent.append(found[0])
        return found[0]

    async def protective_stop(self, coid: str, stop_price: float) -> VenueOrder:
        """A protective sell stop (reduce-only on a perpetual) for the long position."""
        return await self.send(
            coid,
            "sell",
            QTY,
            order_type="stop",
            stop_price=stop_price,
            reduce_only=self.perpetual,
            protective=True,
        )

    def coming_stop(self) -> float:
        """A sell stop price the market reaches within a few ticks, and not before: below
        every price until then (sampled each exchange second), at or above one tick's."""
        fake, tick = self.fake, self.spec.tick_size
        step = fake.step_ns // fake.updates_per_bar
        now = fake.now_ns()
        first = now // step + 6  # the gateway has six ticks (9 s) to place it

        def last(ts: int) -> float:
            return fake.snapshot(self.symbol, ts).trade.price

        lowest = min(last(ts) for ts in range(now, first * step, NS))
        for index in range(first, first + 60):
            stop = round(math.ceil(last(index * step) / tick) * tick, 8)
            if stop < lowest:
                return stop
            lowest = min(
                [lowest, *(last(ts) for ts in range(index * step, (index + 1) * step, NS))]
            )
        raise AssertionError("the price path makes no new low within 60 ticks")

    async def events(self, subject: str) -> list[object]:
        found = await read_caught_up(self.bus, "VENUE", subject, DeliverPolicy.ALL)
        return [s.event for s in found]

    async def statuses(self) -> list[VenueStatus]:
        found = await self.events(f"venue.status.{VENUE}")
        return [e for e in found if isinstance(e, VenueStatus)]

    async def answers(self, vcid: str) -> list[VenueAnswer]:
        found = await self.events(f"venue.answer.{VENUE}.>")
        return [e for e in found if isinstance(e, VenueAnswer) and e.venue_client_id == vcid]

    async def fills(self, vcid: str) -> list[VenueAnswer]:
        return [a for a in await self.answers(vcid) if a.kind == "fill"]

    def placed(self, vcid: str) -> list[FakeOrder]:
        return [o for o in self.fake.account.orders(include_hidden=True) if o.client_id == vcid]

    def price(self, factor: float) -> float:
        tick = self.spec.tick_size
        last = self.fake.snapshot(self.symbol).trade.price
        return round(round(last * factor / tick) * tick, 8)

    async def until(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not await check():
            assert self.process is not None and self.process.returncode is None, self.trouble(
                f"the gateway exited waiting for {what}"
            )
            assert self.execution is not None and self.execution.returncode is None, self.trouble(
                f"the execution role exited waiting for {what}"
            )
            assert time.monotonic() < deadline, self.trouble(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)

    async def accepted(self, vcid: str) -> None:
        async def check() -> bool:
            answers = await self.answers(vcid)
            refused = [a.reason for a in answers if a.kind in ("rejected", "missing")]
            assert not refused, self.trouble(f"{vcid} refused: {refused}")
            return any(a.kind == "accepted" for a in answers)

        await self.until(check, f"the acknowledgement of {vcid}")

    async def all_fills_recorded(self, vcid: str) -> None:
        """Every trade the exchange made for ``vcid``, recorded, and the order filled."""

        async def check() -> bool:
            placed = self.placed(vcid)
            if not placed:
                return False
            [order] = placed
            trades = self.fake.account.fills(order_id=order.order_id)
            return order.status == "filled" and len(await self.fills(vcid)) >= len(trades)

        await self.until(check, f"every fill of {vcid}")

    # -- the verdict ----------------------------------------------------------------------

    async def verify(self, working: list[VenueOrder]) -> dict[str, int]:
        """After the restart: one exchange order per client id, each exchange trade one
        fill answer, ``working`` still open, the journal equal to the exchange."""
        await asyncio.sleep(GATEWAY.poll_every_s * 2 / RATE + 1.0)  # room for a duplicate
        ids = Counter(o.client_id for o in self.fake.account.orders(include_hidden=True))
        for order in self.sent:
            assert ids[order.venue_client_id] == 1, self.trouble(f"{order.client_order_id} twice")
        sent = {order.venue_client_id for order in self.sent}
        extra = [
            f"{o.side} {o.type} {o.qty} {o.status}"
            for o in self.fake.account.orders(include_hidden=True)
            if o.client_id not in sent
        ]
        assert not extra, self.trouble(f"orders nobody asked for: {extra}")
        answers = [
            e
            for e in await self.events(f"venue.answer.{VENUE}.>")
            if isinstance(e, VenueAnswer) and e.kind == "fill"
        ]
        per_trade = Counter(a.trade_id for a in answers)
        assert per_trade and max(per_trade.values()) == 1, per_trade
        for order in self.sent:
            placed = self.placed(order.venue_client_id)
            trades = self.fake.account.fills(order_id=placed[0].order_id)
            mine = [a for a in answers if a.venue_client_id == order.venue_client_id]
            got = sorted((a.fill_qty, a.fill_price) for a in mine)
            made = sorted((t.qty, t.price) for t in trades)
            assert len(got) == len(made), self.trouble(f"fills of {order.client_order_id}")
            for (qty, price), (t_qty, t_price) in zip(got, made, strict=True):
                assert (qty, price) == pytest.approx((t_qty, t_price))
        await self.one_report_per_fill([a for a in answers if a.venue_client_id in self.managed])
        for order in working:
            [placed] = self.placed(order.venue_client_id)
            assert placed.is_open and placed.filled == 0, self.trouble(f"{order} not working")
        await self.ledger_equals_the_exchange()
        assert (await self.statuses())[-1].state == "running", self.trouble("not running")
        return {"fills": len(answers), "orders": len(self.sent)}

    async def one_report_per_fill(self, fills: list[VenueAnswer]) -> None:
        """The order manager turns each recorded fill into exactly one fill report (its
        envelope's cause is the fill answer's id)."""
        wanted = Counter(answer_event_id(a) for a in fills)
        per_cause: Counter[str] = Counter()

        async def reported() -> bool:
            found = await read_caught_up(self.bus, "EXECUTION", "exec.report.>", DeliverPolicy.ALL)
            per_cause.clear()
            for stored in found:
                report = stored.event
                if isinstance(report, ExecutionReport) and report.fill_qty > 0:
                    per_cause[stored.envelope.causation_id] += 1
            return all(per_cause[cause] for cause in wanted)

        await self.until(reported, "a fill report for every fill")
        assert {c: per_cause[c] for c in wanted} == wanted, self.trouble("fill reports")
        assert sum(per_cause.values()) == len(fills), self.trouble(f"extra reports {per_cause}")

    async def ledger_equals_the_exchange(self) -> None:
        journal = VenueJournal(VENUE)
        for event in await self.events("venue.>"):
            mine = isinstance(event, VenueOrder | VenueAnswer | VenueAdoption | Discrepancy)
            if mine and event.venue == VENUE:  # type: ignore[union-attr]
                journal.apply(event)  # type: ignore[arg-type]
        account = self.fake.account
        if self.perpetual:
            position = account.positions.get(self.symbol)
            venue_qty = position.qty if position is not None else 0.0
            keel_qty = journal.position(self.symbol)
            assert math.isclose(keel_qty, venue_qty, abs_tol=1e-9), (
                self.symbol,
                keel_qty,
                venue_qty,
            )
            assets = [self.spec.settle]
        else:
            assets = [self.spec.base, self.spec.quote]
        for asset in assets:
            venue_total = account.balances[asset].total
            assert math.isclose(journal.balance(asset), venue_total, abs_tol=1e-6), (
                self.exchange_id,
                asset,
                journal.balance(asset),
                venue_total,
            )
        found = [e for e in await self.events(f"venue.recon.{VENUE}") if isinstance(e, Discrepancy)]
        assert not [d for d in found if d.action == "halted"], found


async def killed_before_the_acknowledgement(case: Case) -> list[VenueOrder]:
    """A resting limit order and a far protective stop work (on a perpetual, for a long
    position); a market order is placed and filled with its answer held and the private
    stream silent, and the gateway dies in that window knowing nothing of it. The restart
    must settle it by a query by client id, never by sending it again."""
    limit = await case.command("rest", "buy", QTY, order_type="limit", limit_price=case.price(0.9))
    await case.accepted(limit.venue_client_id)
    entry = await case.command("entry", "buy", 2 * QTY)
    await case.all_fills_recorded(entry.venue_client_id)
    guard = await case.protective_stop("guard", case.price(0.5))
    await case.accepted(guard.venue_client_id)
    faults = case.fake.account.faults
    faults.ack_delay_s, faults.silent_user_stream = 10.0, True
    market = await case.command("take", "buy", QTY)
    vcid = market.venue_client_id

    async def placed() -> bool:
        return bool(case.placed(vcid))

    await case.until(placed, "the exchange to take the order")
    await case.crash()
    assert not await case.answers(vcid), "answered before the kill"
    faults.ack_delay_s, faults.silent_user_stream = 0.0, False
    await case.start()
    await case.all_fills_recorded(vcid)
    return [limit, guard]


async def killed_between_partial_fills(case: Case) -> None:
    """An order fills in six parts, one a tick; the gateway dies once the first part is
    recorded. Parts made while it is down must come from reconciliation, later ones from
    the private stream, each once."""
    case.fake.account.faults.fill_parts = PARTS
    qty = round(PARTS * case.spec.lot_size, 8)  # one lot a part
    order = await case.command(
        "parts", "buy", qty, order_type="limit", limit_price=case.price(1.02)
    )
    vcid = order.venue_client_id

    async def first_part() -> bool:
        return bool(await case.fills(vcid))

    await case.until(first_part, "the first partial fill recorded")
    await case.crash()
    [placed] = case.placed(vcid)
    assert len(case.fake.account.fills(order_id=placed.order_id)) < PARTS, "filled before the kill"
    await case.start()
    await case.all_fills_recorded(vcid)
    case.fake.account.faults.fill_parts = 1


async def killed_while_a_stop_fills(case: Case) -> None:
    """A protective stop the market triggers fills in four parts, one a tick; the gateway
    dies after the first part. It must not take the triggered stop for a missing one."""
    case.fake.account.faults.fill_parts = STOP_PARTS
    stop = await case.protective_stop("stop", case.coming_stop())
    vcid = stop.venue_client_id
    await case.accepted(vcid)

    async def filling() -> bool:
        return any(o.triggered and o.filled > 0 for o in case.placed(vcid))

    await case.until(filling, "the stop to trigger and fill its first part")
    await case.crash()
    [placed] = case.placed(vcid)
    made = len(case.fake.account.fills(order_id=placed.order_id))
    assert made < STOP_PARTS, "filled before the kill"
    await case.start()
    await case.all_fills_recorded(vcid)
    case.fake.account.faults.fill_parts = 1


async def three_crashes(root: Path, exchange_id: str) -> dict[str, int]:
    """The three crash points one after the other on one exchange, each judged at once."""
    case = Case(root / exchange_id, exchange_id)
    try:
        await case.open()
        await case.start()
        case.point = "killed before the acknowledgement"
        working = await killed_before_the_acknowledgement(case)
        await case.verify(working)
        case.point = "killed between partial fills"
        await killed_between_partial_fills(case)
        await case.verify(working)
        case.point = "killed while a stop fills"
        await killed_while_a_stop_fills(case)
        return await case.verify(working)
    finally:
        await case.close()


async def test_gateway_killed_at_three_points_leaves_no_trace(tmp_path: Path) -> None:
    """Every exchange side by side, each on its own nats-server and fake."""
    found = await asyncio.gather(
        *(three_crashes(tmp_path, e) for e in EXCHANGES), return_exceptions=True
    )
    failed = [
        f"{e}: {r}" for e, r in zip(EXCHANGES, found, strict=True) if isinstance(r, BaseException)
    ]
    assert not failed, "\n\n".join(failed)
    for exchange_id, result in zip(EXCHANGES, found, strict=True):
        assert isinstance(result, dict)
        assert result["fills"] >= 1 + PARTS + STOP_PARTS, (exchange_id, result)
