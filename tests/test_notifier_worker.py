"""The notifier on a real nats-server with real Apprise against a loopback sink: a halt, a
breach, a stale feed, a reconciliation halt and a dead worker each reach the JSON webhook
and the Telegram Bot API once with their priority; a failing destination's CRITICAL is
retried, then recorded failed; the destinations' URLs appear nowhere."""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.request
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope, content_id
from contracts.events import Event, FeedStatus, RiskAlert
from contracts.notify_events import Notification
from contracts.system_events import Heartbeat, SystemStatus
from contracts.venue_events import Discrepancy, VenueStatus
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import read_caught_up
from services.notifier.config import DestinationConfig, NotifierConfig
from services.notifier.policy import PolicyConfig
from services.notifier.worker import Notifier
from tests.fakes.notify_sink import NotifySink
from tests.test_nats_permissions import SecuredServer

TOKEN = "123456789:SeCrEtBoTtOkEn-SHOULD-NEVER-SHOW"
HOOK_SECRET = "hOoKsEcReT-SHOULD-NEVER-SHOW"
BOUND_S = 15.0  # every condition at the destination within this (the dead worker: 1 s + 1 beat)

FAST = PolicyConfig(per_second=20, per_minute=200, critical_attempts=3, backoff_s=0.05)


def _config(sink: NotifySink, monkeypatch: pytest.MonkeyPatch) -> NotifierConfig:
    monkeypatch.setenv("KEEL_TEST_HOOK_URL", f"json://127.0.0.1:{sink.port}/{HOOK_SECRET}")
    monkeypatch.setenv("KEEL_TEST_TELEGRAM_URL", f"tgram://{TOKEN}/-100123456")
    return NotifierConfig(
        destinations=(
            DestinationConfig(name="hook", url_env="KEEL_TEST_HOOK_URL", limits=FAST),
            DestinationConfig(
                name="chat",
                url_env="KEEL_TEST_TELEGRAM_URL",
                min_priority="ERROR",
                api_base=sink.base,
                limits=FAST,
            ),
        ),
        dead_after_s=1.0,
        heartbeat_s=0.2,
        timeout_s=5.0,
    )


async def _publish(bus: Bus, event: Event, name: str) -> None:
    await bus.publish(event, Envelope.root(content_id("test", name), event.ts), "test")


async def _notifications(bus: Bus) -> list[Notification]:
    stored = await read_caught_up(bus, "SYSTEM", "sys.notify.>", DeliverPolicy.ALL)
    return [s.event for s in stored if isinstance(s.event, Notification)]


