"""The notifier process: the log's alerts to people, off the trading path.

It reads with ephemeral ordered consumers (no durable state, nothing upstream waits for
it): from the moment it starts, except heartbeats, of which it first reads each worker's
last so a worker already silent is noticed. Each event becomes at most one ``Alert``
(``alerts.py``), offered to every destination whose rule wants it; each destination has its
own ``Outbox`` (``policy.py``) and one sender task that delivers through Apprise
(``delivery.py``), one message at a time, each attempt bounded. A slow or failing
destination only delays its own queue. Every outcome is a ``Notification`` on
``sys.notify.<outcome>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from contracts.codec import DecodeError, decode
from contracts.envelope import Envelope, content_id
from contracts.notify_events import Notification
from contracts.system_events import DeadLetter, Heartbeat
from eventstore.bus import Bus
from services.notifier.alerts import Alert, alert_for
from services.notifier.config import DestinationConfig, NotifierConfig
from services.notifier.delivery import Delivery
from services.notifier.metrics import NotifierMetrics
from services.notifier.policy import Audit, Outbox
from services.notifier.watch import HeartbeatWatch
from services.reports.daily_job import DailyJob
from services.runtime.cancelling import end_tasks
from services.runtime.clock import Clock, system_clock
from services.runtime.heartbeat import publish_heartbeat
from services.runtime.merge import stored_ns

log = logging.getLogger("keel.notifier")

NAME = "notifier"
INPUTS: tuple[tuple[str, str], ...] = (
    ("SYSTEM", "sys.status.>"),
    ("SYSTEM", "sys.dlq.>"),
    ("ORDERS", "ord.alert.>"),
    ("MARKET", "md.status.>"),
    ("VENUE", "venue.status.>"),
    ("VENUE", "venue.recon.>"),
    ("GOVERNANCE", "gov.cmd.>"),
    ("GOVERNANCE", "gov.playbook.>"),
    ("GOVERNANCE", "gov.promotion.>"),
    ("GOVERNANCE", "gov.model.>"),
    ("GOVERNANCE", "gov.alloc.>"),
)
HEARTBEATS = ("SYSTEM", "sys.heartbeat.>")
FILLS = ("EXECUTION", "exec.report.>")
AUDIT_QUEUE = 10_000
STOP_S = 5.0  # a stop waits this long for a delivery in progress


class Destination:
    """A destination's rule, outbox, delivery and the event that wakes its sender."""

    def __init__(self, config: DestinationConfig, delivery: Delivery) -> None:
        self.config = config
        self.outbox = Outbox(config.limits)
        self.delivery = delivery
        self.wake = asyncio.Event()


