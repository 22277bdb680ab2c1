"""Consumer lag across the log, and the drain barrier the demo and tests wait on.

A worker acknowledges an input only after its outputs are stored, so the moment every
consumer shows nothing pending and nothing awaiting ack, the pipeline has settled.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from eventstore.bus import Bus
from eventstore.streams import STREAMS


class ConsumerLag(msgspec.Struct, frozen=True):
    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int


async def consumer_lags(bus: Bus, streams: tuple[str, ...] | None = None) -> list[ConsumerLag]:
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
    """Wait until the named durable consumers exist and none has work left (all durable
    consumers of ``streams`` when no names are given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lags = [
            lag for lag in await consumer_lags(bus, streams) if not expect or lag.consumer in expect
        ]
        present = {lag.consumer for lag in lags}
        if expect <= present and all(lag.pending == 0 and lag.ack_pending == 0 for lag in lags):
            return True
        await asyncio.sleep(poll)
    return False
