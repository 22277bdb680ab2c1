"""Reading one day's report from the log: the thin I/O adapter around ``DailyFold``.

Every stream is read from its start up to the end it had when its read began (through the
server-side subject filters below), because cumulative figures need the last value before
the day and round trips need their opening fills. ``SYSTEM`` keeps seven days, so dead
letters and status changes of older days are gone from it.
"""

from __future__ import annotations

from nats.js.errors import NotFoundError

from contracts.events import Instrument
from eventstore.bus import Bus, Stored, read_message
from eventstore.log_reader import last_per_subject, read_until
from services.reports.daily import DailyFold, DailyReport, DayWindow

IDLE_S = 10.0
"""A stream that delivers nothing this long before the end it had when the read began."""

SUBJECTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PORTFOLIO", ("pf.equity", "pf.pnl.>", "pf.position.>")),
    ("EXECUTION", ("exec.report.>",)),
    ("ORDERS", ("ord.alert.>",)),
    ("SYSTEM", ("sys.status.>", "sys.dlq.>")),
    ("GOVERNANCE", ("gov.playbook.>", "gov.cmd.>")),
    ("VENUE", ("venue.recon.>", "venue.status.>")),
)
"""What the report folds, per stream."""


async def read_day(bus: Bus, window: DayWindow) -> DailyReport:
    fold = DailyFold(window)
    for item in await last_per_subject(bus, "MARKET", "md.instrument.>"):
        if isinstance(item.event, Instrument):
            fold.observe(item.event)
    for stream, subjects in SUBJECTS:
        try:
            end = (await bus.js.stream_info(stream)).state.last_seq
        except NotFoundError:
            continue
        if not end:
            continue
        stalled = f"reading {', '.join(subjects)} from {stream}: the server stopped delivering"
        async for msg in read_until(
            bus.js, stream, end, subjects=subjects, idle_s=IDLE_S, stalled=stalled
        ):
            item = read_message(msg, stream)
            if isinstance(item, Stored):
                fold.observe(item.event)
    return fold.report()