class Notifier:
    def __init__(
        self,
        config: NotifierConfig,
        deliveries: dict[str, Delivery] | None = None,
        clock: Clock | None = None,
        metrics_port: int | None = None,
        metrics_addr: str = "127.0.0.1",
    ) -> None:
        """``deliveries``: by destination name; by default built from the configured URLs
        (read here: a missing one fails the start with one line). ``metrics_port``: serve
        ``/metrics`` there (0: a free port), None: no metrics."""
        if deliveries is None:
            deliveries = {d.name: Delivery(d, config.timeout_s) for d in config.destinations}
        self.config = config
        self.clock = clock or system_clock()
        self.destinations = [Destination(d, deliveries[d.name]) for d in config.destinations]
        self.watch = HeartbeatWatch(config.dead_after_s, frozenset({NAME}))
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self._audits: asyncio.Queue[Notification] = asyncio.Queue(AUDIT_QUEUE)
        self._stop = asyncio.Event()
        self.ready = asyncio.Event()
        """Set once every input is subscribed."""
        self._seq = 0
        self._metrics_at = (metrics_port, metrics_addr)
        self._letters: set[asyncio.Task] = set()
        self.metrics: NotifierMetrics | None = None
        self._reports: dict[str, tuple[asyncio.Future[bool], int]] = {}

    def stop(self) -> None:
        """Ends every loop: a cancel alone can be lost in a wait that completes with it."""
        self._stop.set()
        for dest in self.destinations:
            dest.wake.set()

    def offer(self, alert: Alert) -> None:
        """Queue an alert for every destination whose rule wants it; never waits."""
        now = self.clock.now_ns()
        for dest in self.destinations:
            if dest.config.wants(alert):
                self._record(dest.config.name, dest.outbox.offer(alert, now))
                dest.wake.set()
                if self.metrics is not None:
                    self.metrics.queued(dest.config.name, len(dest.outbox))

    async def send_report(self, key: str, title: str, body: str) -> bool:
        """The daily report's send: the text to every destination that takes reports,
        through the same limits and audit; True once one destination has it, False when
        none takes reports or every one dropped or failed it."""
        alert = Alert(key, "INFO", "report", title, body)
        wanted = [d for d in self.destinations if d.config.wants(alert)]
        if not wanted:
            return False
        done = asyncio.get_running_loop().create_future()
        self._reports[key] = (done, len(wanted))
        try:
            self.offer(alert)
            return await done
        finally:
            self._reports.pop(key, None)

    async def run(self, bus: Bus) -> None:
        port, addr = self._metrics_at
        if port is not None:
            self.metrics = NotifierMetrics(port, addr)
        try:
            await self._run(bus)
        finally:
            if self.metrics is not None:
                self.metrics.close()

    async def _run(self, bus: Bus) -> None:
        subs = [
            await self._subscribe(bus, stream, subject, DeliverPolicy.NEW)
            for stream, subject in INPUTS + ((FILLS,) if self.config.fills else ())
        ]
        subs.append(await self._subscribe(bus, *HEARTBEATS, DeliverPolicy.LAST_PER_SUBJECT))
        tasks = [asyncio.create_task(self._sender(dest)) for dest in self.destinations]
        tasks += [asyncio.create_task(self._publisher(bus)), asyncio.create_task(self._ticker(bus))]
        report = self.config.daily_report
        if report is not None:
            html_dir = Path(report.html_dir) if report.html_dir else None
            job = DailyJob(bus, self.send_report, self.clock.now_ns, report.timezone, html_dir)
            tasks.append(asyncio.create_task(job.run()))
        self.ready.set()
        log.info(
            "notifier: %d destinations (%s), %d inputs",
            len(self.destinations),
            ", ".join(d.config.name for d in self.destinations) or "none",
            len(subs),
        )
        try:
            await self._stop.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await end_tasks(tasks, STOP_S)
            await self._flush(bus)
            await publish_heartbeat(bus, NAME, self.instance, "stopped")

    async def _subscribe(self, bus: Bus, stream: str, subject: str, policy: DeliverPolicy):
        async def on_message(msg: Msg) -> None:
            self._consume(bus, msg)

        return await bus.js.subscribe(
            subject, stream=stream, cb=on_message, ordered_consumer=True, deliver_policy=policy
        )

    def _consume(self, bus: Bus, msg: Msg) -> None:
        try:
            event = decode(msg.data)
            cause = Envelope.from_headers(msg.headers).event_id
        except (DecodeError, ValueError) as exc:
            self._dead_letter(bus, msg, f"undecodable: {exc}")
            return
        try:
            if isinstance(event, Heartbeat):
                alerts = self.watch.beat(event, stored_ns(msg), cause)
            else:
                alert = alert_for(event, cause)
                alerts = [alert] if alert is not None else []
        except Exception as exc:  # one event the mapping cannot take: a letter, not a stop
            log.exception("notifier: cannot take %s", msg.subject)
            self._dead_letter(bus, msg, f"handler error: {type(exc).__name__}: {exc}")
            return
        for alert in alerts:
            self.offer(alert)

    def _dead_letter(self, bus: Bus, msg: Msg, reason: str) -> None:
        log.warning("notifier: dead letter on %s: %s", msg.subject, reason)
        now = self.clock.now_ns()
        letter = DeadLetter(
            ts=now,
            worker=NAME,
            subject=msg.subject,
            reason=reason,
            payload=bytes(msg.data[:65_536]),
        )
        env = Envelope.root(content_id("dlq", NAME, msg.subject, msg.reply or "", now), now)
        task = asyncio.get_running_loop().create_task(self._publish_quietly(bus, letter, env))
        self._letters.add(task)
        task.add_done_callback(self._letters.discard)

    async def _sender(self, dest: Destination) -> None:
        """Deliver this destination's outbox, one message at a time."""
        outbox, name = dest.outbox, dest.config.name
        while not self._stop.is_set():
            now = self.clock.now_ns()
            message, merged = outbox.next(now)
            self._record(name, merged)
            if message is None:
                dest.wake.clear()
                due = outbox.wake_at(now)
                wait = None if due is None else self.clock.wall_seconds((due - now) / 1e9)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await dest.wake.wait()
                continue
            ok, reason = await dest.delivery.send(message.priority, message.title, message.body)
            if not ok:
                log.warning("notifier: %s attempt %d failed: %s", name, message.attempts, reason)
            self._record(name, outbox.done(ok, self.clock.now_ns(), reason))
            if self.metrics is not None:
                self.metrics.queued(name, len(outbox))

    async def _ticker(self, bus: Bus) -> None:
        """Own heartbeat, the dead-man watch and the optional alive message."""
        seq, last_alive = 0, self.clock.now_ns()
        every = int(self.config.alive_every_s * 1e9)
        while not self._stop.is_set():
            seq += 1
            port = self.metrics.port if self.metrics is not None else 0
            await publish_heartbeat(bus, NAME, self.instance, "running", seq, 0, port)
            now = self.clock.now_ns()
            for alert in self.watch.tick(now):
                self.offer(alert)
            if every and now - last_alive >= every:
                last_alive = now
                self.offer(Alert("alive", "HEARTBEAT", "heartbeat", "Keel notifier alive"))
            await self.clock.sleep(self.config.heartbeat_s)

    def _settle_report(self, audit: Audit) -> None:
        """A report's send is settled by its first delivery, or once every destination
        that took it dropped or failed it."""
        waiting = self._reports.get(audit.key)
        if waiting is None or audit.outcome not in ("sent", "dropped", "failed"):
            return
        done, left = waiting
        if done.done():
            return
        if audit.outcome == "sent":
            done.set_result(True)
        elif left <= 1:
            done.set_result(False)
        else:
            self._reports[audit.key] = (done, left - 1)

    def _record(self, destination: str, audits: list[Audit]) -> None:
        now = self.clock.now_ns()
        for audit in audits:
            if self.metrics is not None:
                self.metrics.outcome(destination, audit.outcome, audit.priority)
            self._seq += 1
            event = Notification(
                ts=now,
                key=audit.key,
                priority=audit.priority,
                outcome=audit.outcome,
                destination=destination,
                title=audit.title,
                body=audit.body,
                count=audit.count,
                attempts=audit.attempts,
                reason=audit.reason,
                cause_ids=audit.cause_ids,
            )
            self._settle_report(audit)
            try:
                self._audits.put_nowait(event)
            except asyncio.QueueFull:
                log.warning(
                    "notifier: audit queue full; %s %s not recorded", audit.outcome, audit.key
                )

    async def _publisher(self, bus: Bus) -> None:
        while not self._stop.is_set():
            await self._publish_audit(bus, await self._audits.get())

    async def _flush(self, bus: Bus) -> None:
        while not self._audits.empty():
            await self._publish_audit(bus, self._audits.get_nowait())

    async def _publish_audit(self, bus: Bus, event: Notification) -> None:
        self._seq += 1
        env = Envelope.root(content_id("notify", self.instance, self._seq, event.ts), event.ts)
        await self._publish_quietly(bus, event, env)

    async def _publish_quietly(
        self, bus: Bus, event: Notification | DeadLetter, env: Envelope
    ) -> None:
        """The audit is best effort against a log that is away: retried a few times, then
        a log line (the delivery itself already happened)."""
        for attempt in range(5):
            try:
                await bus.publish(event, env, NAME)
                return
            except Exception as exc:
                if attempt == 4:
                    log.warning("notifier: cannot store %s: %s", type(event).__name__, exc)
                    return
                await asyncio.sleep(0.5 * 2**attempt)
