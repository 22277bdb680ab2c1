"""The notifier's pure parts on an injected clock: which events alert and how urgently, the
per-key latch, per-destination rate limits, merging, the bounded queue and retries."""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import FeedStatus, RiskAlert
from contracts.system_events import GovernanceCommand, Heartbeat, SystemStatus
from contracts.venue_events import Discrepancy, VenueStatus
from services.notifier.alerts import Alert, alert_for
from services.notifier.config import DestinationConfig
from services.notifier.policy import Audit, Outbox, PolicyConfig, S
from services.notifier.watch import HeartbeatWatch

T0 = 1_700_000_000 * S

CONDITIONS = [
    (SystemStatus(ts=T0, status="HALTED", reason="max drawdown", source="risk"), "CRITICAL"),
    (RiskAlert(ts=T0, rule="max_drawdown", action="flatten", detail="dd 12%"), "CRITICAL"),
    (RiskAlert(ts=T0, rule="depeg_guard", action="block", venue="binance"), "ERROR"),
    (FeedStatus(ts=T0, venue="binance", symbol="BTC/USDT", state="stale"), "ERROR"),
    (VenueStatus(ts=T0, venue="binance", mode="live", state="halted", reason="recon"), "CRITICAL"),
    (
        Discrepancy(ts=T0, venue="binance", kind="position_mismatch", action="halt", symbol="BTC"),
        "CRITICAL",
    ),
]


def test_each_condition_alerts_with_its_priority_and_goes_out_at_once() -> None:
    """Within the rate limit's bound: at once while within the burst (5), then one every
    60 / per_minute = 3 s."""
    outbox = Outbox(PolicyConfig(per_second=1, per_minute=20))
    sent = []
    for i, (event, priority) in enumerate(CONDITIONS):
        alert = alert_for(event, f"cause-{i}")
        assert alert is not None and alert.priority == priority
        now = T0 + i * 3 * S
        assert outbox.offer(alert, now) == []
        message, merged = outbox.next(now)
        assert message is not None and merged == []
        assert (message.priority, message.keys, message.cause_ids) == (
            priority,
            (alert.key,),
            (f"cause-{i}",),
        )
        sent += outbox.done(True, now)
    assert [a.outcome for a in sent] == ["sent"] * len(CONDITIONS)


def test_a_silent_worker_is_one_critical_and_its_next_beat_resolves_it() -> None:
    watch = HeartbeatWatch(dead_after_s=10, ignore=frozenset({"notifier"}))
    beat = Heartbeat(ts=T0, worker="risk", instance="h-1", seq=1, processed=0)
    assert watch.beat(beat, T0) == []
    assert (
        watch.beat(Heartbeat(ts=T0, worker="notifier", instance="n", seq=1, processed=0), T0) == []
    )
    assert watch.tick(T0 + 10 * S) == []
    (dead,) = watch.tick(T0 + 11 * S)
    assert (dead.key, dead.priority, dead.kind) == ("heartbeat.risk", "CRITICAL", "heartbeat")
    assert watch.tick(T0 + 60 * S) == []  # once
    (back,) = watch.beat(beat, T0 + 61 * S)
    assert back.resolves and back.key == "heartbeat.risk"
    stopped = Heartbeat(ts=T0, worker="risk", instance="h-1", seq=2, processed=0, status="stopped")
    assert watch.beat(stopped, T0 + 62 * S) == [] and watch.tick(T0 + 999 * S) == []


def _crit(key: str) -> Alert:
    return Alert(key, "CRITICAL", "status", f"{key} halted")


def test_two_different_criticals_both_go_out_and_a_repeat_is_latched_until_resolved() -> None:
    outbox = Outbox(PolicyConfig(repeat_s=600))
    for key in ("status.risk", "venue.binance"):
        outbox.offer(_crit(key), T0)
    message, merged = outbox.next(T0)
    assert message is not None and message.keys == ("status.risk", "venue.binance")
    assert message.title == "2 CRITICAL alerts" and [a.outcome for a in merged] == ["merged"]
    outbox.done(True, T0)
    (again,) = outbox.offer(_crit("status.risk"), T0 + 60 * S)
    assert again.outcome == "suppressed"
    resolved = Alert("status.risk", "INFO", "status", "risk: RUNNING", resolves=True)
    assert outbox.offer(resolved, T0 + 61 * S) == []
    assert outbox.offer(_crit("status.risk"), T0 + 62 * S) == []  # the latch is lifted
    assert outbox.offer(_crit("venue.binance"), T0 + 601 * S) == []  # the repeat passed
    unknown = Alert("feed.x", "INFO", "feed", "x streaming", resolves=True)
    assert outbox.offer(unknown, T0 + 602 * S) == []
    assert len(outbox) == 3  # the resolution, and the two criticals again


def test_the_full_queue_drops_info_first_and_never_a_critical() -> None:
    outbox = Outbox(PolicyConfig(queue=3))
    outbox.offer(Alert("i", "INFO", "governance", "info"), T0)
    outbox.offer(Alert("w", "WARNING", "feed", "warn"), T0)
    outbox.offer(_crit("c1"), T0)
    (dropped,) = outbox.offer(_crit("c2"), T0)
    assert (dropped.outcome, dropped.key) == ("dropped", "i")
    (dropped,) = outbox.offer(_crit("c3"), T0)
    assert dropped.key == "w"
    (merged,) = outbox.offer(_crit("c4"), T0)
    assert (merged.outcome, merged.key) == ("merged", "c4")
    message, _ = outbox.next(T0)
    assert message is not None and set(message.keys) == {"c1", "c2", "c3", "c4"}


