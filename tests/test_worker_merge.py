"""A worker with several inputs decides their messages in stored order, whichever input's
pull reaches the server first (services/runtime/merge.py), against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import ClassVar

import msgspec
from nats.js.api import ConsumerInfo, SequenceInfo

from contracts.envelope import Envelope, bar_envelope
from contracts.events import Event
from eventstore.bus import Bus
from eventstore.server import EmbeddedServer
from services.runtime.merge import UNBOUNDED, InputMerge
from services.runtime.role import Input, Role
from services.runtime.worker import Worker, WorkerOptions
from tests import factories

MARKET = Input("MARKET", ("md.bar.>",))
EXECUTION = Input("EXECUTION", ("exec.report.>",))


class Recorder:
    """Notes the type of each event in the order it is decided."""

    snapshot_version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.seen: list[str] = []

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        self.seen.append(type(event).__name__)
        return ()

    def snapshot(self) -> bytes:
        return msgspec.json.encode(self.seen)

    def restore(self, data: bytes) -> None:
        self.seen = msgspec.json.decode(data)


class GatedWorker(Worker):
    """A worker whose MARKET input pulls only while the test's gate is open: the bar input
    between two pulls, held there as long as the test needs."""

    def __init__(self, name: str) -> None:
        self.recorder = Recorder()
        super().__init__(
            Role(name, (MARKET, EXECUTION), self.recorder),
            WorkerOptions(metrics_port=None, heartbeat_s=0.5),
        )
        self.gate = asyncio.Event()

    async def _fetch(self, bus, sub, spec: Input) -> None:  # type: ignore[no-untyped-def]
        if spec.stream == "MARKET":
            fetch = sub.fetch

            async def gated(*args, **kwargs):  # type: ignore[no-untyped-def]
                await self.gate.wait()
                return await fetch(*args, **kwargs)

            sub.fetch = gated
        await super()._fetch(bus, sub, spec)


@asynccontextmanager
async def running(url: str, worker: GatedWorker) -> AsyncIterator[Bus]:
    """``worker`` running on its own connection; a connection for the test."""
    bus = await Bus.connect(url, name="test")
    worker_bus = await Bus.connect(url, name=worker.name)
    task = asyncio.create_task(worker.run(worker_bus))
    try:
        yield bus
    finally:
        worker.stop()
        await task
        await worker_bus.close()
        await bus.close()


async def until(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.01)
    return check()


async def publish_fill(bus: Bus, index: int) -> None:
    fill = factories.fill("buy", 1.0, 100.0, ts=factories.T0 + index)
    await bus.publish(fill, Envelope.root(f"fill-{index}", fill.ts))


async def publish_bar_then_fill(bus: Bus, index: int = 0) -> None:
    bar = factories.bar(100.0, index=index)
    await bus.publish(bar, bar_envelope(bar))
    await publish_fill(bus, index)


async def test_a_fill_waits_for_the_bar_stored_before_it(nats_server: EmbeddedServer) -> None:
    worker = GatedWorker("merge-wait")
    worker.gate.set()
    async with running(nats_server.url, worker) as bus:
        await publish_bar_then_fill(bus, 0)
        assert await until(lambda: len(worker.recorder.seen) == 2)
        worker.gate.clear()
        await asyncio.sleep(1.5)  # the bar input's pull in progress runs out (1 s)
        await publish_bar_then_fill(bus, 1)
        await asyncio.sleep(0.5)  # the fill has arrived; the bar's input has not pulled yet
        assert len(worker.recorder.seen) == 2, "the fill was decided before the bar"
        worker.gate.set()
        assert await until(lambda: len(worker.recorder.seen) == 4)
        assert worker.recorder.seen == ["Bar", "ExecutionReport"] * 2


async def test_an_input_with_nothing_pending_holds_nothing_back(
    nats_server: EmbeddedServer,
) -> None:
    worker = GatedWorker("merge-idle")
    async with running(nats_server.url, worker) as bus:
        await publish_fill(bus, 0)
        assert await until(lambda: worker.recorder.seen == ["ExecutionReport"], timeout=5)


async def test_a_restart_with_both_inputs_pending_decides_them_in_stored_order(
    nats_server: EmbeddedServer,
) -> None:
    """Both stored while the worker is away: on its start the execution input is pulled
    first, yet the bar is decided first."""
    first = GatedWorker("merge-restart")
    first.gate.set()
    async with running(nats_server.url, first):
        await asyncio.sleep(0.5)  # its consumers exist
    bus = await Bus.connect(nats_server.url, name="test")
    for index in range(3):
        await publish_bar_then_fill(bus, index)
    await bus.close()
    again = GatedWorker("merge-restart")
    async with running(nats_server.url, again):
        await asyncio.sleep(0.3)
        assert again.recorder.seen == []
        again.gate.set()
        assert await until(lambda: len(again.recorder.seen) == 6)
        assert again.recorder.seen == ["Bar", "ExecutionReport"] * 3


def info(delivered: int, ack_floor: int, pending: int) -> ConsumerInfo:
    return ConsumerInfo(
        name="c",
        stream_name="MARKET",
        config=None,  # type: ignore[arg-type]
        created=None,  # type: ignore[arg-type]
        delivered=SequenceInfo(consumer_seq=delivered, stream_seq=delivered),
        ack_floor=SequenceInfo(consumer_seq=ack_floor, stream_seq=ack_floor),
        num_pending=pending,
    )


def test_the_watermark_is_unbounded_only_when_nothing_is_pending_or_on_its_way() -> None:
    merge = InputMerge(("MARKET", "EXECUTION"))
    assert merge.watermark("MARKET", info(0, 0, 0)) == UNBOUNDED
    assert merge.watermark("MARKET", info(0, 0, 1)) == -1, "pending, nothing received"
    assert merge.watermark("MARKET", info(4, 0, 0)) == -1, "delivered, not yet received"
    assert merge.watermark("MARKET", info(4, 4, 0)) == UNBOUNDED, "delivered and acknowledged"
    assert merge.watermark("MARKET", None) == -1, "the server away: nothing is assumed"
