"""A recorded live session with a gateway venue replays identically with the recorded venue
answers standing in for the venue (replay/recorded_venue.py, docs/replay.md).

The session: the fleet's own worker processes on a real nats-server, no gateway; the test
plays the exchange, answering each ``VenueOrder`` on ``venue.answer.test.>`` as a gateway
would (accepted, partial fills, fills, an unknown outcome then a fill, a rejection, a cancel
after ``keel kill --cancel-open``'s two commands), interleaved with the bars.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec
import polars as pl
import pytest

from contracts.codec import encode
from contracts.envelope import Envelope, bar_envelope, content_id
from contracts.events import Bar, GovernanceCommand
from contracts.subjects import subject_matches
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
from tests import scenario
from tests.conftest import keel

VENUE = "test"
MS = 1_000_000
CONFIG = (
    scenario.CONFIG.replace("{fill}", "next_open")
    + """
[[venues]]
name = "test"
exchange = "binance"
mode = "sandbox"
sandbox = true
"""
)
CLOSES = [10.0, 11.0, 12.0, 11.0, 10.0, 9.0, 10.0, 12.0, 13.0, 12.0, 10.0, 9.0, 11.0, 13.0]
CLOSES += [12.0, 10.0, 9.0, 8.0, 10.0, 12.0, 13.0, 11.0, 9.0, 10.0, 12.0, 13.0]
REJECTED = "Account has insufficient balance for requested action."


def bars() -> list[Bar]:
    return scenario.bars(CLOSES)


class Exchange:
    """Plays the venue: each new leg gets the next script; a cancel is confirmed."""

    SCRIPTS: tuple[tuple[tuple[int, str, float], ...], ...] = (
        ((0, "accepted", 0.0), (1, "fill", 0.4), (2, "fill", 1.0)),  # partial, then the rest
        ((0, "unknown", 0.0), (1, "fill", 1.0)),  # a timeout, then the trade
        ((0, "rejected", 0.0),),
        ((0, "accepted", 0.0),),  # stays open: the kill switch cancels it
    )
    DONE = ((0, "accepted", 0.0), (0, "fill", 1.0))

    def __init__(self, bus: Bus, names: set[str]) -> None:
        self.bus = bus
        self.names = names
        self.seen = 0
        self.legs = 0
        self.due: list[tuple[int, VenueOrder, Envelope, str, float]] = []
        self.trades = 0

    async def orders(self, at: int) -> list[VenueOrder]:
        """New venue orders since the last look; their answers are scheduled from bar ``at``."""
        stored = [
            item
            async for item in self.bus.read("venue.order.>", "VENUE")
            if isinstance(item, Stored) and item.producer == "execution"
        ]
        new = stored[self.seen :]
        self.seen = len(stored)
        for item in new:
            order = item.event
            assert isinstance(order, VenueOrder)
            if order.action == "cancel":
                self.due.append((at, order, item.envelope, "canceled", 0.0))
                continue
            script = self.SCRIPTS[self.legs] if self.legs < len(self.SCRIPTS) else self.DONE
            self.legs += 1
            self.due += [(at + lag, order, item.envelope, kind, part) for lag, kind, part in script]
        return [item.event for item in new]  # type: ignore[misc]

    async def answer(self, at: int, bar: Bar) -> None:
        """Publish the answers due at bar ``at``, each settled before the next."""
        now, self.due = [d for d in self.due if d[0] <= at], [d for d in self.due if d[0] > at]
        for n, (_, order, cause, kind, part) in enumerate(now):
            await self.publish(order, cause, kind, part, bar.close_time + (n + 1) * MS, bar.close)
            await self.orders(at + 1)  # a cancel of the kill switch, answered at the next bar

    async def publish(
        self, order: VenueOrder, cause: Envelope, kind: str, part: float, ts: int, price: float
    ) -> None:
        fields: dict[str, object] = {}
        if kind == "fill":
            self.trades += 1
            qty = round(order.qty * part, 9) - getattr(self, f"done_{order.venue_client_id}", 0.0)
            setattr(self, f"done_{order.venue_client_id}", round(order.qty * part, 9))
            fields = dict(
                trade_id=str(7000 + self.trades),
                fill_qty=qty,
                fill_price=price,
                cum_qty=round(order.qty * part, 9),
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
        assert await self.bus.publish(answer, envelope, producer=f"gateway-{VENUE}")
        assert await wait_drained(self.bus, self.names, timeout=30), "answer did not settle"


async def kill_switch(bus: Bus, names: set[str], ts: int, action: str) -> None:
    """What ``keel kill --cancel-open`` / ``keel resume`` store, at a chosen time."""
    command = GovernanceCommand(ts=ts, action=action, reason="test", issued_by="cli")  # type: ignore[arg-type]
    await bus.publish(command, Envelope.root(content_id("gov", action, ts), ts))
    if action == "kill":
        switch = KillSwitch(ts=ts, reason="test", flatten=False, issued_by="cli")
        await bus.publish(switch, Envelope.root(content_id("kill", ts, False), ts))
    assert await wait_drained(bus, names, timeout=30), "kill switch did not settle"


async def record_session(tmp_path: Path, url: str, bus: Bus) -> tuple[KeelConfig, Path]:
    """The live session: bars one at a time, the exchange's answers between them."""
    path = tmp_path / "keel.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    assert config.gateways == {VENUE}
    fleet = Fleet(url, tmp_path / "logs")
    for worker in fleet_plan(config, path):
        if not worker.name.startswith("gateway-"):  # the test plays the gateway
            fleet.start(worker)
    names = consumer_names(config)
    exchange = Exchange(bus, names)
    try:
        assert await wait_drained(bus, names, timeout=60), "workers did not start"
        killed = False
        for at, bar in enumerate(bars()):
            await bus.publish(bar, bar_envelope(bar))
            assert await wait_drained(bus, names, timeout=30), "bar did not settle"
            await exchange.orders(at)
            await exchange.answer(at, bar)
            if exchange.legs >= 4 and not killed:
                await kill_switch(bus, names, bar.close_time + 50 * MS, "kill")
                await exchange.orders(at + 1)
                killed = True
            elif killed == 1 and not exchange.due:
                await kill_switch(bus, names, bar.close_time + 60 * MS, "resume")
                killed = 2  # type: ignore[assignment]
        assert fleet.failed() == []
    finally:
        fleet.stop()
    assert exchange.legs >= 5, f"the session placed only {exchange.legs} legs"
    return config, path