def test_a_failing_critical_is_retried_with_backoff_then_failed() -> None:
    outbox = Outbox(PolicyConfig(critical_attempts=3, attempts=1, backoff_s=2, per_second=100))
    outbox.offer(_crit("status.risk"), T0)
    outbox.offer(Alert("w", "WARNING", "feed", "warn"), T0)
    now, tries = T0, []
    while True:
        message, _ = outbox.next(now)
        if message is not None:
            tries.append((message.key, (now - T0) // S))
            audits = outbox.done(False, now, "refused")
            if audits:
                tries.append((audits[0].outcome, audits[0].attempts))
        wake = outbox.wake_at(now)
        if wake is None:
            break
        now = max(wake, now + 1)
    assert tries == [
        ("status.risk", 0),
        ("w", 0),
        ("failed", 1),
        ("status.risk", 2),
        ("status.risk", 6),
        ("failed", 3),
    ]


CRITICAL_BOUND_S = 20
"""A CRITICAL goes out within this in a storm at the default limits (measured: under 10 s)."""
PRIORITIES = ("CRITICAL", "ERROR", "WARNING", "INFO", "HEARTBEAT")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.floats(0.0, 1.0), st.integers(1, 1000))
def test_a_storm_of_1000_alerts_in_a_minute_is_a_few_merged_messages_with_no_critical_lost(
    seed: int, critical_share: float, distinct: int
) -> None:
    """1,000 alerts at random times within a minute, a random share CRITICAL, over up to
    ``distinct`` keys per priority."""
    rng = random.Random(seed)
    storm = [
        (
            rng.randrange(60_000),
            "CRITICAL" if rng.random() < critical_share else rng.choice(PRIORITIES[1:]),
            rng.randrange(distinct),
        )
        for _ in range(1000)
    ]
    config = PolicyConfig()  # 1/s, 20/min
    outbox = Outbox(config)
    audits: list[Audit] = []
    sent_at: list[int] = []
    keys_sent: set[str] = set()
    waiting: dict[str, int] = {}  # a CRITICAL key not yet sent -> when it was first offered
    waits: list[int] = []
    pending = sorted(storm)
    now = T0

    def send(now: int) -> None:
        message, merged = outbox.next(now)
        audits.extend(merged)
        if message is not None:
            sent_at.append(now)
            keys_sent.update(message.keys)
            waits.extend(now - waiting.pop(k) for k in message.keys if k in waiting)
            audits.extend(outbox.done(True, now))

    for ms, priority, n in pending:
        now = T0 + ms * 1_000_000
        send(now)
        alert = Alert(f"{priority.lower()}-{n}", priority, "status", f"alert {n}")  # type: ignore[arg-type]
        if priority == "CRITICAL" and alert.key not in keys_sent:
            waiting.setdefault(alert.key, now)
        audits.extend(outbox.offer(alert, now))
        send(now)
    while (wake := outbox.wake_at(now)) is not None:
        now = wake
        send(now)
    assert sum(1 for t in sent_at if t < T0 + 60 * S) <= config.per_minute
    assert len(sent_at) <= 2 * config.per_minute
    for a, b in itertools.pairwise(sent_at):
        assert b - a >= S
    criticals = {f"critical-{n}" for _, p, n in storm if p == "CRITICAL"}
    assert criticals <= keys_sent
    assert max(waits, default=0) <= CRITICAL_BOUND_S * S
    assert not [
        a for a in audits if a.priority == "CRITICAL" and a.outcome in ("dropped", "failed")
    ]
    assert len(outbox) == 0


def test_routing_rules_take_priorities_kinds_and_fills() -> None:
    ops = DestinationConfig(name="ops", url_env="X", min_priority="ERROR", kinds=("status",))
    fills = DestinationConfig(name="fills", url_env="X", min_priority="INFO", fills=True)
    halt = _crit("status.risk")
    stale = Alert("feed.b.X", "ERROR", "feed", "stale")
    degraded = Alert("status.risk", "WARNING", "status", "degraded")
    running = Alert("status.risk", "INFO", "status", "running", resolves=True)
    fill = Alert("fill.o-1.1", "INFO", "fill", "fill")
    assert [ops.wants(a) for a in (halt, stale, degraded, running, fill)] == [
        True,
        False,
        False,
        True,
        False,
    ]
    assert [fills.wants(a) for a in (halt, stale, degraded, fill)] == [True, True, True, True]


def test_the_kill_switch_is_critical_and_resume_resolves_it() -> None:
    kill = alert_for(GovernanceCommand(ts=T0, action="kill", reason="drill", issued_by="ops"))
    resume = alert_for(GovernanceCommand(ts=T0, action="resume", issued_by="ops"))
    assert kill is not None and (kill.key, kill.priority, kill.title) == (
        "gov.kill",
        "CRITICAL",
        "Kill switch by ops",
    )
    assert resume is not None and resume.resolves and resume.key == "gov.kill"
    assert alert_for(FeedStatus(ts=T0, venue="b", symbol="X", state="backfilling")) is None
