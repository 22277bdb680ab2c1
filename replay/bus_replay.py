"""Bus replay: a stored run re-run by the real worker processes over JetStream.

The driver gives the replay its own namespace: one stream ``REPLAY_<ns>`` holding
``rp.<ns>.>``, so nothing mixes with live subjects even on a shared server. It starts the
fleet's workers as processes with ``--namespace``, then streams the run's market events as
frames (``eventstore/frames.py``) as fast as the workers take them. Each market frame
carries the replay plan (``replay/plan.py``): which cascade events every worker handles
after which market event. Following it, every worker processes exactly the sequence the
in-process engine gives its role, with no barrier between bars. Meanwhile the driver reads
the workers' output frames and hashes them exactly like the in-process recorder, so the two
result hashes are comparable, and it knows how many outputs each worker owes (the plan
counts them), which gives an exact progress bar and the end of the replay.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.codec import decode, encode
from contracts.envelope import Envelope, root_envelope
from contracts.events import Bar, Event
from contracts.subjects import subject_for
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.frames import (
    FRAME_EVENTS,
    MARKET_KIND,
    OUTPUT_KINDS,
    Frame,
    FramedEvent,
    decode_frame,
    encode_frame,
    frame_prefix,
    frame_subject,
)
from eventstore.streams import replay_stream
from replay.backtest import BacktestResult, RunRecord, recorded_session, summarise
from replay.external import external_count, with_events
from replay.market import market_events
from replay.plan import ReplayPlanner
from replay.recorder import RunRecorder
from services.fleet import Fleet, fleet_plan, fleet_roles

STALL_S = 60.0
"""No output for this long while outputs are still owed: the replay has stalled."""
START_S = 60.0
"""Worker processes get this long to start before the first output is due."""
EXIT_S = 10.0
"""How long finished workers get to exit before they are stopped."""
T = TypeVar("T")


def bus_replay(
    record: RunRecord,
    url: str,
    work_dir: Path,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    spec = record.spec
    started = time.perf_counter()
    roles = fleet_roles(spec.config)
    session = recorded_session(spec, url, roles)  # recorded venue answers ride along too
    if session is None:
        market = market_events(spec.data, url, spec.start, spec.end)
        bars = with_events(market, spec.events, spec.start, spec.end)  # external events too
        inputs: Iterable[tuple[Event, Envelope | None]] = ((bar, None) for bar in bars)
    else:
        inputs = ((r.event, None if r.stream == "MARKET" else r.envelope) for r in session.merged())
    namespace = uuid.uuid4().hex[:12]
    config_path = work_dir / "config.json"
    config_path.write_bytes(msgspec.json.encode(spec.config))
    planner = ReplayPlanner(roles)
    recorder = RunRecorder([role.name for role in roles])

    async def main() -> tuple[str, int]:
        bus = await Bus.connect(url, name="replay-driver", namespace=namespace)
        fleet = Fleet(url, work_dir / "logs")
        reader = OutputReader(bus, namespace, recorder)
        try:
            await reader.start()
            names = {role.name for role in roles}  # no venue gateway: its answers are inputs
            for worker in fleet_plan(spec.config, config_path):
                if worker.name in names:
                    worker.args += ["--namespace", namespace]
                    fleet.start(worker)
            watch = Progress(reader, fleet, progress)
            sends: list[asyncio.Future] = []
            interval, count = "", 0
            for pairs, last in _chunks(inputs, FRAME_EVENTS):
                chunk = [event for event, _ in pairs]
                roots = [root for _, root in pairs]
                count += len(chunk)
                interval = interval or next((b.interval for b in chunk if isinstance(b, Bar)), "")
                frame = Frame(
                    [
                        FramedEvent(
                            subject_for(b),
                            root_envelope(b) if root is None else root,
                            "",
                            encode(b),
                        )
                        for b, root in pairs
                    ],
                    planner.plan_frame(chunk, roots),
                    last,
                )
                subject = frame_subject(namespace, MARKET_KIND, "driver")
                sends.append(await bus.send(subject, encode_frame(frame), {}))
                watch.owe(len(chunk), planner.outputs)
                await watch.check()
            await asyncio.gather(*sends)
            await watch.finish()
            await _exited(fleet, EXIT_S)
            await bus.js.delete_stream(replay_stream(namespace).name)
            return interval, count
        finally:
            await reader.stop()
            fleet.stop()
            await bus.close()

    interval, count = asyncio.run(main())
    recorder.close()
    wall = time.perf_counter() - started
    if session is not None:
        result = summarise(spec, recorder, session.bars, session.interval, wall)
        return msgspec.structs.replace(result, venue=session.describe())
    external = external_count(bars)
    return summarise(spec, recorder, count - external - market.others, interval, wall, external)


async def _exited(fleet: Fleet, timeout: float) -> None:
    """Workers end on their own after the last frame; a signal would only slow that down."""
    deadline = time.monotonic() + timeout
    while fleet.running() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


def _chunks(bars: Iterable[T], size: int) -> Iterator[tuple[list[T], bool]]:
    """Frames of market events, each with whether it is the last (an empty run still sends
    one last, empty frame so the workers finish)."""
    it = iter(bars)
    current = list(itertools.islice(it, size))
    while True:
        following = list(itertools.islice(it, size))
        yield current, not following
        if not following:
            return
        current = following


class OutputReader:
    """Reads every output frame of the namespace into the recorder, counting per producer."""

    def __init__(self, bus: Bus, namespace: str, recorder: RunRecorder) -> None:
        self._bus = bus
        self._namespace = namespace
        self._recorder = recorder
        self.counts = Counter[str]()
        self.moved = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        prefix = frame_prefix(self._namespace)
        config = ConsumerConfig(
            durable_name=f"{self._namespace}-driver",
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=[f"{prefix}{kind}.*" for kind in OUTPUT_KINDS],
        )
        sub = await self._bus.js.pull_subscribe(
            "",
            durable=config.durable_name,
            stream=replay_stream(self._namespace).name,
            config=config,
        )
        self._task = asyncio.create_task(self._read(sub))

    async def _read(self, sub) -> None:
        record, counts = self._recorder.record, self.counts
        while True:
            try:
                msgs = await sub.fetch(64, timeout=1.0)
            except TimeoutError:
                continue
            for msg in msgs:
                for item in decode_frame(msg.data).events:
                    record(item.subject, decode(item.data), item.envelope, item.producer)
                    counts[item.producer] += 1
            self.moved.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Progress:
    """What the workers owe after each frame, against what the reader has seen: frames whose
    outputs are all in count as done; no output for ``STALL_S`` while some are owed, or a
    worker that exited, fails the replay with the reason."""

    def __init__(
        self, reader: OutputReader, fleet: Fleet, report: Callable[[int], None] | None
    ) -> None:
        self._reader = reader
        self._fleet = fleet
        self._report = report
        self._owed: list[tuple[int, dict[str, int]]] = []
        self._done = 0
        self._last_move = time.monotonic() + START_S

    def owe(self, bars: int, outputs: Counter[str]) -> None:
        self._owed.append((bars, dict(outputs)))

    def _advance(self) -> bool:
        counts = self._reader.counts
        moved = False
        while self._done < len(self._owed):
            bars, owed = self._owed[self._done]
            if any(counts[producer] < n for producer, n in owed.items()):
                break
            self._done += 1
            moved = True
            if self._report is not None:
                self._report(bars)
        return moved

    async def check(self) -> None:
        if self._reader.moved.is_set():
            self._reader.moved.clear()
            self._last_move = max(self._last_move, time.monotonic())
        self._advance()
        self._fail_if_broken()

    async def finish(self) -> None:
        while self._done < len(self._owed):
            self._reader.moved.clear()
            try:
                async with asyncio.timeout(1.0):
                    await self._reader.moved.wait()
                self._last_move = max(self._last_move, time.monotonic())
            except TimeoutError:
                pass
            self._advance()
            self._fail_if_broken()
        total = self._owed[-1][1] if self._owed else {}
        extra = {p: n - total.get(p, 0) for p, n in self._reader.counts.items()}
        if any(n > 0 for n in extra.values()):
            raise KeelError(f"bus replay: workers sent more outputs than the run has: {extra}")

    def _fail_if_broken(self) -> None:
        for worker in self._fleet.failed():
            raise KeelError(f"worker {worker.name} exited: {self._fleet.log_tail(worker)}")
        if time.monotonic() - self._last_move > STALL_S:
            owed = self._owed[self._done][1]
            short = {p: n - self._reader.counts[p] for p, n in owed.items()}
            raise KeelError(
                f"bus replay stalled: no output for {STALL_S:.0f} s; still owed {short} "
                "(a worker decided differently from the run, or is stuck: see its log in "
                f"{self._fleet.log_dir})"
            )
