"""The settle barrier passes on a stream whose messages were all purged (its last sequence
stays, but nothing is left to see) instead of waiting for its timeout; a lockstep feed
waits for a late worker however long it takes."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from contracts.envelope import bar_envelope
from eventstore.barrier import Barrier
from eventstore.bus import Bus
from services.marketdata.feed import lockstep
from services.marketdata.synthetic import SyntheticMarket


async def test_a_purged_stream_settles(bus: Bus) -> None:
    bars = list(SyntheticMarket(symbols=("BTC/USDT",), bars=50).generate())
    await bus.publish_many((b, bar_envelope(b)) for b in bars)
    await bus.js.purge_stream("MARKET")
    await bus.js.add_consumer(
        "MARKET",
        ConsumerConfig(durable_name="reader", ack_policy=AckPolicy.EXPLICIT, filter_subject="md.>"),
    )
    barrier = Barrier(bus, ("MARKET",), consumers={"reader"})
    await barrier.start()
    try:
        assert await barrier.wait(5.0)
    finally:
        await barrier.stop()


async def test_lockstep_waits_for_a_late_worker_instead_of_moving_on(
    bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker slower than the barrier's timeout (stopped, restarting) is said in one line
    and waited for: a lockstep session never feeds the next step before the fleet caught up."""
    await bus.js.add_consumer(
        "MARKET",
        ConsumerConfig(durable_name="late", ack_policy=AckPolicy.EXPLICIT, filter_subject="md.>"),
    )
    bars = list(SyntheticMarket(symbols=("BTC/USDT",), bars=3).generate())
    await bus.publish_many((b, bar_envelope(b)) for b in bars)
    wait = lockstep(bus, {"late"}, timeout=0.3)
    with caplog.at_level(logging.WARNING, logger="keel.marketdata"):
        step = asyncio.create_task(wait())
        await asyncio.sleep(1.5)
        assert not step.done(), "lockstep moved on before the worker caught up"
        sub = await bus.js.pull_subscribe("", durable="late", stream="MARKET")
        for msg in await sub.fetch(len(bars), timeout=5):
            await msg.ack()
        assert await asyncio.wait_for(step, 10)
    lines = [r.getMessage() for r in caplog.records if r.name == "keel.marketdata"]
    assert lines == [
        "lockstep: the fleet has not caught up within 0s; waiting for it",
        "lockstep: the fleet caught up; feeding again",
    ]
