"""Recording a run's output events: the result hash, counts, the equity curve, fills, risk
events, and (optionally) every event into Parquet, streamed in row groups.

``result_hash`` is sha256 over the producers in the fleet's canonical order, each
contributing the sha256 of its own outputs in the order it produced them (subject, newline,
JSON payload, newline). Dead letters are counted but not hashed: they report bugs. A producer's output order is fixed by the inputs it saw, whereas
the interleaving of different producers on different streams is not, so this hash is the
same for an in-process replay and for real workers on the bus.
"""

from __future__ import annotations

import array
import hashlib
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.codec import encode
from contracts.envelope import Envelope
from contracts.events import (
    DeadLetter,
    EquitySnapshot,
    Event,
    ExecutionReport,
    OrderCommand,
    RiskDecision,
    Signal,
)
from replay.engine import LazyEnvelope, resolve

ROW_GROUP = 65_536

EVENT_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("producer", pa.string()),
        ("subject", pa.string()),
        ("type", pa.string()),
        ("ts", pa.int64()),
        ("id", pa.string()),
        ("causation_id", pa.string()),
        ("correlation_id", pa.string()),
        ("payload", pa.string()),
    ]
)


class RiskEvent(msgspec.Struct, frozen=True):
    """Why trading was refused, in a form a person reads: ISO time, rule, action, detail."""

    ts: str
    rule: str
    action: str
    detail: str


def iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat().replace("+00:00", "Z")


class Counts(msgspec.Struct):
    signals: int = 0
    orders: int = 0
    fills: int = 0
    rejections: int = 0
    dead_letters: int = 0
    events: int = 0


class RunRecorder:
    """The sink of a replay: call it with every output event."""

    def __init__(self, producers: list[str], events_path: Path | None = None) -> None:
        self._hashes = {name: hashlib.sha256() for name in producers}
        self.counts = Counts()
        self.equity_ts = array.array("q")
        self.equity = array.array("d")
        self.exposure = array.array("d")
        self.fills: list[ExecutionReport] = []
        self.risk_events: list[RiskEvent] = []
        self._writer = pq.ParquetWriter(events_path, EVENT_SCHEMA) if events_path else None
        self._rows: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}

    def __call__(
        self, subject: str, event: Event, envelope: LazyEnvelope | Envelope, producer: str
    ) -> None:
        payload = encode(event)
        if isinstance(event, DeadLetter):  # a bug report, not a result: stored, not hashed
            self.counts.dead_letters += 1
            if self._writer is not None:
                self._append_row(subject, event, resolve(envelope), producer, payload)
            return
        digest = self._hashes.get(producer)
        if digest is None:
            digest = self._hashes[producer] = hashlib.sha256()
        digest.update(b"%s\n%s\n" % (subject.encode(), payload))
        self._count(event)
        if self._writer is not None:
            self._append_row(subject, event, resolve(envelope), producer, payload)

    def _count(self, event: Event) -> None:
        counts = self.counts
        counts.events += 1
        if isinstance(event, EquitySnapshot):
            if self.equity_ts and self.equity_ts[-1] == event.ts:
                self.equity[-1] = event.equity
                self.exposure[-1] = event.gross_exposure
            else:
                self.equity_ts.append(event.ts)
                self.equity.append(event.equity)
                self.exposure.append(event.gross_exposure)
        elif isinstance(event, Signal):
            counts.signals += 1
        elif isinstance(event, OrderCommand):
            counts.orders += 1
        elif isinstance(event, ExecutionReport):
            if event.fill_qty > 0:
                counts.fills += 1
                self.fills.append(event)
        elif isinstance(event, RiskDecision) and not event.approved:
            counts.rejections += 1
            detail = f"{event.strategy} {event.symbol}: {event.reason}"
            self.risk_events.append(RiskEvent(iso(event.ts), event.rule, "reject", detail))

    def _append_row(
        self, subject: str, event: Event, envelope: Envelope, producer: str, payload: bytes
    ) -> None:
        rows = self._rows
        rows["seq"].append(self.counts.events)
        rows["producer"].append(producer)
        rows["subject"].append(subject)
        rows["type"].append(type(event).__name__)
        rows["ts"].append(event.ts)
        rows["id"].append(envelope.event_id)
        rows["causation_id"].append(envelope.causation_id)
        rows["correlation_id"].append(envelope.correlation_id)
        rows["payload"].append(payload.decode())
        if len(rows["seq"]) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._writer is not None and self._rows["seq"]:
            self._writer.write_table(pa.table(self._rows, schema=EVENT_SCHEMA))
            for column in self._rows.values():
                column.clear()

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def result_hash(self) -> str:
        total = hashlib.sha256()
        for name, digest in self._hashes.items():
            total.update(name.encode())
            total.update(b"=")
            total.update(digest.hexdigest().encode())
            total.update(b"\n")
        return total.hexdigest()
