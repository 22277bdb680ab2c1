"""The live worker loop: consume, decide, publish, snapshot, then acknowledge.

Exactly-once effects across restarts rest on three things:
- outputs carry ids derived from their input, so a re-publish after a crash is dropped by
  JetStream's ``Nats-Msg-Id`` de-duplication;
- after each batch the worker stores its state together with the last stream sequence it
  applied per input (KV bucket ``keel_snapshots``) before acknowledging, and skips anything at
  or below that sequence when it is redelivered;
- each durable consumer allows at most one batch of unacknowledged messages, so redeliveries
  after a crash arrive before anything newer and the per-stream sequence check is sound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from contracts.codec import DecodeError, decode
from contracts.envelope import Envelope, content_id
from contracts.events import DeadLetter, Event, Heartbeat
from contracts.subjects import name_token
from eventstore.bus import Bus
from eventstore.errors import KeelError
from services.runtime.role import Input, Role
from services.runtime.telemetry import WorkerMetrics, start_metrics

log = logging.getLogger("keel.worker")

SNAPSHOT_BUCKET = "keel_snapshots"
BATCH = 256
FAULT_ENV = "KEEL_FAULT_EXIT_BEFORE_ACK"


class Snapshot(msgspec.Struct):
    seqs: dict[str, int]
    state: bytes
    processed: int = 0


class WorkerOptions(msgspec.Struct, frozen=True):
    ack_wait_s: float = 5.0
    heartbeat_s: float = 2.0
    metrics_port: int | None = 0
    metrics_addr: str = "127.0.0.1"
    batch: int = BATCH
    namespace: str = ""
    """Set inside a bus replay: the replay runtime (``replay_worker.py``) serves the role."""


def durable_name(worker: str, stream: str) -> str:
    return f"{worker}-{stream.lower()}"


async def snapshot_bucket(bus: Bus) -> KeyValue:
    try:
        return await bus.js.key_value(SNAPSHOT_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await bus.js.create_key_value(
            KeyValueConfig(bucket=SNAPSHOT_BUCKET, history=1, storage=StorageType.FILE)
        )


class Worker:
    def __init__(self, role: Role, options: WorkerOptions | None = None) -> None:
        self.name = name_token(role.name, "worker")
        self.decider = role.decider
        self.options = options or WorkerOptions()
        self.inputs = role.inputs
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.processed = 0
        self._seqs: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, Msg] | None] = asyncio.Queue()
        self._metrics: WorkerMetrics | None = None
        self._batches_left = int(os.environ.get(FAULT_ENV, "0"))

    async def run(self, bus: Bus) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        if self.options.metrics_port is not None:
            self._metrics = start_metrics(
                self.name, self.options.metrics_port, self.options.metrics_addr
            )
        kv = await snapshot_bucket(bus)
        await self._restore(kv)
        subs = [await self._subscribe(bus, spec) for spec in self.inputs]
        tasks = [
            asyncio.create_task(self._fetch(sub, spec.stream))
            for sub, spec in zip(subs, self.inputs, strict=True)
        ]
        tasks.append(asyncio.create_task(self._heartbeat(bus)))
        try:
            await self._process(bus, kv)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._beat(bus, "stopped")

    def stop(self) -> None:
        self._stop.set()
        self._queue.put_nowait(None)  # wakes the processor waiting for input

    async def _restore(self, kv: KeyValue) -> None:
        try:
            entry = await kv.get(self.name)
        except KeyNotFoundError:
            return
        if not entry.value:
            return
        try:
            snap = msgspec.msgpack.decode(entry.value, type=Snapshot)
            self.decider.restore(snap.state)
        except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
            raise KeelError(
                f"{self.name}: its snapshot in KV bucket {SNAPSHOT_BUCKET} does not fit this "
                f"version ({exc}); keep the old version running or reset the worker"
            ) from exc
        self._seqs = dict(snap.seqs)
        self.processed = snap.processed

    async def _subscribe(self, bus: Bus, spec: Input):
        config = ConsumerConfig(
            durable_name=durable_name(self.name, spec.stream),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait_s,
            max_ack_pending=self.options.batch,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=list(spec.subjects),
        )
        return await bus.js.pull_subscribe(
            "", durable=config.durable_name, stream=spec.stream, config=config
        )

    async def _fetch(self, sub, stream: str) -> None:
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(self.options.batch, timeout=1.0)
            except TimeoutError:
                continue
            except Exception as exc:  # connection trouble: back off, keep the worker up
                log.warning("%s: fetch from %s failed: %s", self.name, stream, exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                self._queue.put_nowait((stream, msg))

    async def _next_batch(self) -> list[tuple[str, Msg]]:
        """Whatever is queued, up to a batch; empty once stopping (``None`` is the wake-up)."""
        first = await self._queue.get()
        batch = [first] if first is not None else []
        while len(batch) < self.options.batch and not self._queue.empty():
            item = self._queue.get_nowait()
            if item is not None:
                batch.append(item)
        return [] if self._stop.is_set() else batch

    async def _process(self, bus: Bus, kv: KeyValue) -> None:
        """Decide and publish each batch, then commit it (snapshot, then acks) in the
        background while the next batch is decided. A batch's acks always follow its own
        snapshot; after a crash mid-commit both batches come back, are decided again from
        the older snapshot, and their re-published outputs are dropped as duplicates."""
        commit: asyncio.Task | None = None
        try:
            while not self._stop.is_set():
                batch = await self._next_batch()
                if batch:
                    commit = await self._decide_batch(bus, kv, batch, commit)
        finally:
            if commit is not None:
                await commit

    async def _decide_batch(
        self,
        bus: Bus,
        kv: KeyValue,
        batch: list[tuple[str, Msg]],
        previous: asyncio.Task | None,
    ) -> asyncio.Task:
        futures = []
        for stream, msg in batch:
            seq = msg.metadata.sequence.stream
            if seq <= self._seqs.get(stream, 0):
                continue
            for event, envelope in self._apply(stream, msg):
                futures.append(await bus.submit(event, envelope, self.name))
            self._seqs[stream] = seq
            self.processed += 1
        await asyncio.gather(*futures)
        if self._metrics and futures:
            self._metrics.events_out.add(len(futures), {"worker": self.name})
        self._maybe_crash(len(futures))
        snap = Snapshot(dict(self._seqs), self.decider.snapshot(), self.processed)
        return asyncio.create_task(self._commit(kv, msgspec.msgpack.encode(snap), batch, previous))

    async def _commit(
        self,
        kv: KeyValue,
        snapshot: bytes,
        batch: list[tuple[str, Msg]],
        previous: asyncio.Task | None,
    ) -> None:
        if previous is not None:
            await previous
        await kv.put(self.name, snapshot)
        for _, msg in batch:
            await msg.ack()

    def _apply(self, stream: str, msg: Msg) -> list[tuple[Event, Envelope]]:
        """Decode and decide one message; anything unusable becomes a dead letter."""
        seq = msg.metadata.sequence.stream
        started = time.perf_counter()
        try:
            envelope = Envelope.from_headers(msg.headers)
            event = decode(msg.data)
        except (DecodeError, ValueError) as exc:
            return [self._dead_letter(stream, seq, msg, f"undecodable: {exc}")]
        try:
            outputs = self.decider.decide(event, envelope.event_time or event.ts)
        except Exception as exc:
            log.exception("%s: handler failed on %s #%d", self.name, stream, seq)
            return [
                self._dead_letter(stream, seq, msg, f"handler error: {type(exc).__name__}: {exc}")
            ]
        if self._metrics:
            attrs = {"worker": self.name, "stream": stream}
            self._metrics.events_in.add(1, attrs)
            self._metrics.handler_seconds.record(time.perf_counter() - started, attrs)
        return [(out, envelope.child(self.name, i, out.ts)) for i, out in enumerate(outputs)]

    def _dead_letter(self, stream: str, seq: int, msg: Msg, reason: str) -> tuple[Event, Envelope]:
        if self._metrics:
            self._metrics.dead_letters.add(1, {"worker": self.name, "stream": stream})
        log.warning("%s: dead letter %s #%d: %s", self.name, stream, seq, reason)
        now = time.time_ns()
        letter = DeadLetter(
            ts=now,
            worker=self.name,
            subject=msg.subject,
            reason=reason,
            payload=bytes(msg.data[:65_536]),
            stream=stream,
            stream_seq=seq,
        )
        return letter, Envelope.root(content_id("dlq", self.name, stream, seq), now)

    def _maybe_crash(self, published: int) -> None:
        """Fault injection for crash tests: exit after the Nth batch that published outputs,
        before its snapshot and acks (``KEEL_FAULT_EXIT_BEFORE_ACK=N``)."""
        if published and self._batches_left > 0:
            self._batches_left -= 1
            if self._batches_left == 0:
                os._exit(137)

    async def _beat(self, bus: Bus, status: str, seq: int = 0) -> None:
        now = time.time_ns()
        beat = Heartbeat(
            ts=now,
            worker=self.name,
            instance=self.instance,
            seq=seq,
            processed=self.processed,
            status=status,
            metrics_port=self._metrics.port if self._metrics else 0,
        )
        env = Envelope.root(content_id("hb", self.name, self.instance, seq, status), now)
        with contextlib.suppress(Exception):
            await bus.publish(beat, env, self.name)

    async def _heartbeat(self, bus: Bus) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            await self._beat(bus, "running", seq)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.options.heartbeat_s)
