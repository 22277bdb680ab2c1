"""The live worker loop: consume, decide, publish, snapshot, then acknowledge.

Exactly-once effects across restarts rest on three things:
- outputs carry ids derived from their input, so a re-publish after a crash is dropped by
  JetStream's ``Nats-Msg-Id`` de-duplication;
- after each batch the worker stores its state together with the last stream sequence it
  applied per input (``snapshots.py``) before acknowledging, and skips anything at or below
  that sequence when it is redelivered;
- each durable consumer allows at most one batch of unacknowledged messages, so redeliveries
  after a crash arrive before anything newer and the per-stream sequence check is sound.

With ``WorkerOptions.rebuild`` the worker ignores its snapshot and folds its inputs from the
log up to what its consumers acknowledged (``rebuild.py``) before it consumes anything live.

Telemetry rides along without touching that logic: metrics (``telemetry.py``) count what is
handled and what the log acknowledged, spans (``tracing.py``) follow the ``traceparent``
header, and the ``Keel-Origin-Time`` header carries the time the root cause entered the log
so every hop can report its latency from the bar.

Every step between receiving a message and acknowledging it (the envelope, decoding, the
subject's admission of the event (``contracts/admission.py``), the decision, each output's
subject, id, headers and bytes) turns a failure into a dead letter with the reason, and the
worker carries on: one bad message never halts a worker, on this run or any restart.

The log being away does not stop it either. Fetches, publishes, the snapshot and the acks
ride out a server restart (``eventstore/retry.py``: capped exponential backoff, one log line
per outage): a batch is committed only after every output of it is stored, retried in order
under the same ids (JetStream drops the copies of any that were stored), and an
unacknowledged input is delivered again. A publish the store refuses for room leaves the
batch uncommitted, says so once (``StoreWatch``: a status on ``sys.status.<worker>``) and is
retried until it is stored. A stop during a retry leaves the batch unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable

import msgspec
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.errors import APIError
from nats.js.kv import KeyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, Status, StatusCode

from contracts.admission import admission_error
from contracts.codec import DecodeError, decode, encode
from contracts.envelope import ORIGIN_TIME, PRODUCER, Envelope, content_id
from contracts.events import Event
from contracts.subjects import name_token, subject_for
from contracts.system_events import DeadLetter, SystemStatus
from eventstore.bus import ACK_TIMEOUT, Bus
from eventstore.retry import (
    Interrupted,
    StoreFull,
    backoff,
    store_refusal,
    transient,
    wait_out,
)
from services.runtime.heartbeat import StoreWatch, publish_heartbeat
from services.runtime.merge import InputMerge, consumer_state, stored_ns
from services.runtime.rebuild import rebuild_state
from services.runtime.role import Input, Role, durable_name
from services.runtime.snapshots import (
    SNAPSHOT_BUCKET,
    encode_snapshot,
    restore_snapshot,
    snapshot_bucket,
)
from services.runtime.telemetry import WorkerMetrics, start_metrics
from services.runtime.tracing import Tracing, tracer_provider_from_env

log = logging.getLogger("keel.worker")

BATCH = 256
MERGE_POLL_S = 0.005  # how often a merge waiting for a lagging input asks again
RETRY_PUBLISH_S = 2.0  # how long a re-sent output waits for its ack before it is sent again

BeforeCommit = Callable[[int], None]
"""Called with the number of outputs a batch published, after the log acknowledged them and
before the batch's snapshot and acks: the one point where a crash tests exactly-once."""


class WorkerOptions(msgspec.Struct, frozen=True):
    ack_wait_s: float = 5.0
    heartbeat_s: float = 2.0
    metrics_port: int | None = 0
    metrics_addr: str = "127.0.0.1"
    batch: int = BATCH
    namespace: str = ""
    """Set inside a bus replay: the replay runtime (``replay_worker.py``) serves the role."""
    rebuild: bool = False
    """Rebuild the state from the log instead of restoring the stored snapshot."""


Output = tuple[Event, Envelope, str, bytes, dict[str, str]]
"""An output ready to publish: the event, its envelope, subject, bytes and headers, all built
while the input can still become a dead letter."""


class Handled:
    """One input's outputs, with what telemetry needs to follow them."""

    __slots__ = ("origin", "outputs", "span")

    def __init__(self, outputs: list[Output], origin: int = 0, span: Span | None = None) -> None:
        self.outputs = outputs
        self.origin = origin
        self.span = span


