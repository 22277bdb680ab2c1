"""Recording a run's output events: the result hash, counts, the equity curve, fills, risk
events, and (optionally) every event into Parquet, streamed in row groups.

``result_hash`` is sha256 over the producers in the fleet's canonical order, each
contributing the sha256 of its own outputs in the order it produced them
(``msgpack([subject, event])`` each; replay/digest.py). Dead letters are counted but not
hashed: they report bugs. A producer's output order is fixed by the inputs it saw, whereas
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
    EquitySnapshot,
    Event,
    ExecutionReport,
    OrderCommand,
    RiskAlert,
    RiskDecision,
    Signal,
)
from contracts.system_events import DeadLetter, SystemStatus
from replay.digest import ProducerDigest
from replay.engine import LazyEnvelope, resolve
from replay.metrics import TradeBook

ROW_GROUP = 65_536

EQUITY_SCHEMA = pa.schema(
    [("ts", pa.int64()), ("equity", pa.float64()), ("gross_exposure", pa.float64())]
)

TRADE_SCHEMA = pa.schema(
    [
        ("strategy", pa.string()),
        ("venue", pa.string()),
        ("symbol", pa.string()),
        ("side", pa.string()),
        ("qty", pa.float64()),
        ("entry_ts", pa.int64()),
        ("exit_ts", pa.int64()),
        ("entry_price", pa.float64()),
        ("exit_price", pa.float64()),
        ("pnl", pa.float64()),
        ("fees", pa.float64()),
    ]
)
"""One row per round trip (replay/metrics.py ``Trade``)."""

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
    """Why trading was refused, stopped or resumed, in a form a person reads: ISO time,
    rule, action (``reject``, a ``RiskAlert``'s action, or the status risk published in
    lower case: ``halted``, ``safe_mode``, ``degraded``, ``running``), detail."""

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


class RunRecorder:
    """The sink of a replay: ``record`` every output event."""

    def __init__(self, producers: list[str], out_dir: Path | None = None) -> None:
        """With ``out_dir``, every event goes to ``events.parquet`` and the curve to
        ``equity.parquet`` as the run goes; in memory stay only what the metrics need: the
        equity of each point (8 bytes) and whether it held exposure (1 byte), each closed
        trade's pnl and each fill's fee; the fills themselves are folded into round trips
        as they come (``TradeBook``)."""
        self._digests = {name: ProducerDigest() for name in producers}
        self.counts = Counts()
        self.equity = array.array("d")
        self.exposed = array.array("B")
        self._equity_append = self.equity.append
        self._exposed_append = self.exposed.append
        self.trade_pnl = array.array("d")
        self.fees = array.array("d")
        self._book = TradeBook()
        self.risk_events: list[RiskEvent] = []
        self._point: EquitySnapshot | None = None  # the last snapshot of the current ts
        self._seq = 0  # rows written to events.parquet
        self._writer = self._curve_writer = self._trade_writer = None
        if out_dir is not None:
            self._writer = pq.ParquetWriter(out_dir / "events.parquet", EVENT_SCHEMA)
            self._curve_writer = pq.ParquetWriter(out_dir / "equity.parquet", EQUITY_SCHEMA)
            self._trade_writer = pq.ParquetWriter(out_dir / "trades.parquet", TRADE_SCHEMA)
        self._rows: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}
        self._curve_rows: dict[str, list] = {name: [] for name in EQUITY_SCHEMA.names}
        self._trade_rows: dict[str, list] = {name: [] for name in TRADE_SCHEMA.names}

    def record(
        self, subject: str, event: Event, envelope: LazyEnvelope | Envelope, producer: str
    ) -> None:
        """Record one output (the sink of a replay: hand over this bound method)."""
        if type(event) is EquitySnapshot:  # one per bar: _add_point inlined
            point = self._point
            if point is not None and point.ts != event.ts:
                self._equity_append(point.equity)
                self._exposed_append(point.gross_exposure > 0)
                if self._curve_writer is not None:
                    self._write_point(point)
            self._point = event
        elif type(event) is DeadLetter:  # a bug report, not a result: stored, not hashed
            self.counts.dead_letters += 1
            if self._writer is not None:
                self._append_row(subject, event, resolve(envelope), producer)
            return
        else:
            self._count(event)
        try:
            self._digests[producer].add(subject, event)
        except KeyError:
            self._digests[producer] = ProducerDigest()
            self._digests[producer].add(subject, event)
        if self._writer is not None:
            self._append_row(subject, event, resolve(envelope), producer)

    def _count(self, event: Event) -> None:
        """Counts, fees, trades and risk events of the outputs other than snapshots."""
        counts = self.counts
        if isinstance(event, Signal):
            counts.signals += 1
        elif isinstance(event, OrderCommand):
            counts.orders += 1
        elif isinstance(event, ExecutionReport):
            if event.fill_qty > 0:
                counts.fills += 1
                self.fees.append(event.fee)
                for trade in self._book.add(event):
                    self.trade_pnl.append(trade.pnl)
                    if self._trade_writer is not None:
                        for name in TRADE_SCHEMA.names:
                            self._trade_rows[name].append(getattr(trade, name))
        elif isinstance(event, RiskDecision) and not event.approved:
            counts.rejections += 1
            detail = f"{event.strategy} {event.symbol}: {event.reason}"
            self.risk_events.append(RiskEvent(iso(event.ts), event.rule, "reject", detail))
        elif isinstance(event, RiskAlert):
            self.risk_events.append(
                RiskEvent(iso(event.ts), event.rule, event.action, event.detail)
            )
        elif isinstance(event, SystemStatus):
            rule, action = event.rule or "status", event.status.lower()
            self.risk_events.append(RiskEvent(iso(event.ts), rule, action, event.reason))

    def _append_row(self, subject: str, event: Event, envelope: Envelope, producer: str) -> None:
        rows = self._rows
        self._seq += 1
        rows["seq"].append(self._seq)
        rows["producer"].append(producer)
        rows["subject"].append(subject)
        rows["type"].append(type(event).__name__)
        rows["ts"].append(event.ts)
        rows["id"].append(envelope.event_id)
        rows["causation_id"].append(envelope.causation_id)
        rows["correlation_id"].append(envelope.correlation_id)
        rows["payload"].append(encode(event).decode())
        if len(rows["seq"]) >= ROW_GROUP:
            self._flush()

    def _add_point(self, point: EquitySnapshot) -> None:
        """One point of the curve: the last snapshot at its timestamp."""
        self.equity.append(point.equity)
        self.exposed.append(point.gross_exposure > 0)
        if self._curve_writer is not None:
            self._write_point(point)

    def _write_point(self, point: EquitySnapshot) -> None:
        rows = self._curve_rows
        rows["ts"].append(point.ts)
        rows["equity"].append(point.equity)
        rows["gross_exposure"].append(point.gross_exposure)
        if len(rows["ts"]) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        for writer, rows, schema in (
            (self._writer, self._rows, EVENT_SCHEMA),
            (self._curve_writer, self._curve_rows, EQUITY_SCHEMA),
            (self._trade_writer, self._trade_rows, TRADE_SCHEMA),
        ):
            if writer is not None and next(iter(rows.values())):
                writer.write_table(pa.table(rows, schema=schema))
                for column in rows.values():
                    column.clear()

    def close(self) -> None:
        if self._point is not None:
            self._add_point(self._point)
            self._point = None
        self._flush()
        for writer in (self._writer, self._curve_writer, self._trade_writer):
            if writer is not None:
                writer.close()
        self._writer = self._curve_writer = self._trade_writer = None

    def result_hash(self) -> str:
        total = hashlib.sha256()
        for name, digest in self._digests.items():
            total.update(name.encode())
            total.update(b"=")
            total.update(digest.hexdigest().encode())
            total.update(b"\n")
        return total.hexdigest()
