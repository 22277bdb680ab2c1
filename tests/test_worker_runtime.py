"""Worker runtime against a real nats-server: dead letters, the kill switch, metrics, restarts."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from contracts.codec import encode
from contracts.envelope import MSG_ID, Envelope, bar_envelope
from contracts.events import Bar, Event, OrderCommand, RiskDecision
from contracts.system_events import DeadLetter, GovernanceCommand
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer, free_port
from services.execution.paper_venue import PaperVenueConfig
from services.execution.role import execution_role
from services.portfolio.config import PortfolioConfig
from services.portfolio.role import portfolio_role
from services.risk.limits import RiskLimits
from services.risk.role import risk_role
from services.runtime.worker import Worker, WorkerOptions
from services.strategy.host import strategy_role
from strategies.registry import build_strategy
from tests import scenario

QUIET = WorkerOptions(metrics_port=None, heartbeat_s=0.5)


def fleet_workers(options: WorkerOptions = QUIET) -> list[Worker]:
    strategy = build_strategy(
        "ma_cross", {"kind": "sma", "fast": 2, "slow": 3, "mode": "long_short"}, "ma"
    )
    roles = [
        strategy_role(strategy, []),
        risk_role(RiskLimits(max_position=5)),
        execution_role(PaperVenueConfig(fee_bps=10)),
        portfolio_role(PortfolioConfig(starting_cash=1000)),
    ]
    return [Worker(role, options) for role in roles]


def consumers(workers: list[Worker]) -> set[str]:
    return {f"{w.name}-{i.stream.lower()}" for w in workers for i in w.inputs}


def record_outputs(bus: Bus, published: list[str]) -> None:
    """Note the subject of every output a worker publishes through ``bus``: pipelined with
    ``send``, one at a time with ``store`` (a retry); ``sys.*`` (heartbeats, status) is not
    an output."""
    send, store = bus.send, bus.store

    async def sent(subject: str, *args: Any, **kwargs: Any) -> asyncio.Future:
        if not subject.startswith("sys."):
            published.append(subject)
        return await send(subject, *args, **kwargs)

    async def stored(subject: str, *args: Any, **kwargs: Any) -> Any:
        if not subject.startswith("sys."):
            published.append(subject)
        return await store(subject, *args, **kwargs)

    bus.send, bus.store = sent, stored  # type: ignore[method-assign]


@asynccontextmanager
async def running(
    url: str, workers: list[Worker], published: list[str] | None = None
) -> AsyncIterator[Bus]:
    """Workers in this process (each with its own connection), plus a bus for the test;
    ``published`` collects the subjects of the workers' outputs."""
    buses = [await Bus.connect(url, name=w.name) for w in workers]
    if published is not None:
        for worker_bus in buses:
            record_outputs(worker_bus, published)
    tasks = [asyncio.create_task(w.run(b)) for w, b in zip(workers, buses, strict=True)]
    bus = await Bus.connect(url, name="test-driver")
    try:
        assert await wait_drained(bus, consumers(workers), timeout=20)
        yield bus
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        for b in [*buses, bus]:
            await b.close()


async def stored(bus: Bus, subject: str, stream: str) -> list[Event]:
    return [i.event async for i in bus.read(subject, stream) if isinstance(i, Stored)]


async def settle(bus: Bus, workers: list[Worker], bars: list[Bar]) -> None:
    for bar in bars:
        await bus.publish(bar, bar_envelope(bar))
        assert await wait_drained(bus, consumers(workers), timeout=20)