class Worker:
    def __init__(
        self,
        role: Role,
        options: WorkerOptions | None = None,
        tracer_provider: TracerProvider | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> None:
        """``tracer_provider``: where spans go; by default OTLP when
        ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, else no spans at all. ``before_commit``:
        a fault that crash tests inject (``tests/crash_worker.py``)."""
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
        self._tracer_provider = tracer_provider
        self._tracing: Tracing | None = None
        self._before_commit = before_commit
        self._prefix = ""
        self._watch: StoreWatch | None = None
        self._merge = InputMerge(tuple(spec.stream for spec in self.inputs))

    async def run(self, bus: Bus) -> None:
        self._prefix = bus.prefix
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        self._start_telemetry()
        observe = self._metrics.system_status if self._metrics else None
        self._watch = StoreWatch(bus, self.name, self.instance, observe)
        try:
            await self._seed_gauges(bus)
            try:
                kv, subs = await self._start(bus)
            except Interrupted:
                return
            await self._watch.resume()
            tasks = [
                asyncio.create_task(self._fetch(bus, sub, spec))
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
        finally:
            self._stop_telemetry()

    async def _start(self, bus: Bus) -> tuple[KeyValue, list]:
        """The snapshot and the consumers, through a server restart at this moment too."""
        stop = self._stop
        kv = await bus.retry(
            f"{self.name}: snapshot bucket", lambda: snapshot_bucket(bus), stop=stop
        )
        if self.options.rebuild:
            await bus.retry(f"{self.name}: rebuild", lambda: self._rebuild(bus, kv), stop=stop)
        else:
            await bus.retry(f"{self.name}: restore", lambda: self._restore(kv), stop=stop)
        subs = []
        for spec in self.inputs:
            subs.append(
                await bus.retry(
                    f"{self.name}: consumer on {spec.stream}",
                    functools.partial(self._subscribe, bus, spec),
                    stop=stop,
                )
            )
        return kv, subs

    def _start_telemetry(self) -> None:
        if self.options.metrics_port is not None:
            self._metrics = start_metrics(
                self.name,
                self.options.metrics_port,
                self.options.metrics_addr,
                [spec.stream for spec in self.inputs],
            )
        provider = self._tracer_provider
        owned = provider is None
        if provider is None:
            provider = tracer_provider_from_env(self.name)
        if provider is not None:
            self._tracing = Tracing(self.name, provider, owned)

    def _stop_telemetry(self) -> None:
        if self._tracing is not None:
            self._tracing.close()
            self._tracing = None
        if self._metrics is not None:
            self._metrics.close()

    async def _seed_gauges(self, bus: Bus) -> None:
        """A worker that consumes governance reports the kill switch from the start: the
        last kill or resume in the log decides it (as it decides the risk engine's fold)."""
        governed = any(
            i.stream == "GOVERNANCE" and any(s.startswith("gov.cmd") for s in i.subjects)
            for i in self.inputs
        )
        if self._metrics is None or not governed:
            return
        try:
            kill = await bus.last_event("GOVERNANCE", "gov.cmd.kill")
            resume = await bus.last_event("GOVERNANCE", "gov.cmd.resume")
            status = await bus.last_event("SYSTEM", f"sys.status.{self.name}")
        except Exception as exc:  # telemetry never stops a worker
            log.warning("%s: cannot read the kill switch state: %s", self.name, exc)
            return
        self._metrics.kill(kill is not None and (resume is None or kill.seq > resume.seq))
        if status is not None and isinstance(status.event, SystemStatus):
            self._metrics.system_status(status.event.source, status.event.status)

    def stop(self) -> None:
        self._stop.set()
        self._queue.put_nowait(None)  # wakes the processor waiting for input

    async def _restore(self, kv: KeyValue) -> None:
        snap = await restore_snapshot(kv, self.name, self.decider)
        if snap is not None:
            self._seqs = dict(snap.seqs)
            self.processed = snap.processed

    async def _rebuild(self, bus: Bus, kv: KeyValue) -> None:
        """Fold the log up to the acknowledged positions, then store that as the snapshot,
        so a restart without ``rebuild`` resumes from it."""
        folded = await rebuild_state(bus, self.name, self.inputs, self.decider)
        self._seqs = dict(folded.seqs)
        self.processed = folded.processed
        await kv.put(self.name, encode_snapshot(self.decider, self._seqs, self.processed))
        log.info(
            "%s: rebuilt from the log: %d inputs folded up to %s",
            self.name,
            folded.processed,
            folded.seqs or "nothing",
        )

    async def _subscribe(self, bus: Bus, spec: Input):
        config = ConsumerConfig(
            durable_name=durable_name(self.name, spec.stream),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.options.ack_wait_s,
            max_ack_pending=self.options.batch,
            deliver_policy=DeliverPolicy.ALL,
            filter_subjects=list(spec.subjects),
        )
        # Create or update: a worker whose inputs changed (an upgrade, a config toggle) must
        # not keep reading through its durable's old filter.
        config.name = config.durable_name
        await bus.js.add_consumer(spec.stream, config)
        return await bus.js.pull_subscribe(
            "", durable=config.durable_name, stream=spec.stream, config=config
        )

    async def _fetch(self, bus: Bus, sub, spec: Input) -> None:
        """Pull batches; through an outage with backoff (silent: ``Outage`` says it once).
        Anything else (the consumer gone with a lost store) subscribes again."""
        stream = spec.stream
        failures = 0
        while not self._stop.is_set():
            try:
                msgs = await sub.fetch(self.options.batch, timeout=1.0)
            except TimeoutError:  # nothing new, or the server away: the pull is re-sent
                continue
            except Exception as exc:
                failures += 1
                bus.outage.trouble(f"{self.name}: fetch from {stream}", exc)
                with contextlib.suppress(Interrupted):
                    await wait_out(backoff(failures), self._stop)
                if not transient(exc) and not self._stop.is_set():
                    with contextlib.suppress(Exception):
                        sub = await self._subscribe(bus, spec)
                continue
            failures = 0
            bus.outage.cleared()
            for msg in msgs:
                self._queue.put_nowait((stream, msg))

    async def _next_batch(self, bus: Bus) -> list[tuple[str, Msg]]:
        """Whatever is queued and no other input can precede, in stored order
        (``merge.py``). Empty once stopping (``None`` is the wake-up)."""
        merge = self._merge
        while not self._stop.is_set():
            arrived = []
            if merge.holding:  # waiting for a lagging input: look again soon
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(MERGE_POLL_S):
                        arrived.append(await self._queue.get())
            else:
                arrived.append(await self._queue.get())
            while not self._queue.empty():
                arrived.append(self._queue.get_nowait())
            merge.hold(item for item in arrived if item is not None)
            batch = merge.take(
                await merge.marks(functools.partial(consumer_state, bus.js, self.name))
            )
            if batch and not self._stop.is_set():
                return batch
        return []

    async def _process(self, bus: Bus, kv: KeyValue) -> None:
        """Decide and publish each batch, then commit it (snapshot, then acks) in the
        background while the next batch is decided. A batch's acks always follow its own
        snapshot; after a crash mid-commit both batches come back, are decided again from
        the older snapshot, and their re-published outputs are dropped as duplicates."""
        commit: asyncio.Task | None = None
        try:
            while not self._stop.is_set():
                batch = await self._next_batch(bus)
                if batch:
                    commit = await self._decide_batch(bus, kv, batch, commit)
        except Interrupted:
            pass  # stopped while a batch's outputs waited for the log: it stays unacknowledged
        finally:
            if commit is not None:
                with contextlib.suppress(Interrupted):
                    await commit

    async def _decide_batch(
        self,
        bus: Bus,
        kv: KeyValue,
        batch: list[tuple[str, Msg]],
        previous: asyncio.Task | None,
    ) -> asyncio.Task:
        sends: list[tuple[Output, Handled]] = []
        for stream, msg in batch:
            seq = msg.metadata.sequence.stream
            if seq <= self._seqs.get(stream, 0):
                continue
            handled = self._apply(stream, msg)
            sends.extend((output, handled) for output in handled.outputs)
            self._seqs[stream] = seq
            self.processed += 1
        await self._publish(bus, sends)
        if self._before_commit is not None:
            self._before_commit(len(sends))
        snap = encode_snapshot(self.decider, self._seqs, self.processed)
        return asyncio.create_task(self._commit(bus, kv, snap, batch, previous))

    async def _publish(self, bus: Bus, sends: list[tuple[Output, Handled]]) -> None:
        """Every output stored before the batch commits: all in flight at once, then any
        that failed or went unacknowledged (the server away, the store full) again in order
        under the same ids until stored; copies of ones that were stored are dropped."""
        futures: list[asyncio.Future[PubAck]] = []
        messages = [(bus.prefix + out[2], out[3], out[4]) for out, _ in sends]
        for output, handled in [] if await bus.near_limit(messages) else sends:
            try:
                futures.append(await self._submit(bus, output, handled))
            except Exception as exc:
                if not transient(exc):
                    raise
                break
        if futures:
            await asyncio.wait(futures, timeout=ACK_TIMEOUT)
        again: list[tuple[Output, Handled]] = []
        for future, send in zip(futures, sends, strict=False):
            if not future.done():
                future.cancel()
            elif not future.cancelled() and future.exception() is None:
                continue
            elif not future.cancelled():
                error = future.exception()
                assert error is not None
                if not transient(error) and store_refusal(error) is None:
                    raise error
            again.append(send)
        again += sends[len(futures) :]
        assert self._watch is not None
        for (event, _, subject, data, headers), handled in again:
            if handled.origin:
                headers[ORIGIN_TIME] = str(handled.origin)
            ack = await bus.retry(
                f"{self.name}: publish",
                functools.partial(bus.store, bus.prefix + subject, data, headers, RETRY_PUBLISH_S),
                stop=self._stop,
                on_full=self._watch.full,
            )
            if self._metrics is not None:
                latency = (time.time_ns() - handled.origin) / 1e9 if handled.origin else None
                self._metrics.published(event, subject, not ack.duplicate, latency)
        await self._watch.cleared()

    async def _commit(
        self,
        bus: Bus,
        kv: KeyValue,
        snapshot: bytes,
        batch: list[tuple[str, Msg]],
        previous: asyncio.Task | None,
    ) -> None:
        """The snapshot, then the acks, each retried through an outage; a stop in between
        leaves the rest unacknowledged, to be delivered again and skipped by sequence."""
        if previous is not None:
            await previous
        assert self._watch is not None
        await bus.retry(
            f"{self.name}: snapshot",
            functools.partial(self._put_snapshot, kv, snapshot),
            stop=self._stop,
            on_full=self._watch.full,
        )
        await self._watch.cleared()
        for _, msg in batch:
            await bus.retry(f"{self.name}: ack", msg.ack, stop=self._stop)

    async def _put_snapshot(self, kv: KeyValue, snapshot: bytes) -> None:
        try:
            await kv.put(self.name, snapshot)
        except APIError as exc:
            reason = store_refusal(exc)
            if reason is None:
                raise
            raise StoreFull(f"KV_{SNAPSHOT_BUCKET}", reason) from None

    def _apply(self, stream: str, msg: Msg) -> Handled:
        """Decode, admit and decide one message; anything unusable becomes a dead letter."""
        seq = msg.metadata.sequence.stream
        try:
            return self._handle(stream, seq, msg)
        except Exception as exc:  # a step below failed in a way not foreseen: still a letter
            log.exception("%s: failed on %s #%d", self.name, stream, seq)
            return Handled(
                [self._dead_letter(stream, seq, msg, f"worker error: {type(exc).__name__}: {exc}")]
            )

    def _handle(self, stream: str, seq: int, msg: Msg) -> Handled:
        started = time.perf_counter()
        started_ns = time.time_ns()
        try:
            envelope = Envelope.from_headers(msg.headers)
            event = decode(msg.data)
        except (DecodeError, ValueError) as exc:
            return Handled([self._dead_letter(stream, seq, msg, f"undecodable: {exc}")])
        refused = admission_error(msg.subject[len(self._prefix) :], event)
        if refused is not None:
            return Handled([self._dead_letter(stream, seq, msg, refused, "undecodable")])
        event_type = type(event).__name__
        span = (
            self._tracing.handler_span(
                msg.headers, envelope, msg.subject, stream, seq, event_type, started_ns
            )
            if self._tracing
            else None
        )
        try:
            outputs = self.decider.decide(event, envelope.event_time or event.ts)
        except Exception as exc:
            log.exception("%s: handler failed on %s #%d", self.name, stream, seq)
            reason = f"handler error: {type(exc).__name__}: {exc}"
            if span is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, reason))
                span.end()
            return Handled([self._dead_letter(stream, seq, msg, reason)])
        try:
            children = [
                self._output(out, envelope.child(self.name, i, out.ts))
                for i, out in enumerate(outputs)
            ]
        except Exception as exc:  # e.g. a name that cannot form a subject: a poison pill
            log.exception("%s: cannot publish the outputs of %s #%d", self.name, stream, seq)
            reason = f"output error: {type(exc).__name__}: {exc}"
            if span is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, reason))
                span.end()
            return Handled([self._dead_letter(stream, seq, msg, reason, "handler_error")])
        origin = self._origin(msg, envelope)
        if self._metrics:
            delay = (started_ns - stored_ns(msg)) / 1e9
            self._metrics.consumed(
                stream, msg.subject, event_type, time.perf_counter() - started, delay
            )
            self._metrics.handled(event)
        if span is not None:
            span.set_attribute("keel.outputs", len(outputs))
            span.end()
        return Handled(children, origin, span)

    def _output(self, event: Event, envelope: Envelope) -> Output:
        """Everything a publish needs, built before anything is published."""
        headers = envelope.headers()
        headers[PRODUCER] = self.name
        return event, envelope, subject_for(event), encode(event), headers

    @staticmethod
    def _origin(msg: Msg, envelope: Envelope) -> int:
        """When the root cause entered the log: carried in a header from the first hop on;
        for a root event (a bar, a command), when it was stored."""
        header = (msg.headers or {}).get(ORIGIN_TIME)
        if header:
            try:
                return int(header)
            except ValueError:
                return 0
        return stored_ns(msg) if envelope.event_id == envelope.correlation_id else 0

    async def _submit(self, bus: Bus, output: Output, handled: Handled) -> asyncio.Future:
        """``Bus.submit`` plus the origin header, and the telemetry of the publish ack."""
        event, envelope, subject, data, headers = output
        if handled.origin:
            headers[ORIGIN_TIME] = str(handled.origin)
        span = (
            self._tracing.publish_span(handled.span, subject, type(event).__name__, envelope)
            if self._tracing is not None and handled.span is not None
            else None
        )
        future = await bus.send(bus.prefix + subject, data, headers)
        if self._metrics is not None or span is not None:
            future.add_done_callback(
                functools.partial(self._acked, event, subject, handled.origin, span)
            )
        return future

    def _acked(
        self, event: Event, subject: str, origin: int, span: Span | None, future: asyncio.Future
    ) -> None:
        failed = future.cancelled() or future.exception() is not None
        if span is not None:
            if failed:
                span.set_status(Status(StatusCode.ERROR, "publish failed"))
            else:
                span.set_attribute("keel.duplicate", bool(future.result().duplicate))
            span.end()
        if self._metrics is not None and not failed:
            latency = (time.time_ns() - origin) / 1e9 if origin else None
            self._metrics.published(event, subject, not future.result().duplicate, latency)

    def _dead_letter(self, stream: str, seq: int, msg: Msg, reason: str, kind: str = "") -> Output:
        if self._metrics:
            if not kind:
                kind = "undecodable" if reason.startswith("undecodable") else "handler_error"
            self._metrics.dead_letter(stream, kind)
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
        return self._output(letter, Envelope.root(content_id("dlq", self.name, stream, seq), now))

    async def _beat(self, bus: Bus, status: str, seq: int = 0) -> None:
        port = self._metrics.port if self._metrics else 0
        await publish_heartbeat(bus, self.name, self.instance, status, seq, self.processed, port)

    async def _heartbeat(self, bus: Bus) -> None:
        seq = 0
        while not self._stop.is_set():
            seq += 1
            await self._beat(bus, "running", seq)
            await self._poll_consumers(bus)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.heartbeat_s):
                    await self._stop.wait()

    async def _poll_consumers(self, bus: Bus) -> None:
        """Pending and unacknowledged counts of this worker's durable consumers."""
        if self._metrics is None:
            return
        for spec in self.inputs:
            try:
                info = await bus.js.consumer_info(spec.stream, durable_name(self.name, spec.stream))
            except Exception:  # not created yet, or the connection is down: next beat
                continue
            self._metrics.consumer(spec.stream, info.num_pending or 0, info.num_ack_pending or 0)