def stream_of(subject: str) -> str:
    return next(s.name for s in STREAMS if any(subject_matches(p, subject) for p in s.subjects))


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
    events = pl.read_parquet(run_dir / "events.parquet").sort("seq")
    out: dict[tuple[str, str], list] = {}
    for producer, subject, id_, payload in events.select(
        "producer", "subject", "id", "payload"
    ).iter_rows():
        stream = stream_of(subject)
        if stream != "SYSTEM":
            out.setdefault((producer, stream), []).append((subject, id_, payload))
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

    async def record() -> tuple[KeelConfig, Path]:
        bus = await Bus.connect(server.url, name="test")
        try:
            return await record_session(base, server.url, bus)
        finally:
            await bus.close()

    try:
        config, path = asyncio.run(record())
        yield Session(server.url, config, path, base)
    finally:
        server.stop()


def stored(url: str, subject: str, stream: str) -> list[Stored]:
    async def read() -> list[Stored]:
        bus = await Bus.connect(url, name="test-read")
        try:
            return [item async for item in bus.read(subject, stream) if isinstance(item, Stored)]
        finally:
            await bus.close()

    return asyncio.run(read())


def test_a_recorded_session_replays_identically_with_its_recorded_answers(
    session: Session,
) -> None:
    answers = [item.event for item in stored(session.url, "venue.answer.>", "VENUE")]
    kinds = {a.kind for a in answers if isinstance(a, VenueAnswer)}
    assert {"accepted", "fill", "unknown", "rejected", "canceled"} <= kinds
    run = session.dir / "run"
    result = run_backtest(spec(session.config), run, session.url)
    assert result.venue == (
        f"recorded answers ({len(answers)} answers of gateway venue test, 3 operator commands)"
    )
    replayed = replayed_outputs(run)
    assert ("execution", "VENUE") in replayed and ("execution", "EXECUTION") in replayed
    assert ("portfolio", "PORTFOLIO") in replayed and ("risk", "ORDERS") in replayed
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
    # so the next venue order is not the one the session sent.
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
    assert message.startswith("recorded venue: venue order 4, new ")
    assert "differs from the recorded one (VENUE #10, new " in message
    assert message.endswith("the recorded answers no longer fit this config or code")