async def _until(check, what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not check():
        assert time.monotonic() < deadline, f"not within {BOUND_S} s: {what}"
        await asyncio.sleep(0.05)


CONDITIONS = {  # key -> (priority, a title fragment)
    "status.risk": ("CRITICAL", "risk: HALTED"),
    "risk.max_drawdown": ("CRITICAL", "Risk max_drawdown: flatten"),
    "feed.binance.BTC/USDT": ("ERROR", "Feed binance BTC/USDT: stale"),
    "venue.binance": ("CRITICAL", "Venue binance (live): halted"),
    "recon.binance.position_mismatch.BTC": ("CRITICAL", "position_mismatch BTC"),
    "heartbeat.strategy-a": ("CRITICAL", "strategy-a: no heartbeat"),
}


async def test_each_condition_reaches_both_destinations_once_with_its_priority(
    bus: Bus,
    notify_sink: NotifySink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    notifier = Notifier(_config(notify_sink, monkeypatch), metrics_port=0)
    task = asyncio.create_task(notifier.run(bus))
    await asyncio.wait_for(notifier.ready.wait(), 10)
    now = time.time_ns()
    events: list[Event] = [
        Heartbeat(ts=now, worker="strategy-a", instance="h-1", seq=1, processed=0),
        SystemStatus(ts=now, status="HALTED", reason="drawdown 12%", source="risk"),
        RiskAlert(ts=now, rule="max_drawdown", action="flatten", detail="dd 12% > 10%"),
        FeedStatus(ts=now, venue="binance", symbol="BTC/USDT", state="stale"),
        VenueStatus(ts=now, venue="binance", mode="live", state="halted", reason="recon"),
        Discrepancy(ts=now, venue="binance", kind="position_mismatch", action="halt", symbol="BTC"),
    ]
    await bus.js.publish("sys.status.junk", b"not an event")  # a dead letter, not a stop
    started = time.monotonic()
    for i, event in enumerate(events):
        await _publish(bus, event, str(i))

    def text(kind: str) -> str:
        return "\n".join(f"{r.title}\n{r.body}" for r in notify_sink.received if r.kind == kind)

    def arrived() -> bool:
        return all(frag in text(k) for _, frag in CONDITIONS.values() for k in ("json", "telegram"))

    await _until(arrived, "every condition at both destinations")
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.5)  # nothing more comes
    assert notifier.metrics is not None
    url = f"http://127.0.0.1:{notifier.metrics.port}/metrics"
    metrics = await asyncio.to_thread(
        lambda: urllib.request.urlopen(url, timeout=5).read().decode()
    )
    assert 'destination="hook",outcome="sent",priority="CRITICAL"' in metrics
    _assert_secret_free(metrics)
    for _, fragment in CONDITIONS.values():
        assert text("json").count(fragment) == 1 and text("telegram").count(fragment) == 1
    assert all(
        r.path == f"/bot{TOKEN}/sendMessage" for r in notify_sink.received if r.kind == "telegram"
    )
    assert {r.type for r in notify_sink.received if r.kind == "json"} == {"failure"}
    notifier.stop()
    await asyncio.wait_for(task, 10)
    letter = await bus.last_event("SYSTEM", "sys.dlq.notifier")
    assert letter is not None and letter.event.subject == "sys.status.junk"
    assert "Dead letter from notifier on sys.status.junk" in text("json")
    audits = await _notifications(bus)
    for destination in ("hook", "chat"):
        seen = {
            a.key: a.priority
            for a in audits
            if a.destination == destination and a.outcome in ("sent", "merged")
        }
        for key, (priority, _) in CONDITIONS.items():
            assert seen.get(key) == priority, (destination, key)
    print(f"every condition at both destinations {elapsed:.2f} s after publishing")
    _assert_secret_free(caplog.text)
    stored = await read_caught_up(bus, "SYSTEM", "sys.>", DeliverPolicy.ALL)
    _assert_secret_free("\n".join(repr(s) for s in stored))


async def test_a_failing_destination_retries_a_critical_then_records_it_failed(
    bus: Bus, notify_sink: NotifySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify_sink.failing = True
    notifier = Notifier(_config(notify_sink, monkeypatch))
    task = asyncio.create_task(notifier.run(bus))
    await asyncio.wait_for(notifier.ready.wait(), 10)
    halt = SystemStatus(ts=time.time_ns(), status="HALTED", reason="kill", source="risk")
    await _publish(bus, halt, "halt")
    await _until(lambda: notify_sink.refused >= 6, "three attempts at each destination")
    notifier.stop()
    await asyncio.wait_for(task, 10)
    failed = [a for a in await _notifications(bus) if a.outcome == "failed"]
    assert sorted(a.destination for a in failed) == ["chat", "hook"]
    assert all((a.key, a.priority, a.attempts) == ("status.risk", "CRITICAL", 3) for a in failed)
    assert notify_sink.received == [] and notify_sink.refused == 6
    _assert_secret_free("\n".join(a.reason for a in failed))


def test_a_missing_or_unknown_url_is_one_line_without_a_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = NotifierConfig(destinations=(DestinationConfig(name="ops", url_env="KEEL_NO_URL"),))
    monkeypatch.delenv("KEEL_NO_URL", raising=False)
    with pytest.raises(KeelError, match=r"notifier destination ops: \$KEEL_NO_URL is not set"):
        Notifier(config)
    monkeypatch.setenv("KEEL_NO_URL", f"nosuchscheme://{HOOK_SECRET}")
    with pytest.raises(KeelError) as refused:
        Notifier(config)
    assert "not one Apprise supports" in str(refused.value)
    _assert_secret_free(str(refused.value))


def _assert_secret_free(text: str) -> None:
    assert TOKEN not in text and TOKEN.split(":")[1] not in text and HOOK_SECRET not in text


async def test_the_notifier_runs_as_its_own_nats_user(
    tmp_path: Path, notify_sink: NotifySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats.conf's ``notifier`` user: its ordered consumers, its audit and its heartbeats."""
    server = SecuredServer(tmp_path / "secured")
    admin = await server.connect("admin", ensure=True)
    bus = await server.connect("notifier")
    try:
        notifier = Notifier(_config(notify_sink, monkeypatch))
        task = asyncio.create_task(notifier.run(bus))
        await asyncio.wait_for(notifier.ready.wait(), 10)
        halt = SystemStatus(ts=time.time_ns(), status="HALTED", reason="drill", source="risk")
        await _publish(admin, halt, "halt")
        await _until(lambda: len(notify_sink.received) == 2, "the halt at both destinations")
        notifier.stop()
        await asyncio.wait_for(task, 10)
        audits = await _notifications(admin)
        assert sorted((a.destination, a.outcome) for a in audits) == [
            ("chat", "sent"),
            ("hook", "sent"),
        ]
        assert not bus.refusals.about("permissions violation")
        assert await admin.last_event("SYSTEM", "sys.heartbeat.notifier") is not None
    finally:
        await bus.close()
        await admin.close()
        server.stop()
