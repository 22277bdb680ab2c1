"""A worker's heartbeat on ``sys.heartbeat.<worker>``: one builder for every process that
beats (the workers and the market-data feed), so ``keel status`` reads them all alike."""

from __future__ import annotations

import contextlib
import time

from contracts.envelope import Envelope, content_id
from contracts.events import Heartbeat
from eventstore.bus import Bus


async def publish_heartbeat(
    bus: Bus,
    worker: str,
    instance: str,
    status: str,
    seq: int = 0,
    processed: int = 0,
    metrics_port: int = 0,
) -> None:
    """Best effort: a beat that cannot be stored is skipped, never an error of the worker;
    its id derives from (worker, instance, seq, status), so a re-sent beat is one beat."""
    now = time.time_ns()
    beat = Heartbeat(
        ts=now,
        worker=worker,
        instance=instance,
        seq=seq,
        processed=processed,
        status=status,
        metrics_port=metrics_port,
    )
    env = Envelope.root(content_id("hb", worker, instance, seq, status), now)
    with contextlib.suppress(Exception):
        await bus.publish(beat, env, worker)
