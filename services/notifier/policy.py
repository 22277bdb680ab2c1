"""One destination's outbox: latching, rate limits, merging, the bounded queue and retries.

Pure and clock-injected: every call takes ``now`` (ns) and returns what happened as
``Audit`` records, so a test drives a storm through it in microseconds. The worker feeds it
alerts and delivery results and does the I/O.

- De-duplication is per alert key: an alert whose key is queued joins it (``merged``); one
  whose key was sent less than ``repeat_s`` ago is ``suppressed`` (the latch), until an
  event resolves the condition.
- A send takes every queued alert of the most urgent priority present and merges them
  into one message: a storm of CRITICALs becomes a few messages, none lost.
- The rate limit is per destination: at most ``per_second`` and ``per_minute`` attempts,
  of which the last ``critical_reserve`` a minute only a CRITICAL may use; past ``burst``
  attempts within the minute they are spaced ``60 / per_minute`` s apart, so a storm's
  budget is not spent in its first seconds.
- The queue holds ``queue`` entries; past that the least urgent, oldest entry is
  ``dropped`` (INFO and HEARTBEAT first). A CRITICAL is never dropped: with only CRITICALs
  queued it merges into the oldest.
- A failed send is retried with exponential backoff, ``critical_attempts`` times for a
  CRITICAL and ``attempts`` for the rest, then recorded ``failed``.
"""

from __future__ import annotations

from collections import deque

import msgspec

from contracts.notify_events import Outcome, Priority
from services.notifier.alerts import RANK, Alert

S = 1_000_000_000


class PolicyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    repeat_s: float = 3600.0
    queue: int = 200
    per_second: int = 1
    per_minute: int = 20
    critical_reserve: int = 5
    burst: int = 5
    critical_attempts: int = 6
    attempts: int = 2
    backoff_s: float = 2.0
    backoff_max_s: float = 60.0
    body_chars: int = 3500

    def __post_init__(self) -> None:
        if self.queue < 1 or self.per_second < 1 or self.per_minute < 1:
            raise ValueError("queue, per_second and per_minute must be >= 1")
        if self.burst < 1:
            raise ValueError("burst must be >= 1")
        if not 0 <= self.critical_reserve < self.per_minute:
            raise ValueError("critical_reserve must be within [0, per_minute)")
        if self.critical_attempts < 1 or self.attempts < 1:
            raise ValueError("critical_attempts and attempts must be >= 1")
        if self.repeat_s < 0 or self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("repeat_s, backoff_s and backoff_max_s must be >= 0")


class Audit(msgspec.Struct, frozen=True):
    """One notification's fate, as ``Notification`` will record it."""

    outcome: Outcome
    key: str
    priority: Priority
    title: str
    body: str = ""
    count: int = 1
    attempts: int = 0
    reason: str = ""
    cause_ids: tuple[str, ...] = ()


class Message(msgspec.Struct, frozen=True):
    """What to deliver now: ``keys`` are every alert key it carries."""

    key: str
    priority: Priority
    title: str
    body: str
    count: int
    attempts: int
    keys: tuple[str, ...]
    cause_ids: tuple[str, ...]


class _Entry:
    """A queued notification: one alert key, or several merged."""

    __slots__ = ("alerts", "attempts", "count", "key", "not_before", "priority", "seq")

    def __init__(self, alert: Alert, seq: int) -> None:
        self.key = _queue_key(alert)
        self.priority: Priority = alert.priority
        self.alerts: list[Alert] = [alert]
        self.count = 1
        self.attempts = 0
        self.not_before = 0
        self.seq = seq


def _queue_key(alert: Alert) -> str:
    return f"{alert.key}:resolved" if alert.resolves else alert.key


