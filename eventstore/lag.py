"""Consumer lag across the log, and the drain the demo and tests wait on (the settle
barrier of ``eventstore/barrier.py``: pending counts lag stores, ack floors do not)."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats.errors

from eventstore.barrier import Barrier
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.retry import describe
from eventstore.streams import STREAMS


class ConsumerLag(msgspec.Struct, frozen=True):
    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int


async def consumer_lags(bus: Bus, streams: tuple[str, ...] | None = None) -> list[ConsumerLag]:
    """Every durable consumer's lag; one ``KeelError`` line when the server is away."""
    try:
        return await _consumer_lags(bus, streams)
    except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
        raise KeelError(f"cannot read the consumers: {describe(exc)}") from None


async def _consumer_lags(bus: Bus, streams: tuple[str, ...] | None) -> list[ConsumerLag]:
    out: list[ConsumerLag] = []
    for stream in streams or tuple(spec.name for spec in STREAMS):
        for info in await bus.js.consumers_info(stream):
            if not info.config.durable_name:
                continue
            out.append(
                ConsumerLag(
                    stream,
                    info.name,
                    info.num_pending or 0,
                    info.num_ack_pending or 0,
                    info.num_redelivered or 0,
                )
            )
    return out


async def wait_drained(
    bus: Bus,
    expect: set[str] = frozenset(),
    timeout: float = 60.0,
    poll: float = 0.05,
    streams: tuple[str, ...] | None = None,
) -> bool:
    """Wait until the named durable consumers exist and have acknowledged everything stored
    for them (all durable consumers of ``streams`` when no names are given)."""
    deadline = time.monotonic() + timeout
    names = streams or SETTLE_STREAMS
    while True:
        present = {lag.consumer for lag in await consumer_lags(bus, names)}
        if expect <= present:
            break
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    barrier = Barrier(bus, names, consumers=set(expect) or None)
    await barrier.start()
    try:
        return await barrier.wait(max(0.0, deadline - time.monotonic()))
    finally:
        await barrier.stop()


SETTLE_STREAMS = tuple(spec.name for spec in STREAMS if spec.name != "SYSTEM")
"""Streams workers consume (nothing consumes SYSTEM: heartbeats and dead letters)."""
