"""Bus replay: a stored run re-run by the real worker processes over JetStream.

The driver gives the replay its own namespace: one stream ``REPLAY_<ns>`` holding
``rp.<ns>.>``, so nothing mixes with live subjects even on a shared server. It starts the
fleet's workers as processes with ``--namespace``; each reads all its inputs through one
consumer on that stream, so it sees events in the order they were stored, and an effect is
always stored after its cause. The driver then publishes the run's market events in replay
order, one at a time, waiting after each until every worker has acknowledged everything
(lockstep). That makes every worker's processing order the one the in-process engine uses:
a bar, then everything it caused, before the next bar. Finally it reads the outputs back,
groups them by the ``Keel-Producer`` header and hashes them exactly like the in-process
recorder, so the two result hashes are comparable.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec
from nats.aio.msg import Msg

from contracts.envelope import bar_envelope
from contracts.events import Heartbeat
from contracts.subjects import subject_matches
from eventstore.bus import Bus, Stored
from eventstore.errors import KeelError
from eventstore.streams import REPLAY_PREFIX, replay_stream
from replay.backtest import BacktestResult, RunRecord, summarise
from replay.market import market_events
from replay.recorder import RunRecorder
from services.fleet import Fleet, fleet_plan, fleet_roles
from services.runtime.worker import durable_name

STEP_TIMEOUT_S = 60.0


def bus_replay(
    record: RunRecord,
    url: str,
    work_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    spec = record.spec
    started = time.perf_counter()
    count, bars = market_events(spec.data, url, spec.start, spec.end)
    namespace = uuid.uuid4().hex[:12]
    config_path = work_dir / "config.json"
    config_path.write_bytes(msgspec.json.encode(spec.config))
    roles = fleet_roles(spec.config)
    stream = replay_stream(namespace).name
    prefix = f"{REPLAY_PREFIX}.{namespace}."
    filters = {
        durable_name(f"{namespace}-{role.name}", stream): tuple(
            prefix + subject for i in role.inputs for subject in i.subjects
        )
        for role in roles
    }
    recorder = RunRecorder([role.name for role in roles])

    async def main() -> str:
        bus = await Bus.connect(url, name="replay-driver", namespace=namespace)
        fleet = Fleet(url, work_dir / "logs")
        barrier = Barrier(bus, stream, filters, fleet)
        try:
            await barrier.start(f"{prefix}>")
            for worker in fleet_plan(spec.config, config_path):
                worker.args += ["--namespace", namespace]
                fleet.start(worker)
            await barrier.wait(60.0)
            interval = ""
            for bar in bars:
                interval = interval or bar.interval
                await bus.publish(bar, bar_envelope(bar))
                await barrier.wait(STEP_TIMEOUT_S)
                if progress:
                    progress(1)
            async for item in bus.read(f"{prefix}>", stream):
                if (
                    isinstance(item, Stored)
                    and item.producer
                    and not isinstance(item.event, Heartbeat)
                ):
                    subject = item.subject.removeprefix(prefix)
                    recorder(subject, item.event, item.envelope, item.producer)
            await bus.js.delete_stream(stream)
            return interval
        finally:
            fleet.stop()
            await bus.close()

    interval = asyncio.run(main())
    return summarise(spec, recorder, count, interval, time.perf_counter() - started)


class Barrier:
    """Waits until every worker has acknowledged everything stored for it.

    A consumer's pending count is updated asynchronously after a store, so right after a
    publish it may still read 0; the barrier relies only on facts updated synchronously:
    the stream's last sequence, the highest stored sequence each consumer's filter matches
    (tracked here from an ordered consumer over the whole namespace), and each consumer's
    ack floor. A worker acks an input only after storing its outputs, so when every
    consumer's ack floor covers its last match and the stream has not grown, the cascade
    is complete.
    """

    def __init__(
        self, bus: Bus, stream: str, filters: dict[str, tuple[str, ...]], fleet: Fleet
    ) -> None:
        self._bus, self._stream, self._filters, self._fleet = bus, stream, filters, fleet
        self._due = dict.fromkeys(filters, 0)
        self._seen = 0
        self._moved = asyncio.Event()

    async def start(self, subjects: str) -> None:
        await self._bus.js.subscribe(
            subjects, stream=self._stream, ordered_consumer=True, cb=self._track
        )

    async def _track(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        for consumer, patterns in self._filters.items():
            if any(subject_matches(p, msg.subject) for p in patterns):
                self._due[consumer] = seq
        self._seen = seq
        self._moved.set()

    async def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        js = self._bus.js
        while time.monotonic() < deadline:
            last = (await js.stream_info(self._stream)).state.last_seq
            while self._seen < last and time.monotonic() < deadline:
                self._moved.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._moved.wait(), 0.5)
            floors = {
                info.name: (
                    info.ack_floor.stream_seq if info.ack_floor else 0,
                    info.num_ack_pending,
                )
                for info in await js.consumers_info(self._stream)
            }
            settled = all(
                name in floors and floors[name][0] >= due and not floors[name][1]
                for name, due in self._due.items()
            )
            if settled and (await js.stream_info(self._stream)).state.last_seq == last:
                return
            await asyncio.sleep(0.0005)
        for worker in self._fleet.failed():
            raise KeelError(f"worker {worker.name} exited: {self._fleet.log_tail(worker)}")
        raise KeelError(f"bus replay: the workers did not settle within {timeout:.0f}s")