async def test_malformed_bytes_on_every_input_subject_become_dead_letters(
    nats_server: EmbeddedServer,
) -> None:
    workers = fleet_workers()
    async with running(nats_server.url, workers) as bus:
        garbage = {
            "md.bar.test.BTC-USDT.1m": b"\x00\xffnot json",
            "sig.ma.test.BTC-USDT": b'{"type":"Signal"}',
            "ord.cmd.test.BTC-USDT": b'{"type":"OrderCommand","ts":"soon"}',
            "exec.report.test.BTC-USDT": b"[1,2,3]",
            "gov.cmd.kill": b'{"type":"Nope","ts":1}',
        }
        for i, (subject, payload) in enumerate(garbage.items()):
            await bus.js.publish(subject, payload, headers={MSG_ID: f"garbage-{i}"})
        await bus.js.publish("md.bar.test.BTC-USDT.1m", encode(scenario.bars()[0]))  # no headers
        assert await wait_drained(bus, consumers(workers), timeout=20)

        letters = [e for e in await stored(bus, "sys.dlq.>", "SYSTEM") if isinstance(e, DeadLetter)]
        by_worker: dict[str, set[str]] = {}
        for letter in letters:
            by_worker.setdefault(letter.worker, set()).add(letter.subject)
            assert letter.reason.startswith("undecodable")
            assert letter.stream_seq > 0
        assert by_worker == {
            "strategy-ma": {"md.bar.test.BTC-USDT.1m"},
            "risk": {
                "md.bar.test.BTC-USDT.1m",
                "sig.ma.test.BTC-USDT",
                "exec.report.test.BTC-USDT",
                "gov.cmd.kill",
            },
            "execution": {"md.bar.test.BTC-USDT.1m", "ord.cmd.test.BTC-USDT"},
            "portfolio": {"md.bar.test.BTC-USDT.1m", "exec.report.test.BTC-USDT"},
        }
        missing_header = [ltr for ltr in letters if "Nats-Msg-Id" in ltr.reason]
        assert {ltr.worker for ltr in missing_header} == {
            "strategy-ma",
            "risk",
            "execution",
            "portfolio",
        }
        # still alive: the hand-made market trades as if nothing happened
        await settle(bus, workers, scenario.bars())
        fills = await stored(bus, "exec.>", "EXECUTION")
        assert sum(1 for f in fills if f.fill_qty > 0) == 2


async def test_kill_switch_blocks_new_orders_until_resume(nats_server: EmbeddedServer) -> None:
    workers = fleet_workers()
    async with running(nats_server.url, workers) as bus:
        now = scenario.T0
        kill = GovernanceCommand(ts=now, action="kill", reason="drill")
        await bus.publish(kill, Envelope.root("kill-1", now))
        bars = scenario.bars()
        await settle(bus, workers, bars[:6])
        decisions = await stored(bus, "ord.>", "ORDERS")
        assert [type(d) for d in decisions] == [RiskDecision]
        assert decisions[0].rule == "kill_switch" and "drill" in decisions[0].reason
        assert not decisions[0].approved

        resume = GovernanceCommand(ts=now, action="resume")
        await bus.publish(resume, Envelope.root("resume-1", now))
        assert await wait_drained(bus, consumers(workers), timeout=20)
        await settle(bus, workers, bars[6:])
        orders = [e for e in await stored(bus, "ord.>", "ORDERS") if isinstance(e, OrderCommand)]
        assert [(o.side, o.qty) for o in orders] == [("buy", 1.0)]


async def test_restarted_worker_resumes_from_its_snapshot(nats_server: EmbeddedServer) -> None:
    bars = scenario.bars()
    first = fleet_workers()
    async with running(nats_server.url, first) as bus:
        await settle(bus, first, bars[:6])
    second = fleet_workers()
    async with running(nats_server.url, second) as bus:
        await settle(bus, second, bars[6:])
        signals = await stored(bus, "sig.>", "SIGNALS")
        assert [s.target_position for s in signals] == [-1.0, 1.0]
        fills = [f for f in await stored(bus, "exec.>", "EXECUTION") if f.fill_qty > 0]
        assert [(f.side, f.fill_qty, f.fill_price) for f in fills] == [
            (side, qty, price) for side, qty, price, _ in scenario.EXPECTED_FILLS
        ]
        equity = (await bus.last_event("PORTFOLIO", "pf.equity")).event
        assert abs(equity.equity - scenario.EXPECTED_EQUITY) < 1e-9


async def scrape(port: int) -> str:
    """The worker's ``/metrics``, over HTTP as Prometheus reads it."""
    url = f"http://127.0.0.1:{port}/metrics"
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())


def sample(body: str, metric: str, worker: str) -> float | None:
    """The value of ``metric``'s series labelled ``worker``, None when it has none."""
    for line in body.splitlines():
        if line.startswith(metric + "{") and f'worker="{worker}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


