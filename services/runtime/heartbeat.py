"""What a worker tells ``keel status`` about itself: a heartbeat on ``sys.heartbeat.<worker>``
(one builder for every process that beats, the workers and the market-data feed), and a
``SystemStatus`` on ``sys.status.<worker>`` while the store refuses its outputs.

Each beat also sets the heartbeat gauge of the process's metrics endpoint
(``keel_heartbeat_timestamp_seconds``), when the beat is made rather than when it is stored:
a worker whose store is away still beats, one whose loop hangs does not."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from contracts.envelope import Envelope, content_id
from contracts.system_events import Heartbeat, SystemState, SystemStatus
from eventstore.bus import Bus
from eventstore.retry import StoreFull

STORE_FULL = "store_full"
"""The ``rule`` of a status that says the store is full."""
STATUS_WAIT_S = 5.0

log = logging.getLogger("keel.worker")

BeatSeen = Callable[[float], None]
"""Told the Unix time of a beat as the process's event loop makes it."""
_beat_gauges: dict[tuple[str, int], list[BeatSeen]] = {}


def on_beat(worker: str, metrics_port: int, seen: BeatSeen) -> Callable[[], None]:
    """Tell ``seen`` of every beat this process makes as ``worker`` announcing
    ``metrics_port``: the metrics endpoint's heartbeat gauge, which the hung-worker alert
    reads (a loop that hangs stops it while the endpoint's thread still answers scrapes).
    Returns the call that stops it."""
    key = (worker, metrics_port)
    _beat_gauges.setdefault(key, []).append(seen)

    def forget() -> None:
        listeners = _beat_gauges.get(key, [])
        if seen in listeners:
            listeners.remove(seen)
        if not listeners:
            _beat_gauges.pop(key, None)

    return forget


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
    for seen in _beat_gauges.get((worker, metrics_port), ()):
        seen(now / 1e9)
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


class StoreWatch:
    """A full store, said once per episode: one log line and a ``HALTED`` status naming the
    stream and the server's reason when the store first refuses, and when it accepts again
    the status that was in force before (the risk engine's own, say), else ``RUNNING``.

    ``SYSTEM`` has no byte limit, so the status is stored while event streams refuse."""

    def __init__(
        self,
        bus: Bus,
        worker: str,
        instance: str,
        observe: Callable[[str, str], None] | None = None,
    ) -> None:
        self._bus = bus
        self._worker = worker
        self._instance = instance
        self._observe = observe
        self.refused: StoreFull | None = None
        self._before: SystemStatus | None = None

    async def resume(self) -> None:
        """At start: a full store an earlier run reported (its status the latest) is
        cleared by this run's first stored write, like one of its own."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STATUS_WAIT_S):
                last = await self._bus.last_event("SYSTEM", f"sys.status.{self._worker}")
            event = last.event if last is not None else None
            if isinstance(event, SystemStatus) and event.rule == STORE_FULL:
                self.refused = StoreFull("", "reported by an earlier run")

    async def full(self, refused: StoreFull) -> None:
        if self.refused is not None:
            return
        self.refused = refused
        log.warning(
            "%s: store full, %s refuses: %s; inputs stay unacknowledged (nothing is lost), "
            "retrying with backoff",
            self._worker,
            refused.stream,
            refused.reason,
        )
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STATUS_WAIT_S):
                last = await self._bus.last_event("SYSTEM", f"sys.status.{self._worker}")
            if last is not None and isinstance(last.event, SystemStatus):
                self._before = last.event if last.event.rule != STORE_FULL else None
        reason = f"store full: {refused.stream} refuses writes ({refused.reason})"
        await self._publish("HALTED", reason, STORE_FULL)

    async def cleared(self) -> None:
        if self.refused is None:
            return
        log.warning("%s: the store accepts writes again; carrying on", self._worker)
        self.refused = None
        before, self._before = self._before, None
        if before is not None:
            await self._publish(before.status, before.reason, before.rule)
        else:
            await self._publish("RUNNING", "the store accepts writes again", "")

    async def _publish(self, status: SystemState, reason: str, rule: str) -> None:
        """Bounded and best effort: the status must not hold up the retry it reports."""
        now = time.time_ns()
        event = SystemStatus(ts=now, status=status, reason=reason, source=self._worker, rule=rule)
        env = Envelope.root(content_id("status", self._worker, self._instance, now, rule), now)
        if self._observe is not None:
            self._observe(self._worker, status)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STATUS_WAIT_S):
                await self._bus.publish(event, env, self._worker)
