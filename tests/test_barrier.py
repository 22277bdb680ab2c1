"""The settle barrier passes on a stream whose messages were all purged (its last sequence
stays, but nothing is left to see) instead of waiting for its timeout."""

from __future__ import annotations

from nats.js.api import AckPolicy, ConsumerConfig

from contracts.envelope import bar_envelope
from eventstore.barrier import Barrier
from eventstore.bus import Bus
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
