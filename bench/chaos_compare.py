"""What a chaos session stored, and how it differs from an uninterrupted run.

Every event carries a deterministic id (``Nats-Msg-Id``, derived from its cause), so the same
event in two runs has the same id. Its content is its subject, its payload bytes and the
envelope headers that derive from the log (causation, correlation, event time); the origin
time header is wall clock and left out.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
from nats.aio.msg import Msg

from contracts.envelope import CAUSATION_ID, CORRELATION_ID, EVENT_TIME, MSG_ID
from contracts.subjects import subject_matches
from eventstore.bus import Bus

CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("bars", "MARKET", "md.>"),
    ("signals", "SIGNALS", "sig.>"),
    ("orders", "ORDERS", "ord.>"),
    ("reports", "EXECUTION", "exec.>"),
    ("positions", "PORTFOLIO", "pf.position.>"),
)
"""(category, stream, subject filter) of the events compared."""
DEAD_LETTERS = ("SYSTEM", "sys.dlq.>")


class Record(msgspec.Struct, frozen=True, array_like=True):
    """One stored event: its id and its content."""

    id: str
    subject: str
    data: bytes
    causation: str
    correlation: str
    event_time: str

    def content(self) -> tuple[str, bytes, str, str, str]:
        return (self.subject, self.data, self.causation, self.correlation, self.event_time)


class Log(msgspec.Struct, frozen=True):
    """The compared events per category, in stream order, and the dead-letter count."""

    records: dict[str, list[Record]]
    dead_letters: int


class Counts(msgspec.Struct, frozen=True):
    """One run against the baseline. ``extra``: ids the baseline does not have and whose
    content is not a baseline event's either (a decision the baseline did not make)."""

    compared: int
    lost: int
    duplicated: int
    differing: int
    extra: int
    dead_letters: int
    examples: list[str] = []

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.differing or self.extra)


async def read_log(bus: Bus, timeout: float = 120.0) -> Log:
    records = {
        name: await _read(bus, stream, pattern, timeout) for name, stream, pattern in CATEGORIES
    }
    dead = await _read(bus, *DEAD_LETTERS, timeout)
    return Log(records, len(dead))


async def _read(bus: Bus, stream: str, pattern: str, timeout: float) -> list[Record]:
    """Every message of ``stream`` matching ``pattern``, read to the stream's last sequence."""
    info = await bus.js.stream_info(stream)
    if not info.state.messages:
        return []
    last = info.state.last_seq
    out: list[Record] = []
    done = asyncio.Event()

    async def take(msg: Msg) -> None:
        if subject_matches(pattern, msg.subject):
            headers = msg.headers or {}
            out.append(
                Record(
                    headers.get(MSG_ID, ""),
                    msg.subject,
                    msg.data,
                    headers.get(CAUSATION_ID, ""),
                    headers.get(CORRELATION_ID, ""),
                    headers.get(EVENT_TIME, ""),
                )
            )
        if msg.metadata.sequence.stream >= last:
            done.set()

    subject = info.config.subjects[0]
    sub = await bus.js.subscribe(subject, stream=stream, ordered_consumer=True, cb=take)
    try:
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.unsubscribe()
    return out


def compare(baseline: Log, run: Log, examples: int = 5) -> Counts:
    """Lost: a baseline id the run lacks. Duplicated: an id stored twice, or a baseline
    event's content stored again under another id. Differing: one id, other content."""
    lost = duplicated = differing = extra = compared = 0
    shown: list[str] = []

    def note(kind: str, category: str, record: Record) -> None:
        if len(shown) < examples:
            shown.append(f"{kind} {category} {record.id} {record.subject}")

    for category, _, _ in CATEGORIES:
        base = {r.id: r for r in baseline.records.get(category, [])}
        base_contents = Counter(r.content() for r in base.values())
        seen: dict[str, Record] = {}
        for record in run.records.get(category, []):
            compared += 1
            if record.id in seen:
                duplicated += 1
                note("duplicated", category, record)
                continue
            seen[record.id] = record
        run_contents = Counter(r.content() for r in seen.values())
        for record in seen.values():
            expected = base.get(record.id)
            if expected is None:
                if run_contents[record.content()] > base_contents[record.content()] > 0:
                    duplicated += 1
                    run_contents[record.content()] -= 1
                    note("duplicated", category, record)
                else:
                    extra += 1
                    note("extra", category, record)
            elif expected.content() != record.content():
                differing += 1
                note("differing", category, record)
        for record in base.values():
            if record.id not in seen:
                lost += 1
                note("lost", category, record)
    return Counts(compared, lost, duplicated, differing, extra, run.dead_letters, shown)


def summary(log: Log) -> dict[str, int]:
    """How many events of each category a log holds, and its dead letters."""
    return {
        **{name: len(log.records.get(name, [])) for name, _, _ in CATEGORIES},
        "dead_letters": log.dead_letters,
    }
