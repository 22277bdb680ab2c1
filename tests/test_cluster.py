"""Replicated streams on a real 3-node JetStream cluster (``LocalCluster``, loopback ports).

With ``KEEL_STREAM_REPLICAS=3`` every stream and the snapshot bucket has three replicas.
Losing one node, then the node that leads a stream, loses no acknowledged write, stores
nothing twice, and a consumer and a worker process (``keel run risk``) carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.envelope import Envelope, bar_envelope
from contracts.events import Event
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.lag import consumer_lags
from eventstore.local_cluster import LocalCluster
from eventstore.server import URL_ENV
from eventstore.streams import REPLICAS_ENV, STREAMS
from services.fleet import keel_command
from services.runtime.snapshots import SNAPSHOT_BUCKET, snapshot_bucket
from tests import factories
from tests.conftest import ROOT

SETTLE_S = 30.0
"""A failure guard for elections and catch-up, not a timing assertion."""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    monkeypatch.setenv(REPLICAS_ENV, "3")
    started = LocalCluster(tmp_path / "cluster").start()
    yield started
    started.stop()


async def until(
    check: Callable[[], Awaitable[object]], what: str, timeout: float = SETTLE_S
) -> object:
    """Poll an async check until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(NatsError, TimeoutError):
            if result := await check():
                return result
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        await asyncio.sleep(0.1)


async def all_current(bus: Bus, stream: str) -> bool:
    info = await bus.js.stream_info(stream)
    peers = info.cluster.replicas or [] if info.cluster else []
    return (
        info.config.num_replicas == 3
        and info.cluster is not None
        and info.cluster.leader is not None
        and len(peers) == 2
        and all(p.current for p in peers)
    )


async def store(bus: Bus, events: list[tuple[Event, Envelope]]) -> list[str]:
    """Publish each event until the log acknowledges it, re-sending under the same id after
    a timeout or a lost connection (de-duplicated by the server); the acknowledged ids."""
    acked = []
    for event, envelope in events:
        deadline = time.monotonic() + SETTLE_S
        while True:
            try:
                await bus.publish(event, envelope)
                break
            except (KeelError, NatsError, TimeoutError):
                assert time.monotonic() < deadline, f"{envelope.event_id} never acknowledged"
                await asyncio.sleep(0.2)
        acked.append(envelope.event_id)
    return acked


def bars(first: int, count: int) -> list[tuple[Event, Envelope]]:
    out: list[tuple[Event, Envelope]] = []
    for i in range(first, first + count):
        bar = factories.bar(100.0 + i % 7, index=i)
        out.append((bar, bar_envelope(bar)))
    return out


async def stored_ids(bus: Bus, stream: str, subject: str) -> list[str]:
    """Everything stored; a read that meets a leader still settling is asked again."""
    for _ in range(4):
        with contextlib.suppress(nats.errors.TimeoutError):
            return await _ids(bus, stream, subject)
        await asyncio.sleep(1.0)
    return await _ids(bus, stream, subject)


async def _ids(bus: Bus, stream: str, subject: str) -> list[str]:
    return [
        item.envelope.event_id
        async for item in bus.read(subject, stream)
        if isinstance(item, Stored)
    ]


async def test_every_stream_and_the_snapshot_bucket_have_three_current_replicas(
    cluster: LocalCluster,
) -> None:
    bus = await Bus.connect(cluster.url, name="test-replicas")
    try:
        await snapshot_bucket(bus)
        for stream in (*(spec.name for spec in STREAMS), f"KV_{SNAPSHOT_BUCKET}"):
            await until(lambda s=stream: all_current(bus, s), f"{stream}: 3 current replicas")
            info = await bus.js.stream_info(stream)
            assert info.cluster is not None and info.cluster.name == "keel-local"
            names = {info.cluster.leader, *(p.name for p in info.cluster.replicas or [])}
            assert names == set(cluster.node_names), stream
    finally:
        await bus.close()


