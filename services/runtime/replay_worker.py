"""A worker inside a bus replay: the live decider, its inputs merged by the replay plan.

Market frames arrive in order through one pull consumer (a few frames buffered, so memory
stays flat however long the replay). Cascade frames from the other workers are pushed to it
and wait in a table by event id until the plan asks for them. After each
market event the worker handles the cascade events its plan names for that event, in
order, so it processes exactly the sequence the in-process engine gives its role.

Outputs are framed per kind and sent when a frame is full, right after the worker handled
cascade events (someone may be waiting for the answer) and, crucially, whenever it is about
to wait: every event a worker waits for is caused by an event that was already
sent, so the replay can never deadlock. A replay is not resumable: a worker that dies fails
it (the driver reports it), and a new replay starts in a fresh namespace, so there are no
acknowledgements or snapshots here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.admission import admission_error
from contracts.codec import DecodeError, decode, encode
from contracts.events import Event
from contracts.subjects import subject_for, subject_matches
from contracts.system_events import DeadLetter
from eventstore.bus import Bus
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
    kind_of,
)
from eventstore.streams import replay_stream
from services.runtime.decider import handler_dead_letter
from services.runtime.role import Role

log = logging.getLogger("keel.replay")

MARKET_BUFFER = 4
"""Market frames fetched ahead of processing."""
WAIT_REPORT_S = 30.0
"""How long a worker waits for a planned event before it says which one (and keeps waiting)."""


class Waits(msgspec.Struct):
    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds

    def __str__(self) -> str:
        return f"{self.count} waits, {self.seconds:.2f} s"


class WaitTally(msgspec.Struct):
    """Where a replay worker waited: for market frames (the driver) or planned cascade
    events (other workers); logged when it ends, to show which hop limits a replay."""

    market: Waits = msgspec.field(default_factory=Waits)
    cascade: Waits = msgspec.field(default_factory=Waits)

    def __str__(self) -> str:
        return f"waited for market frames: {self.market}; for cascade events: {self.cascade}"


class ReplayWorker:
    def __init__(self, role: Role, namespace: str) -> None:
        self.name = role.name
        self.decider = role.decider
        self.namespace = namespace
        self.patterns = tuple(p for i in role.inputs for p in i.subjects)
        self._wanted: dict[str, bool] = {}
        self._arrived: dict[str, FramedEvent] = {}
        self._arrival = asyncio.Event()
        # Runs of outputs of one kind, in the order decided: frames go out in that order, so
        # the driver records each producer's outputs as the in-process engine does.
        self._outbox: list[tuple[str, list[FramedEvent]]] = []
        self._sent: list[asyncio.Future] = []
        self._bus: Bus | None = None
        self.waits = WaitTally()

    def wants(self, subject: str) -> bool:
        wanted = self._wanted.get(subject)
        if wanted is None:
            wanted = self._wanted[subject] = any(subject_matches(p, subject) for p in self.patterns)
        return wanted

    async def run(self, bus: Bus) -> None:
        self._bus = bus
        stream = replay_stream(self.namespace).name
        prefix = frame_prefix(self.namespace)
        kinds = sorted({kind_of(p) for p in self.patterns} & set(OUTPUT_KINDS))
        market = await self._consumer(bus, stream, "md", [f"{prefix}{MARKET_KIND}.*"])
        frames: asyncio.Queue[Frame] = asyncio.Queue(maxsize=MARKET_BUFFER)
        tasks = [asyncio.create_task(self._fetch_market(market, frames))]
        # Cascade frames are few and latency-critical: pushed (one ordered consumer per
        # kind; their relative order does not matter, the plan orders them).
        pushed = [
            await bus.js.subscribe(
                f"{prefix}{kind}.*", stream=stream, ordered_consumer=True, cb=self._on_cascade
            )
            for kind in kinds
        ]
        try:
            await self._process(frames)
            await self._flush()
            await asyncio.gather(*self._sent)
            log.info("%s: done in %.2f s CPU; %s", self.name, time.process_time(), self.waits)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sub in pushed:
                await sub.unsubscribe()

    async def _consumer(self, bus: Bus, stream: str, part: str, subjects: list[str]):
        config = ConsumerConfig(
            durable_name=f"{self.namespace}-{self.name}-{part}",
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=subjects,
        )
        return await bus.js.pull_subscribe(
            "", durable=config.durable_name, stream=stream, config=config
        )

    async def _fetch_market(self, sub, frames: asyncio.Queue[Frame]) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                for msg in await sub.fetch(1, timeout=5.0):
                    await frames.put(decode_frame(msg.data))

    async def _on_cascade(self, msg: Msg) -> None:
        for item in decode_frame(msg.data).events:
            if self.wants(item.subject):
                self._arrived[item.envelope.event_id] = item
        self._arrival.set()

    async def _process(self, frames: asyncio.Queue[Frame]) -> None:
        while True:
            if frames.empty():
                await self._flush()
                waited = time.perf_counter()
                frame = await frames.get()
                self.waits.market.add(time.perf_counter() - waited)
            else:
                frame = frames.get_nowait()
            steps = {step.after: step.ids for step in frame.plan.get(self.name, ())}
            for index, item in enumerate(frame.events):
                if self.wants(item.subject) and self._apply(item):
                    await self._flush()
                ids = steps.get(index)
                if ids:
                    for event_id in ids:
                        self._apply(await self._planned(event_id))
                    # Another worker's event led here, so one may be waiting for the
                    # answer: send it now rather than when this worker next waits.
                    await self._flush()
            if frame.last:
                return

    async def _planned(self, event_id: str) -> FramedEvent:
        item = self._arrived.pop(event_id, None)
        if item is not None:
            return item
        await self._flush()
        waited = time.monotonic()
        started = time.perf_counter()
        while (item := self._arrived.pop(event_id, None)) is None:
            self._arrival.clear()
            try:
                async with asyncio.timeout(WAIT_REPORT_S):
                    await self._arrival.wait()
            except TimeoutError:
                log.warning(
                    "%s: still waiting for planned event %s after %.0f s",
                    self.name,
                    event_id,
                    time.monotonic() - waited,
                )
        self.waits.cascade.add(time.perf_counter() - started)
        return item

    def _apply(self, item: FramedEvent) -> bool:
        """Decide one event into the outbox; True when a frame is full. A failing handler
        gives the dead letter the in-process engine gives; an event its subject does not
        admit, or outputs that cannot be published, give a dead letter as in a live worker."""
        try:
            event = decode(item.data)
        except (DecodeError, ValueError) as exc:
            log.warning("%s: undecodable event on %s: %s", self.name, item.subject, exc)
            outputs: Sequence[Event] = [self._dead_letter(item, f"undecodable: {exc}")]
        else:
            refused = admission_error(item.subject, event)
            if refused is not None:
                log.warning("%s: %s", self.name, refused)
                outputs = [self._dead_letter(item, refused)]
            else:
                try:
                    outputs = self.decider.decide(event, item.envelope.event_time or event.ts)
                except Exception as exc:
                    log.exception("%s: handler failed on %s", self.name, item.subject)
                    outputs = [handler_dead_letter(self.name, event, item.subject, exc)]
        parent = item.envelope
        try:
            framed = [
                FramedEvent(
                    subject_for(output),
                    parent.child(self.name, index, output.ts),
                    self.name,
                    encode(output),
                )
                for index, output in enumerate(outputs)
            ]
        except Exception as exc:
            log.exception("%s: cannot publish the outputs of %s", self.name, item.subject)
            letter = self._dead_letter(item, f"output error: {type(exc).__name__}: {exc}")
            framed = [
                FramedEvent(
                    subject_for(letter),
                    parent.child(self.name, 0, letter.ts),
                    self.name,
                    encode(letter),
                )
            ]
        full = False
        for out in framed:
            kind = kind_of(out.subject)
            if not self._outbox or self._outbox[-1][0] != kind:
                self._outbox.append((kind, []))
            box = self._outbox[-1][1]
            box.append(out)
            full = full or len(box) >= FRAME_EVENTS
        return full

    def _dead_letter(self, item: FramedEvent, reason: str) -> DeadLetter:
        return DeadLetter(
            ts=item.envelope.event_time,
            worker=self.name,
            subject=item.subject,
            reason=reason,
            payload=item.data[:65_536],
        )

    async def _flush(self) -> None:
        """Send every pending frame, in order; keep the number of unconfirmed sends bounded."""
        assert self._bus is not None
        for kind, box in self._outbox:
            frame = encode_frame(Frame(box))
            subject = frame_subject(self.namespace, kind, self.name)
            self._sent.append(await self._bus.send(subject, frame, {}))
        self._outbox.clear()
        if len(self._sent) > 256:
            await asyncio.gather(*self._sent)
            self._sent.clear()
