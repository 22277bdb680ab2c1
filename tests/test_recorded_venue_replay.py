"""A recorded live session with gateway venues replays identically with the recorded venue
answers standing in for the venues (replay/recorded_venue.py, docs/replay.md).

The session: the fleet's own worker processes on a real nats-server, trading two gateway
venues. On ``test`` the test plays the exchange, answering each ``VenueOrder`` on
``venue.answer.test.>`` as a gateway would (accepted, partial fills, an unknown outcome then
the trade, a rejection, an order left open that ``keel kill --cancel-open``'s two commands
cancel, ``keel resume``), interleaved with the bars. On ``gx`` the real venue gateway
(services/venues/gateway/) trades on the Binance spot fake. Each input settles before the
next, so the session has the replay's processing order.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import polars as pl
import pytest

from contracts.codec import encode
from contracts.envelope import Envelope, bar_envelope, content_id
from contracts.events import Bar
from contracts.subjects import subject_matches
from contracts.system_events import GovernanceCommand
from contracts.venue_events import KillSwitch, VenueAnswer, VenueOrder
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from eventstore.streams import STREAMS
from replay.backtest import BacktestSpec, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.market import DataSource
from services.config import KeelConfig, load_config
from services.fleet import Fleet, consumer_names, fleet_plan
from services.venues.client_ids import answer_event_id
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.worker import Gateway
from tests import scenario
from tests.conftest import keel
from tests.factories import bars_from_closes
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange, start_fake
from tests.fakes.prices import default_symbols

MS = 1_000_000
MINUTE = 60_000 * MS
CLOSES = [10.0, 11.0, 12.0, 11.0, 10.0, 9.0, 10.0, 12.0, 13.0, 12.0, 10.0, 9.0, 11.0, 13.0]
CLOSES += [12.0, 10.0, 9.0, 8.0, 10.0, 12.0, 13.0, 11.0, 9.0]
GX_SYMBOL = "ETH/USDT"  # the Binance fake's second market (its first is BTC/USDT)
REJECTED = "Account has insufficient balance for requested action."
KEY = "recorded-venue-test-key-0123"


def session_config(fake: FakeExchange) -> dict:
    """The scenario's strategy and rails, trading two gateway venues: ``test`` (a testnet
    nobody runs here: the test answers for it) and ``gx`` (the fake, through the gateway)."""
    raw = tomllib.loads(scenario.CONFIG.replace("{fill}", "next_open"))
    raw["risk"]["allowed_symbols"] = [scenario.SYMBOL, GX_SYMBOL]
    raw["portfolio"]["starting_cash"] = 100_000
    credentials = {"api_key_env": "KEEL_TEST_KEY", "secret_env": "KEEL_TEST_SECRET"}
    raw["venues"] = [
        {"name": "test", "exchange": "binance", "mode": "sandbox", "sandbox": True},
        # The gateway is built in the test, on the fake's URLs: mode live needs no --live.
        {**fake.venue_entry("gx"), "mode": "live", "live": True, "credentials": credentials},
    ]
    return raw


class Exchange:
    """Plays venue ``test``: each new leg gets the next script; a cancel is confirmed."""

    SCRIPTS: tuple[tuple[tuple[int, str, float], ...], ...] = (
        ((0, "accepted", 0.0), (1, "fill", 0.4), (2, "fill", 1.0)),  # partial, then the rest
        ((0, "unknown", 0.0), (1, "fill", 1.0)),  # a timeout, then the trade
        ((0, "rejected", 0.0),),
        ((0, "accepted", 0.0),),  # stays open: the kill switch cancels it
    )
    DONE = ((0, "accepted", 0.0), (0, "fill", 1.0))
    KILL_AFTER = 4  # legs placed before the operator's kill

    def __init__(self, bus: Bus, names: set[str]) -> None:
        self.bus = bus
        self.names = names
        self.seen = 0
        self.legs = 0
        self.due: list[tuple[int, VenueOrder, Envelope, str, float]] = []
        self.filled: dict[str, float] = {}
        self.trades = 0
        self.phase = "trading"  # then "killed", then "resumed"

    async def orders(self, at: int) -> None:
        """Schedule answers, from bar ``at`` on, for the legs sent since the last look."""
        stored = [
            item
            async for item in self.bus.read("venue.order.test.>", "VENUE")
            if isinstance(item, Stored) and item.producer == "execution"
        ]
        for item in stored[self.seen :]:
            order = item.event
            assert isinstance(order, VenueOrder)
            if order.action == "cancel":
                self.due.append((at, order, item.envelope, "canceled", 0.0))
                continue
            script = self.SCRIPTS[self.legs] if self.legs < len(self.SCRIPTS) else self.DONE
            self.legs += 1
            self.due += [(at + lag, order, item.envelope, kind, part) for lag, kind, part in script]
        self.seen = len(stored)

    async def step(self, at: int, bar: Bar) -> None:
        """After bar ``at``: its orders, the answers due, and the operator's commands."""
        await self.orders(at)
        now = [d for d in self.due if d[0] <= at]
        self.due = [d for d in self.due if d[0] > at]
        for n, (_, order, cause, kind, part) in enumerate(now):
            await self.publish(order, cause, kind, part, bar.close_time + (n + 1) * MS, bar.close)
            await self.orders(at + 1)
        if self.phase == "trading" and self.legs >= self.KILL_AFTER:
            await self.operator("kill", bar.close_time + 50 * MS)
            await self.orders(at + 1)  # the cancel of the open entry
            self.phase = "killed"
        elif self.phase == "killed" and not self.due:
            await self.operator("resume", bar.close_time + 60 * MS)
            self.phase = "resumed"

    async def publish(
        self, order: VenueOrder, cause: Envelope, kind: str, part: float, ts: int, price: float
    ) -> None:
        fields: dict[str, object] = {}
        if kind == "fill":
            self.trades += 1
            cum = round(order.qty * part, 9)
            qty = cum - self.filled.get(order.venue_client_id, 0.0)
            self.filled[order.venue_client_id] = cum
            fields = dict(
                trade_id=str(7000 + self.trades),
                fill_qty=qty,
                fill_price=price,
                cum_qty=cum,
                fee=round(qty * price * 0.001, 9),
                fee_currency="USDT",
            )
        answer = VenueAnswer(
            ts=ts,
            kind=kind,  # type: ignore[arg-type]
            venue=order.venue,
            symbol=order.symbol,
            client_order_id=order.client_order_id,
            venue_client_id=order.venue_client_id,
            source="stream" if kind in ("fill", "canceled") else "submit",
            strategy=order.strategy,
            side=order.side,
            venue_order_id=str(int(order.venue_client_id[:6], 16)),
            order_qty=order.qty,
            reason=REJECTED if kind == "rejected" else "",
            **fields,  # type: ignore[arg-type]
        )
        envelope = Envelope(answer_event_id(answer), cause.event_id, cause.correlation_id, ts)
        assert await self.bus.publish(answer, envelope, producer="gateway-test")
        assert await wait_drained(self.bus, self.names, timeout=30), "answer did not settle"

    async def operator(self, action: str, ts: int) -> None:
        """What ``keel kill --cancel-open`` / ``keel resume`` store, at a chosen time."""
        command = GovernanceCommand(ts=ts, action=action, reason="test", issued_by="cli")  # type: ignore[arg-type]
        await self.bus.publish(command, Envelope.root(content_id("gov", action, ts), ts))
        if action == "kill":
            switch = KillSwitch(ts=ts, reason="test", flatten=False, issued_by="cli")
            await self.bus.publish(switch, Envelope.root(content_id("kill", ts, False), ts))
        assert await wait_drained(self.bus, self.names, timeout=30), "command did not settle"


