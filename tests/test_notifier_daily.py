"""The daily report inside the notifier: after midnight of the configured zone the previous
day's report reaches the destinations that take reports (whatever their minimum priority),
once, and a restarted notifier does not send it again (the KV marker and the audit)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope, content_id
from contracts.notify_events import Notification
from eventstore.bus import Bus
from eventstore.log_reader import read_caught_up
from services.notifier.config import DailyReportConfig, DestinationConfig, NotifierConfig
from services.notifier.policy import PolicyConfig
from services.notifier.worker import Notifier
from services.reports.daily_job import BUCKET, report_key
from services.runtime.clock import WallClock
from tests import daily_day
from tests.fakes.notify_sink import NotifySink
from tests.test_nats_permissions import SecuredServer

AFTER_MIDNIGHT = daily_day.END + 5 * 1_000_000_000
FAST = PolicyConfig(per_second=20, per_minute=200, critical_attempts=3, backoff_s=0.05)


class AfterMidnight(WallClock):
    """Wall time for waits, but the date is just after the reported day's midnight."""

    def now_ns(self) -> int:
        return AFTER_MIDNIGHT


def config(sink: NotifySink, monkeypatch: pytest.MonkeyPatch) -> NotifierConfig:
    monkeypatch.setenv("KEEL_TEST_HOOK_URL", f"json://127.0.0.1:{sink.port}/hook")
    return NotifierConfig(
        destinations=(
            DestinationConfig(name="hook", url_env="KEEL_TEST_HOOK_URL", limits=FAST),
            DestinationConfig(
                name="quiet", url_env="KEEL_TEST_HOOK_URL", report=False, limits=FAST
            ),
        ),
        timeout_s=5.0,
        daily_report=DailyReportConfig(timezone=daily_day.TZ),
    )


async def run_until_sent(bus: Bus, notifier: Notifier, sink: NotifySink, want: int) -> None:
    task = asyncio.create_task(notifier.run(bus))
    deadline = time.monotonic() + 30
    while len(sink.received) < want:
        assert time.monotonic() < deadline, "the daily report did not arrive within 30 s"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # a second copy would come now
    notifier.stop()
    async with asyncio.timeout(10):
        await task


async def test_the_notifier_sends_the_days_report_once_across_a_restart(
    bus: Bus, notify_sink: NotifySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i, event in enumerate(daily_day.events()):
        await bus.publish(event, Envelope.root(content_id("day", i), event.ts))

    await run_until_sent(
        bus, Notifier(config(notify_sink, monkeypatch), clock=AfterMidnight()), notify_sink, 1
    )
    [report] = notify_sink.received
    assert daily_day.DAY in report.title and "fills" in report.body

    await run_until_sent(
        bus, Notifier(config(notify_sink, monkeypatch), clock=AfterMidnight()), notify_sink, 1
    )
    assert len(notify_sink.received) == 1  # the restart found the marker
    stored = await read_caught_up(bus, "SYSTEM", "sys.notify.>", DeliverPolicy.ALL)
    sent = [s.event for s in stored if isinstance(s.event, Notification)]
    assert [(n.key, n.destination, n.outcome) for n in sent] == [
        (report_key(daily_day.DAY), "hook", "sent")
    ]


async def test_the_daily_report_runs_as_the_notifier_user(
    tmp_path: Path, notify_sink: NotifySink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats.conf's ``notifier`` user reads the day, keeps its marker and records the send."""
    server = SecuredServer(tmp_path / "secured")
    admin = await server.connect("admin", ensure=True)
    bus = await server.connect("notifier")
    try:
        for i, event in enumerate(daily_day.events()):
            await admin.publish(event, Envelope.root(content_id("day", i), event.ts))
        notifier = Notifier(config(notify_sink, monkeypatch), clock=AfterMidnight())
        await run_until_sent(bus, notifier, notify_sink, 1)
        assert not bus.refusals.about("permissions violation")
        kv = await admin.js.key_value(BUCKET)
        assert (await kv.get(daily_day.DAY)).value
    finally:
        await bus.close()
        await admin.close()
        server.stop()
