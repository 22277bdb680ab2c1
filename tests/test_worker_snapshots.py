"""Snapshot versions and rebuilding a worker's state from the log, against a real nats-server.

A snapshot the worker cannot read (bytes that are not a snapshot, another version, a state
that does not decode at its version) stops it with one line and stays stored. With
``rebuild`` the worker folds the log up to what it acknowledged instead: the same state an
uninterrupted worker holds, and nothing published again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from contracts.codec import encode
from contracts.envelope import Envelope, bar_envelope
from contracts.events import OrderCommand
from contracts.system_events import GovernanceCommand
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.fleet import Fleet, WorkerProcess
from services.runtime.snapshots import SNAPSHOT_BUCKET, Snapshot, snapshot_bucket
from services.runtime.worker import Worker, WorkerOptions
from services.strategy.host import StrategyDecider, strategy_role
from strategies.registry import build_strategy
from tests import scenario
from tests.conftest import keel
from tests.test_worker_runtime import consumers, fleet_workers, running, settle, stored

REBUILD = WorkerOptions(metrics_port=None, heartbeat_s=0.5, rebuild=True)
OUTPUT_STREAMS = {"sig.>": "SIGNALS", "ord.>": "ORDERS", "exec.>": "EXECUTION", "pf.>": "PORTFOLIO"}
REMEDY = "start the worker with --rebuild to rebuild its state from the log"


async def command(bus: Bus, workers: list[Worker], action: str) -> None:
    """A governance command stamped at the session's start, stored after the bars before
    it: event time and store order disagree, as with any command a person gives."""
    event = GovernanceCommand(ts=scenario.T0, action=action, reason="drill")
    await bus.publish(event, Envelope.root(f"{action}-1", scenario.T0))
    assert await wait_drained(bus, consumers(workers), timeout=20)


async def first_half(bus: Bus, workers: list[Worker]) -> None:
    """The kill switch is on while the bar-5 signal arrives, so risk rejects it."""
    bars = scenario.bars()
    await settle(bus, workers, bars[:3])
    await command(bus, workers, "kill")
    await settle(bus, workers, bars[3:6])
    await command(bus, workers, "resume")


async def outputs(bus: Bus) -> dict[str, list[tuple[str, bytes]]]:
    return {
        stream: [
            (item.envelope.event_id, encode(item.event))
            async for item in bus.read(subject, stream)
            if isinstance(item, Stored)
        ]
        for subject, stream in OUTPUT_STREAMS.items()
    }


def states(workers: list[Worker]) -> dict[str, bytes]:
    return {w.name: w.decider.snapshot() for w in workers}


async def stops_with(url: str, worker: Worker) -> str:
    bus = await Bus.connect(url, name=worker.name)
    try:
        with pytest.raises(KeelError) as caught:
            await asyncio.wait_for(worker.run(bus), 20)
    finally:
        await bus.close()
    return str(caught.value)


def risk_worker(workers: list[Worker]) -> Worker:
    return next(w for w in workers if w.name == "risk")


async def test_a_snapshot_the_worker_cannot_read_stops_it_with_one_line_and_stays(
    nats_server: EmbeddedServer, bus: Bus, tmp_path: Path
) -> None:
    workers = fleet_workers()
    async with running(nats_server.url, workers) as driver:
        await settle(driver, workers, scenario.bars()[:6])
    risk = risk_worker(workers)
    version = risk.decider.snapshot_version
    held = risk.decider.snapshot()
    where = f"risk: its snapshot (KV bucket {SNAPSHOT_BUCKET}, key risk)"
    garbage = b"\x00\xffnot a snapshot"
    unreadable = {
        garbage: f"{where} does not decode, expected version {version} (",
        msgspec.msgpack.encode(Snapshot(version + 1, {"MARKET": 6}, held, 6)): (
            f"{where} is at version {version + 1}, this build reads version {version}; {REMEDY}"
        ),
        msgspec.msgpack.encode(Snapshot(version, {"MARKET": 6}, b"\x93garbage", 6)): (
            f"{where} does not decode at version {version} ("
        ),
    }
    kv = await snapshot_bucket(bus)
    for stored_bytes, expected in unreadable.items():
        await kv.put("risk", stored_bytes)
        message = await stops_with(nats_server.url, risk_worker(fleet_workers()))
        assert message.startswith(expected), message
        assert message.endswith(f"{REMEDY} (the stored snapshot is left as it is)"), message
        assert "\n" not in message
        assert (await kv.get("risk")).value == stored_bytes

    await kv.put("risk", garbage)
    result = await asyncio.to_thread(keel, nats_server.url, "run", "risk")
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {unreadable[garbage]}"), line
    assert (await kv.get("risk")).value == garbage

    replaying = await asyncio.to_thread(
        keel, nats_server.url, "run", "risk", "--namespace", "r1", "--rebuild"
    )
    assert replaying.returncode == 2
    assert replaying.stderr.strip().splitlines() == [
        "error: --rebuild is for a live worker: a bus replay's worker keeps no state"
    ]

    fleet = Fleet(nats_server.url, tmp_path / "logs")
    fleet.start(WorkerProcess("risk", ["run", "risk", "--rebuild"]))
    try:
        deadline = time.monotonic() + 30
        while (await kv.get("risk")).value == garbage and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        rebuilt = msgspec.msgpack.decode((await kv.get("risk")).value, type=Snapshot)
    finally:
        fleet.stop()
    floors = {
        i.stream: (await bus.js.consumer_info(i.stream, f"risk-{i.stream.lower()}")).ack_floor
        for i in risk.inputs
    }
    assert rebuilt.version == version
    assert rebuilt.seqs == {s: floor.stream_seq for s, floor in floors.items() if floor.stream_seq}


async def test_rebuild_folds_the_log_into_the_state_an_uninterrupted_worker_holds(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    bars = scenario.bars()
    uninterrupted = fleet_workers()
    async with running(nats_server.url, uninterrupted) as bus:
        await first_half(bus, uninterrupted)
        await settle(bus, uninterrupted, bars[6:])
        expected_outputs = await outputs(bus)
    expected_states = states(uninterrupted)

    other = EmbeddedServer(tmp_path / "interrupted").start()
    try:
        first = fleet_workers()
        async with running(other.url, first) as bus:
            await first_half(bus, first)
        stopped = states(first)  # running() has stopped them; their snapshots get unreadable
        test_bus = await Bus.connect(other.url, name="test")
        try:
            kv = await snapshot_bucket(test_bus)
            for worker in first:
                await kv.put(worker.name, b"\x00\xffnot a snapshot")

            published: list[str] = []
            rebuilt = fleet_workers(REBUILD)
            async with running(other.url, rebuilt, published) as bus:
                assert states(rebuilt) == stopped
                assert published == [], "the rebuild published outputs again"
                for worker in rebuilt:
                    entry = await kv.get(worker.name)
                    snap = msgspec.msgpack.decode(entry.value, type=Snapshot)
                    assert (snap.version, snap.state) == (
                        worker.decider.snapshot_version,
                        stopped[worker.name],
                    )
                await settle(bus, rebuilt, bars[6:])
                assert published, "the recorder sees the outputs of the bars after the rebuild"
                orders = await stored(bus, "ord.>", "ORDERS")
                commands = [o for o in orders if isinstance(o, OrderCommand)]
                assert [(o.side, o.qty) for o in commands] == [("buy", 1.0)]
                assert await outputs(bus) == expected_outputs
            assert states(rebuilt) == expected_states
        finally:
            await test_bus.close()
    finally:
        other.stop()


async def test_rebuild_without_a_durable_consumer_is_a_fresh_start(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    bars = scenario.bars()
    params = {"kind": "sma", "fast": 2, "slow": 3, "mode": "long_short"}
    for bar in bars:
        await bus.publish(bar, bar_envelope(bar))
    worker = Worker(strategy_role(build_strategy("ma_cross", params, "fresh"), []), REBUILD)
    async with running(nats_server.url, [worker]):
        assert worker.processed == len(bars)
    in_process = StrategyDecider(build_strategy("ma_cross", params, "fresh"))
    for bar in bars:
        in_process.decide(bar, bar.ts)
    assert worker.decider.snapshot() == in_process.snapshot()
