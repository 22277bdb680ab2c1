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
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import msgspec

from contracts.envelope import bar_envelope
from contracts.events import Heartbeat
from eventstore.barrier import Barrier
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
    bars = market_events(spec.data, url, spec.start, spec.end)
    namespace = uuid.uuid4().hex[:12]
    config_path = work_dir / "config.json"
    config_path.write_bytes(msgspec.json.encode(spec.config))
    roles = fleet_roles(spec.config)
    stream = replay_stream(namespace).name
    prefix = f"{REPLAY_PREFIX}.{namespace}."
    filters = {
        (stream, durable_name(f"{namespace}-{role.name}", stream)): tuple(
            prefix + subject for i in role.inputs for subject in i.subjects
        )
        for role in roles
    }
    recorder = RunRecorder([role.name for role in roles])

    async def main() -> tuple[str, int]:
        bus = await Bus.connect(url, name="replay-driver", namespace=namespace)
        fleet = Fleet(url, work_dir / "logs")
        barrier = Barrier(bus, (stream,), filters)
        try:
            await barrier.start()
            for worker in fleet_plan(spec.config, config_path):
                worker.args += ["--namespace", namespace]
                fleet.start(worker)
            await _settle(barrier, fleet, 60.0)
            interval, count = "", 0
            for bar in bars:
                count += 1
                interval = interval or bar.interval
                await bus.publish(bar, bar_envelope(bar))
                await _settle(barrier, fleet, STEP_TIMEOUT_S)
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
            await barrier.stop()
            await bus.js.delete_stream(stream)
            return interval, count
        finally:
            fleet.stop()
            await bus.close()

    interval, count = asyncio.run(main())
    recorder.close()
    return summarise(spec, recorder, count, interval, time.perf_counter() - started)


async def _settle(barrier: Barrier, fleet: Fleet, timeout: float) -> None:
    if await barrier.wait(timeout):
        return
    for worker in fleet.failed():
        raise KeelError(f"worker {worker.name} exited: {fleet.log_tail(worker)}")
    raise KeelError(f"bus replay: the workers did not settle within {timeout:.0f}s")
