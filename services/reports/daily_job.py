"""The daily report job: after local midnight, the previous day's report, sent once.

Runs inside the notifier worker, which hands it its ``send(key, title, body) -> bool``
(True once a destination took the message). Exactly once across restarts:

* the KV bucket ``KEEL_DAILY_REPORTS`` holds one marker per day (key ``YYYY-MM-DD``),
  created only after a successful send, so a crash before or during the send leaves the
  day unmarked and the next start sends it;
* a crash after the send but before the marker is covered by the notifier's audit: a
  ``Notification`` on ``sys.notify.sent`` with the report's key means the message went
  out, so the job writes the marker without sending again.

Only the last complete day is produced (a fleet down for days does not send a backlog);
any day can be produced again on demand with ``keel report daily --date``. The job
publishes nothing itself; the notifier's delivery publishes the audit event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal

import msgspec
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from contracts.notify_events import Notification
from eventstore.bus import Bus
from eventstore.log_reader import since
from services.reports.daily import NS, DayWindow, day_window, previous_day
from services.reports.daily_html import write_page
from services.reports.daily_read import read_day
from services.reports.daily_text import body, title

__all__ = ["BUCKET", "DailyJob", "DailyMarker", "Outcome", "Send", "report_key"]

BUCKET = "KEEL_DAILY_REPORTS"
POLL_S = 60.0
"""How often the job looks whether a day is due (a KV read when it is already done)."""
RETRY_S = 300.0
"""The wait after a failed send or an unreachable log."""
AUDIT_LOOKBACK_NS = 3_600 * NS
"""The audit is searched from this long before the day's end (store time)."""

Send = Callable[[str, str, str], Awaitable[bool]]
Outcome = Literal["done", "audited", "sent", "failed"]

log = logging.getLogger(__name__)


class DailyMarker(msgspec.Struct, frozen=True):
    """A day's report went out: ``source`` says whether this job saw the send succeed
    (``sent``) or found the notifier's audit of it after a restart (``audit``)."""

    day: str
    timezone: str
    key: str
    at: int
    source: Literal["sent", "audit"]


def report_key(day: str) -> str:
    """The alert key of a day's report (the notifier's de-duplication and audit key)."""
    return f"daily-report-{day}"


class DailyJob:
    def __init__(
        self,
        bus: Bus,
        send: Send,
        clock: Callable[[], int],
        timezone: str = "UTC",
        html_dir: Path | None = None,
    ) -> None:
        day_window(previous_day(clock(), timezone), timezone)  # a bad zone fails at start
        self.bus, self.send, self.clock = bus, send, clock
        self.timezone, self.html_dir = timezone, html_dir
        self._kv: KeyValue | None = None

    async def bucket(self) -> KeyValue:
        if self._kv is None:
            js = self.bus.js
            try:
                self._kv = await js.key_value(BUCKET)
            except (BucketNotFoundError, NotFoundError):
                config = KeyValueConfig(
                    bucket=BUCKET, description="Keel daily reports sent", history=1
                )
                self._kv = await js.create_key_value(config=config)
        return self._kv

    async def marker(self, day: str) -> DailyMarker | None:
        kv = await self.bucket()
        try:
            entry = await kv.get(day)
        except (KeyNotFoundError, NotFoundError):
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=DailyMarker)

    async def tick(self) -> Outcome:
        """Produce the last complete day's report unless it already went out."""
        window = day_window(previous_day(self.clock(), self.timezone), self.timezone)
        if await self.marker(window.day) is not None:
            return "done"
        key = report_key(window.day)
        if await self._audited(window, key):
            await self._mark(window, key, "audit")
            return "audited"
        report = await read_day(self.bus, window)
        text = body(report)
        if self.html_dir is not None:
            path = write_page(report, self.html_dir / f"daily-{window.day}.html")
            text = f"{text}\npage: {path}"
        if not await self.send(key, title(report), text):
            return "failed"
        await self._mark(window, key, "sent")
        return "sent"

    async def run(self, poll_s: float = POLL_S, retry_s: float = RETRY_S) -> None:
        """Tick for ever: every ``poll_s``, or ``retry_s`` after a failure."""
        while True:
            try:
                outcome = await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the log away or refusing: try again later
                log.warning("daily report: %s", exc)
                outcome = "failed"
            await asyncio.sleep(retry_s if outcome == "failed" else poll_s)

    async def _audited(self, window: DayWindow, key: str) -> bool:
        try:
            items = await since(
                self.bus, "SYSTEM", "sys.notify.sent", window.end - AUDIT_LOOKBACK_NS
            )
        except NotFoundError:
            return False
        return any(
            isinstance(i.event, Notification) and i.event.key == key and i.event.outcome == "sent"
            for i in items
        )

    async def _mark(self, window: DayWindow, key: str, source: Literal["sent", "audit"]) -> None:
        marker = DailyMarker(window.day, window.timezone, key, self.clock(), source)
        kv = await self.bucket()
        try:
            await kv.create(window.day, msgspec.json.encode(marker))
        except KeyWrongLastSequenceError:
            return  # another copy of the job marked it first