async def settle_gateway(bus: Bus, names: set[str], deadline: float) -> None:
    """Until every ``gx`` leg is filled or refused in the log and the fleet took it all:
    the gateway's fills come from the private stream, after it acknowledged the order."""
    while True:
        assert await wait_drained(bus, names, timeout=30), "the session did not settle"
        items = [
            item.event
            async for item in bus.read("venue.>", "VENUE")
            if isinstance(item, Stored) and getattr(item.event, "venue", "") == "gx"
        ]
        legs = {e.venue_client_id: e.qty for e in items if isinstance(e, VenueOrder)}
        done = dict.fromkeys(legs, 0.0)
        for e in items:
            if isinstance(e, VenueAnswer) and e.venue_client_id in done:
                if e.kind == "fill":
                    done[e.venue_client_id] += e.fill_qty
                elif e.kind in ("rejected", "canceled", "expired", "missing"):
                    done[e.venue_client_id] = legs[e.venue_client_id]
        if all(done[v] >= legs[v] * (1 - 1e-9) for v in legs):
            assert await wait_drained(bus, names, timeout=30), "the session did not settle"
            return
        assert time.monotonic() < deadline, f"gateway legs not settled: {done} of {legs}"
        await asyncio.sleep(0.05)


async def record_session(base: Path, url: str) -> tuple[KeelConfig, Path]:
    """The live session: per step a ``test`` bar and its answers, then a ``gx`` bar."""
    clock = ScaledClock(time.time_ns(), 1.0)
    fake = await start_fake("binance", default_symbols("binance", 2), clock)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("KEEL_TEST_KEY", KEY)
        env.setenv("KEEL_TEST_SECRET", fake.api_secret)
        path = base / "keel.json"
        path.write_bytes(msgspec.json.encode(session_config(fake)))
        config = load_config(path)
        gx = config.venue("gx")
        assert gx is not None and config.gateways == {"test", "gx"}
        bus = await Bus.connect(url, name="test")
        gateway = Gateway(bus, gx, GatewayConfig(), clock, work_dir=base / "gateway")
        task = asyncio.create_task(gateway.run())
        fleet = Fleet(url, base / "logs")
        for worker in fleet_plan(config, path):
            if not worker.name.startswith("gateway-"):  # played by the test, or run in it
                fleet.start(worker)
        names = consumer_names(config) | {f"{gateway.name}-orders"}  # acked once answered
        exchange = Exchange(bus, names)
        gx_price = fake.specs[GX_SYMBOL].price / 10  # gx bars move around the fake's price
        start = (clock.now_ns() // MINUTE - len(CLOSES) - 1) * MINUTE
        gx_bars = bars_from_closes(
            [c * gx_price for c in scenario.CLOSES],
            wick=gx_price / 2,
            start=start,
            symbol=GX_SYMBOL,
            venue="gx",
        )
        try:
            ready = asyncio.create_task(gateway.ready.wait())
            await asyncio.wait([ready, task], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            assert gateway.ready.is_set(), "the gateway did not come up"
            assert await wait_drained(bus, names, timeout=60), "workers did not start"
            deadline = time.monotonic() + 90
            steps = itertools.zip_longest(scenario.bars(CLOSES, start=start), gx_bars)
            for at, (bar, gx_bar) in enumerate(steps):
                await bus.publish(bar, bar_envelope(bar))
                assert await wait_drained(bus, names, timeout=30), "bar did not settle"
                await exchange.step(at, bar)
                if gx_bar is not None:
                    await bus.publish(gx_bar, bar_envelope(gx_bar))
                    await settle_gateway(bus, names, deadline)
            assert fleet.failed() == []
        finally:
            gateway.stop()
            await asyncio.wait([task], timeout=10)
            fleet.stop()
            await bus.close()
            await fake.stop()
    assert exchange.phase == "resumed" and exchange.legs > Exchange.KILL_AFTER
    return config, path


def stream_of(subject: str) -> str:
    return next(s.name for s in STREAMS if any(subject_matches(p, subject) for p in s.subjects))


def stored(url: str, subject: str, stream: str) -> list[Stored]:
    async def read() -> list[Stored]:
        bus = await Bus.connect(url, name="test-read")
        try:
            return [item async for item in bus.read(subject, stream) if isinstance(item, Stored)]
        finally:
            await bus.close()

    return asyncio.run(read())


def recorded_outputs(url: str, producers: list[str]) -> dict[tuple[str, str], list]:
    """What each worker stored, per stream: (subject, id, bytes) in stored order."""
    out: dict[tuple[str, str], list] = {}
    for spec in STREAMS:
        if spec.name in ("MARKET", "SYSTEM"):
            continue
        for item in stored(url, ">", spec.name):
            if item.producer in producers:
                out.setdefault((item.producer, spec.name), []).append(
                    (item.subject, item.envelope.event_id, encode(item.event).decode())
                )
    return out


def replayed_outputs(run_dir: Path) -> dict[tuple[str, str], list]:
    """The replay's outputs, the same way (dead letters aside: none were stored live)."""
    events = pl.read_parquet(run_dir / "events.parquet").sort("seq")
    out: dict[tuple[str, str], list] = {}
    for producer, subject, id_, payload in events.select(
        "producer", "subject", "id", "payload"
    ).iter_rows():
        stream = stream_of(subject)
        if stream != "SYSTEM":
            out.setdefault((producer, stream), []).append((subject, id_, payload))
    return out


def by_market(outputs: dict[tuple[str, str], list]) -> dict[tuple[str, str, str], list]:
    """Each worker's outputs per stream and market (the event's ``symbol``, "" when it has
    none), each in its order: what a replay must give again when the live workers took two
    markets' events of one instant in arrival order (docs/replay.md)."""
    out: dict[tuple[str, str, str], list] = {}
    for (producer, stream), items in outputs.items():
        for item in items:
            symbol = msgspec.json.decode(item[2]).get("symbol", "")
            out.setdefault((producer, stream, symbol), []).append(item)
    return out


def spec(config: KeelConfig) -> BacktestSpec:
    return BacktestSpec(config=config, data=(DataSource("MARKET"),))


class Session(msgspec.Struct, frozen=True):
    url: str
    config: KeelConfig
    path: Path
    dir: Path


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One recorded session for the module (recording it is the slow part). The tampering
    test changes its log, so it comes last."""
    base = tmp_path_factory.mktemp("recorded")
    server = EmbeddedServer(base / "nats").start()
    try:
        config, path = asyncio.run(record_session(base, server.url))
        yield Session(server.url, config, path, base)
    finally:
        server.stop()


def test_a_recorded_session_replays_identically_with_its_recorded_answers(
    session: Session,
) -> None:
    answers = [
        item.event
        for item in stored(session.url, "venue.answer.>", "VENUE")
        if isinstance(item.event, VenueAnswer)
    ]
    played = {a.kind for a in answers if a.venue == "test"}
    assert {"accepted", "fill", "unknown", "rejected", "canceled"} <= played
    real = {(a.kind, a.source) for a in answers if a.venue == "gx"}
    assert ("accepted", "submit") in real and any(kind == "fill" for kind, _ in real)
    run = session.dir / "run"
    result = run_backtest(spec(session.config), run, session.url)
    assert result.venue == (
        f"recorded answers ({len(answers)} answers of gateway venues gx, test, 3 operator commands)"
    )
    replayed = replayed_outputs(run)
    assert ("execution", "VENUE") in replayed and ("execution", "EXECUTION") in replayed
    assert ("portfolio", "PORTFOLIO") in replayed and ("risk", "ORDERS") in replayed
    assert {s[0].split(".")[2] for s in replayed["execution", "VENUE"]} == {"test", "gx"}
    live = recorded_outputs(session.url, sorted({producer for producer, _ in replayed}))
    assert replayed == live  # signals, commands, venue orders, reports, positions, equity


def test_keel_backtest_names_the_mode_and_the_bus_replay_repeats_it(session: Session) -> None:
    """Same input, same hash: twice in process, through the command line, and through the
    real worker processes of a bus replay (no gateway among them)."""
    first = run_backtest(spec(session.config), None, session.url)
    second = run_backtest(spec(session.config), None, session.url)
    assert first.result_hash == second.result_hash
    out = session.dir / "cli"
    shown = keel(
        session.url, "backtest", "--config", str(session.path), "--data", "MARKET",
        "--out", str(out), "--json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    cli = msgspec.json.decode(shown.stdout.strip().splitlines()[-1])
    assert (cli["result_hash"], cli["venue"]) == (first.result_hash, first.venue)
    work = session.dir / "bus"
    work.mkdir()
    on_bus = bus_replay(load_run(out), session.url, work)
    assert (on_bus.result_hash, on_bus.venue, on_bus.bars) == (
        first.result_hash,
        first.venue,
        first.bars,
    )


def test_a_tampered_answer_log_is_reported(session: Session) -> None:
    # The exchange's rejection disappears from the log: the order stays open in the replay,
    # so a later venue order is not the one the session sent.
    (rejection,) = [
        item
        for item in stored(session.url, "venue.answer.>", "VENUE")
        if isinstance(item.event, VenueAnswer) and item.event.kind == "rejected"
    ]

    async def delete() -> None:
        bus = await Bus.connect(session.url, name="test-tamper")
        try:
            await bus.js.delete_msg("VENUE", rejection.seq)
        finally:
            await bus.close()

    asyncio.run(delete())
    with pytest.raises(KeelError) as refused:
        run_backtest(spec(session.config), None, session.url)
    message = str(refused.value)
    assert message.startswith("recorded venue: venue order ")
    assert "differs from the recorded one (VENUE #" in message
    assert " -> " in message  # the fields that differ, recorded -> replayed
    assert message.endswith("the recorded answers no longer fit this config or code")