class Outbox:
    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.config = config or PolicyConfig()
        self._queue: list[_Entry] = []
        self._flight: _Entry | None = None
        self._latch: dict[str, int] = {}
        self._attempts: deque[int] = deque()
        self._seq = 0

    def __len__(self) -> int:
        return len(self._queue) + (self._flight is not None)

    def offer(self, alert: Alert, now: int) -> list[Audit]:
        if alert.resolves and not self._take_back(alert.key):
            return []  # nothing was said about it: nothing to take back
        queued = self._queued(_queue_key(alert))
        if queued is not None:
            self._join(queued, alert)
            return [_audit("merged", alert, f"joined the queued {queued.key}")]
        latched = self._latch.get(alert.key)
        if latched is not None and now - latched < self.config.repeat_s * S:
            return [_audit("suppressed", alert, "latched: already sent, not resolved")]
        self._seq += 1
        entry = _Entry(alert, self._seq)
        self._queue.append(entry)
        return self._bound(entry)

    def next(self, now: int) -> tuple[Message | None, list[Audit]]:
        """The message to send now, if the rate limit and backoff allow one, and the
        ``merged`` records of the entries it absorbed."""
        if self._flight is not None or self._rate_open(now, True) > now:
            return None, []
        ready = [e for e in self._queue if e.not_before <= now]
        if not ready:
            return None, []
        top = max(RANK[e.priority] for e in ready)
        if top < RANK["CRITICAL"] and self._rate_open(now, False) > now:
            return None, []  # the rest of the minute's budget is kept for CRITICALs
        chosen = [e for e in ready if RANK[e.priority] == top]
        head, audits = chosen[0], []
        for entry in chosen[1:]:
            audits += [
                _audit("merged", a, f"merged into one {head.priority} message")
                for a in entry.alerts
            ]
            head.alerts += entry.alerts
            head.count += entry.count
        absorbed = {id(e) for e in chosen}
        self._queue = [e for e in self._queue if id(e) not in absorbed]
        head.attempts += 1
        self._flight = head
        self._attempts.append(now)
        return self._message(head), audits

    def done(self, ok: bool, now: int, reason: str = "") -> list[Audit]:
        """The in-flight message was delivered (``ok``) or its attempt failed."""
        entry, self._flight = self._flight, None
        if entry is None:
            return []
        message = self._message(entry)
        if ok:
            for alert in entry.alerts:
                if not alert.resolves:
                    self._latch[alert.key] = now
            self._prune(now)
            return [_record("sent", message, "")]
        limit = (
            self.config.critical_attempts if entry.priority == "CRITICAL" else self.config.attempts
        )
        if entry.attempts >= limit:
            return [_record("failed", message, reason or "delivery failed")]
        delay = min(self.config.backoff_s * 2 ** (entry.attempts - 1), self.config.backoff_max_s)
        entry.not_before = now + int(delay * S)
        self._queue.insert(0, entry)
        return []

    def wake_at(self, now: int) -> int | None:
        """When ``next`` could give a message (``now`` if it can now); None: nothing queued."""
        if self._flight is not None or not self._queue:
            return None
        due = max(now, min(e.not_before for e in self._queue))
        critical = any(e.priority == "CRITICAL" for e in self._queue)
        return max(due, self._rate_open(now, critical))

    def _take_back(self, key: str) -> bool:
        """Lift ``key``'s latch; whether anything was said or queued about it."""
        return self._latch.pop(key, None) is not None or self._queued(key) is not None

    def _queued(self, key: str) -> _Entry | None:
        return next((e for e in self._queue if e.key == key), None)

    @staticmethod
    def _join(entry: _Entry, alert: Alert) -> None:
        entry.alerts.append(alert)
        entry.count += 1

    def _bound(self, entry: _Entry) -> list[Audit]:
        if len(self._queue) <= self.config.queue:
            return []
        victim = min(self._queue, key=lambda e: (RANK[e.priority], e.seq))
        if victim.priority == "CRITICAL":
            oldest = self._queue[0] if self._queue[0] is not entry else self._queue[1]
            self._queue.remove(entry)
            for alert in entry.alerts:
                self._join(oldest, alert)
            return [_audit("merged", a, f"queue full: joined {oldest.key}") for a in entry.alerts]
        self._queue.remove(victim)
        return [_audit("dropped", a, "queue full") for a in victim.alerts]

    def _rate_open(self, now: int, critical: bool) -> int:
        """When the next attempt fits both windows; a non-critical one leaves
        ``critical_reserve`` of the minute's attempts unused."""
        while self._attempts and self._attempts[0] <= now - 60 * S:
            self._attempts.popleft()
        per_minute = self.config.per_minute - (0 if critical else self.config.critical_reserve)
        opens = now
        if len(self._attempts) >= per_minute:
            opens = self._attempts[-per_minute] + 60 * S
        if len(self._attempts) >= self.config.per_second:
            opens = max(opens, self._attempts[-self.config.per_second] + S)
        if len(self._attempts) >= self.config.burst:  # past a burst: paced over the minute
            opens = max(opens, self._attempts[-1] + 60 * S // self.config.per_minute)
        return opens

    def _prune(self, now: int) -> None:
        if len(self._latch) > 4 * self.config.queue:
            horizon = now - int(self.config.repeat_s * S)
            self._latch = {k: t for k, t in self._latch.items() if t > horizon}

    def _message(self, entry: _Entry) -> Message:
        alerts = entry.alerts
        keys = tuple(dict.fromkeys(a.key for a in alerts))
        causes = tuple(a.cause_id for a in alerts if a.cause_id)
        first = alerts[0]
        if len(keys) == 1:
            title = first.title if len(alerts) == 1 else f"{first.title} (x{len(alerts)})"
            body = first.body
        else:
            title = f"{len(alerts)} {entry.priority} alerts"
            body = self._digest(alerts)
        return Message(
            entry.key, entry.priority, title, body, entry.count, entry.attempts, keys, causes
        )

    def _digest(self, alerts: list[Alert]) -> str:
        """One line per alert key (with its repeat count) until the body is full."""
        counts: dict[str, list] = {}
        for alert in alerts:
            counts.setdefault(alert.key, [alert, 0])[1] += 1
        lines: list[str] = []
        size = 0
        for shown, (alert, n) in enumerate(counts.values()):
            line = f"- {alert.title}" + (f" (x{n})" if n > 1 else "")
            if size + len(line) + 1 > self.config.body_chars:
                lines.append(f"... and {len(counts) - shown} more (sys.notify.merged names them)")
                break
            lines.append(line)
            size += len(line) + 1
        return "\n".join(lines)


def _audit(outcome: Outcome, alert: Alert, reason: str) -> Audit:
    causes = (alert.cause_id,) if alert.cause_id else ()
    return Audit(outcome, alert.key, alert.priority, alert.title, alert.body, 1, 0, reason, causes)


def _record(outcome: Outcome, message: Message, reason: str) -> Audit:
    return Audit(
        outcome,
        message.key,
        message.priority,
        message.title,
        message.body,
        message.count,
        message.attempts,
        reason,
        message.cause_ids,
    )
