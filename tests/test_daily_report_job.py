"""The daily report job (services/reports/daily_job.py) with an injected clock, a real KV
bucket on a real nats-server and a send function that records: after local midnight the
previous day's report goes out exactly once, whatever restart happens around the send."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contracts.envelope import Envelope, content_id
from contracts.notify_events import Notification
from eventstore.bus import Bus
from eventstore.errors import KeelError
from services.reports.daily_job import BUCKET, DailyJob, report_key
from services.runtime.cancelling import end_tasks
from tests import daily_day

AFTER_MIDNIGHT = daily_day.END + 5 * 1_000_000_000  # 00:00:05 on 2026-12-06 in Berlin
NEXT_DAY = AFTER_MIDNIGHT + 24 * daily_day.H  # 00:00:05 on 2026-12-07: 2026-12-06 is due


class Crash(BaseException):
    """The process dying mid-way (not an ``Exception``: nothing catches it)."""


class Recorder:
    """The notifier's send as the job sees it. Like the notifier it publishes the delivery's
    ``Notification`` once a message went out; ``crash`` kills the process before the send
    (``before``) or after it (``after``), ``fail`` makes the destination refuse."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.sent: list[tuple[str, str, str]] = []
        self.crash = ""
        self.fail = False

    async def send(self, key: str, title: str, body: str) -> bool:
        if self.crash == "before":
            raise Crash
        if self.fail:
            return False
        self.sent.append((key, title, body))
        audit = Notification(
            ts=AFTER_MIDNIGHT,
            key=key,
            priority="INFO",
            outcome="sent",
            destination="chat",
            title=title,
            attempts=1,
        )
        await self.bus.publish(audit, Envelope.root(content_id("notify", key), audit.ts))
        if self.crash == "after":
            raise Crash
        return True


def job(bus: Bus, recorder: Recorder, now: list[int], html_dir: Path | None = None) -> DailyJob:
    """A fresh job, as after a restart: it shares nothing with the previous one but the log."""
    return DailyJob(bus, recorder.send, lambda: now[0], daily_day.TZ, html_dir)


async def publish_day(bus: Bus) -> None:
    for i, event in enumerate(daily_day.events()):
        await bus.publish(event, Envelope.root(content_id("day", i), event.ts))


async def test_exactly_once_across_restarts_at_midnight(bus: Bus, tmp_path: Path) -> None:
    await publish_day(bus)
    recorder, now = Recorder(bus), [AFTER_MIDNIGHT]

    recorder.crash = "before"  # the first start dies before its send: nothing marked
    with pytest.raises(Crash):
        await job(bus, recorder, now).tick()
    recorder.crash, recorder.fail = "", True  # the next start: the destination refuses
    assert await job(bus, recorder, now).tick() == "failed"
    recorder.fail = False
    assert await job(bus, recorder, now, tmp_path).tick() == "sent"
    for _ in range(3):  # restarts after the send
        assert await job(bus, recorder, now).tick() == "done"
    (sent,) = recorder.sent
    key, title, body = sent
    assert key == report_key("2026-12-05") == "daily-report-2026-12-05"
    assert title == "Keel daily report 2026-12-05 (Europe/Berlin)"
    assert body.startswith("PnL +8.29") and "trades 2 (win rate 50%)" in body
    page = tmp_path / "daily-2026-12-05.html"
    assert body.endswith(f"page: {page}") and 'id="equity"' in page.read_text()

    now[0] = NEXT_DAY
    recorder.crash = "after"  # sent, then died before writing the marker
    with pytest.raises(Crash):
        await job(bus, recorder, now).tick()
    recorder.crash = ""
    restarted = job(bus, recorder, now)
    assert await restarted.tick() == "audited"  # the notifier's audit says it went out
    assert await job(bus, recorder, now).tick() == "done"
    assert [k for k, _, _ in recorder.sent] == [
        "daily-report-2026-12-05",
        "daily-report-2026-12-06",
    ]
    assert "fills 1" in recorder.sent[1][2]  # the events after 2026-12-05 (daily_day)
    marker = await restarted.marker("2026-12-06")
    assert marker is not None and marker.source == "audit"
    first = await restarted.marker("2026-12-05")
    assert first is not None and (first.source, first.at) == ("sent", AFTER_MIDNIGHT)
    kv = await bus.js.key_value(BUCKET)
    assert sorted(await kv.keys()) == ["2026-12-05", "2026-12-06"]


async def test_the_running_job_sends_once_and_keeps_polling(bus: Bus) -> None:
    await publish_day(bus)
    recorder, now = Recorder(bus), [AFTER_MIDNIGHT]
    runner = asyncio.create_task(job(bus, recorder, now).run(poll_s=0.01, retry_s=0.01))
    try:
        async with asyncio.timeout(20):
            while not recorder.sent:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # many more polls
    finally:
        assert not await end_tasks({runner}, 10), "the job did not end when cancelled"
    assert [k for k, _, _ in recorder.sent] == ["daily-report-2026-12-05"]


def test_a_bad_time_zone_fails_at_start() -> None:
    with pytest.raises(KeelError, match="not an IANA time zone"):
        DailyJob(None, Recorder(None).send, lambda: AFTER_MIDNIGHT, "Nowhere/Land")  # type: ignore[arg-type]