async def beat_after(port: int, worker: str, previous: float, timeout: float = 10) -> float:
    """The worker's heartbeat gauge once it is past ``previous`` (Unix seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        beat = sample(await scrape(port), "keel_heartbeat_timestamp_seconds", worker)
        if beat is not None and beat > previous:
            return beat
        await asyncio.sleep(0.05)
    raise AssertionError(f"{worker}: no heartbeat after {previous} on its endpoint")


async def test_worker_serves_metrics_and_heartbeats(nats_server: EmbeddedServer) -> None:
    port = free_port()
    options = WorkerOptions(metrics_port=port, heartbeat_s=0.2)
    strategy = build_strategy("ma_cross", {"fast": 2, "slow": 3}, "metered")
    workers = [Worker(strategy_role(strategy, []), options)]
    async with running(nats_server.url, workers) as bus:
        await settle(bus, workers, scenario.bars())
        body = await scrape(port)
        events_in = [
            line
            for line in body.splitlines()
            if line.startswith("keel_events_in") and 'worker="strategy-metered"' in line
        ]
        assert events_in and float(events_in[0].rsplit(" ", 1)[1]) == len(scenario.bars())
        assert "keel_handler_duration_seconds_bucket" in body
        deadline = time.monotonic() + 10
        beats = await stored(bus, "sys.heartbeat.>", "SYSTEM")
        while not beats and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            beats = await stored(bus, "sys.heartbeat.>", "SYSTEM")
        assert beats and beats[-1].worker == "strategy-metered"
        assert beats[-1].metrics_port == port


async def test_the_heartbeat_gauge_moves_forward_with_each_beat(
    nats_server: EmbeddedServer,
) -> None:
    """``keel_heartbeat_timestamp_seconds`` (what ``KeelWorkerHung`` reads) is there after
    the first beat and moves with the next: the endpoint's thread serves it, the loop sets it."""
    port = free_port()
    options = WorkerOptions(metrics_port=port, heartbeat_s=0.1)
    worker = Worker(risk_role(RiskLimits(max_position=5)), options)
    async with running(nats_server.url, [worker]):
        first = await beat_after(port, "risk", 0.0)
        assert abs(time.time() - first) < 5
        later = await beat_after(port, "risk", first)
        assert first < later <= time.time()


async def test_the_heartbeat_gauge_moves_on_while_the_store_is_away(
    nats_server: EmbeddedServer,
) -> None:
    """The gauge is set when the loop makes the beat, not when the store takes it: a worker
    whose server is down is not hung. Its beats only come further apart (the beat's publish
    and the consumer poll wait for their 5 s timeouts: one input here)."""
    port = free_port()
    options = WorkerOptions(metrics_port=port, heartbeat_s=0.1)
    strategy = build_strategy("ma_cross", {"fast": 2, "slow": 3}, "away")
    worker = Worker(strategy_role(strategy, []), options)
    async with running(nats_server.url, [worker]):
        await beat_after(port, "strategy-away", 0.0)
        nats_server.stop()
        try:
            stopped = time.time()
            away = await beat_after(port, "strategy-away", stopped, timeout=30)
            again = await beat_after(port, "strategy-away", away, timeout=30)
            assert again - away < 15, again - away
        finally:
            nats_server.start()


async def test_a_worker_whose_inputs_changed_reads_through_its_new_filter(
    nats_server: EmbeddedServer,
) -> None:
    """An upgraded worker (here risk gaining ``md.status.>``) updates its durable's filter:
    the old filter would hide the new subjects for ever."""
    bus = await Bus.connect(nats_server.url, name="test-driver")
    try:
        old = ConsumerConfig(
            name="risk-market",
            durable_name="risk-market",
            ack_policy=AckPolicy.EXPLICIT,
            filter_subjects=["md.bar.>"],
        )
        await bus.js.add_consumer("MARKET", old)
        worker = Worker(risk_role(RiskLimits(max_position=5)), QUIET)
        async with running(nats_server.url, [worker]):
            info = await bus.js.consumer_info("MARKET", "risk-market")
        assert "md.status.>" in (info.config.filter_subjects or [])
    finally:
        await bus.close()