async def test_losing_a_node_then_the_stream_leader_loses_and_repeats_nothing(
    cluster: LocalCluster,
) -> None:
    bus = await Bus.connect(cluster.url, name="test-failover")
    consumer = "probe-market"
    await bus.js.add_consumer(
        "MARKET",
        ConsumerConfig(durable_name=consumer, ack_policy=AckPolicy.EXPLICIT, ack_wait=5),
    )
    sub = await bus.js.pull_subscribe_bind(consumer, "MARKET")
    consumed: list[int] = []

    async def consume(expected: int) -> None:
        async def caught_up() -> bool:
            for msg in await sub.fetch(50, timeout=1):
                consumed.append(msg.metadata.sequence.stream)
                await msg.ack_sync()
            return len(set(consumed)) >= expected

        await until(caught_up, f"the consumer reaches {expected} messages")

    try:
        acked = await store(bus, bars(0, 60))
        await consume(60)

        leader = await cluster.leader("MARKET")
        follower = (leader + 1) % 3
        cluster.kill(follower)
        acked += await store(bus, bars(60, 60))
        await consume(120)
        cluster.restart(follower)
        await until(lambda: all_current(bus, "MARKET"), "the restarted node catches up")

        cluster.kill(leader)
        elected = await cluster.leader("MARKET")
        assert elected != leader
        acked += await store(bus, bars(120, 60))
        await consume(180)

        ids = await stored_ids(bus, "MARKET", "md.>")
        assert len(acked) == 180
        assert sorted(ids) == sorted(acked)  # every acknowledged bar, each once
        assert sorted(set(consumed)) == list(range(1, 181))  # the consumer saw every one
        info = await bus.js.consumer_info("MARKET", consumer)
        assert info.num_pending == 0 and info.num_ack_pending == 0
    finally:
        await bus.close()


def start_risk(cluster: LocalCluster, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("KEEL_NATS_")},
        URL_ENV: cluster.url,
        REPLICAS_ENV: "3",
        "PYTHONUNBUFFERED": "1",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            keel_command("run", "risk"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )


def signals(first: int, count: int) -> list[tuple[Event, Envelope]]:
    out: list[tuple[Event, Envelope]] = []
    for i in range(first, first + count):
        ts = factories.T0 + i * 60_000_000_000
        signal = factories.signal(-1.0 if i % 2 else 1.0, ts=ts)
        out.append((signal, Envelope.root(f"cluster-signal-{i}", ts)))
    return out


async def decided(bus: Bus) -> dict[str, int]:
    """How many risk outputs each signal caused."""
    counts: dict[str, int] = {}
    async for item in bus.read("ord.>", "ORDERS"):
        if isinstance(item, Stored):
            cause = item.envelope.causation_id
            counts[cause] = counts.get(cause, 0) + 1
    return counts


async def test_a_worker_process_carries_on_across_the_loss_of_its_stream_leader(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    bus = await Bus.connect(cluster.url, name="test-worker")
    risk = start_risk(cluster, tmp_path / "risk.log")
    try:
        first = await store(bus, signals(0, 20))
        await until(lambda: decided_all(bus, first), "risk decides the first signals", timeout=60)
        before = await decided(bus)

        leader = await cluster.leader("SIGNALS")
        cluster.kill(leader)
        assert await cluster.leader("SIGNALS") != leader
        second = await store(bus, signals(20, 20))
        await until(lambda: decided_all(bus, first + second), "risk decides after the election", 60)
        after = await decided(bus)

        assert risk.poll() is None, (tmp_path / "risk.log").read_text()[-2000:]
        assert set(after) == set(first + second)
        # one decision per signal, the same count for each as before the loss
        assert set(after.values()) == set(before.values())
        assert all(after[cause] == count for cause, count in before.items())
        lags = {lag.consumer: lag for lag in await consumer_lags(bus, ("SIGNALS",))}
        assert lags["risk-signals"].pending == 0
    finally:
        risk.terminate()
        risk.wait(timeout=15)
        await bus.close()


async def decided_all(bus: Bus, ids: list[str]) -> bool:
    return set(ids) <= set(await decided(bus))
