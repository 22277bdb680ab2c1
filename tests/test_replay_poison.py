"""Issue 13, defect 2 in the backtest: outputs that cannot form a subject are a dead letter.

A strategy whose signal names a strategy that cannot form a subject (``"evil strat"``) used
to crash the in-process replay, which called ``subject_for`` on every output outside any
guard. Now, as in a live worker and a bus replay, none of that decision's outputs is
recorded, one ``DeadLetter`` says why, and the replay carries on, deterministically and
with the same letter, byte for byte, as the bus replay's worker gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from contracts.codec import decode, encode
from contracts.envelope import root_envelope
from contracts.events import Bar, Event, Signal
from contracts.subjects import subject_for
from contracts.system_events import DeadLetter, SystemStatus
from eventstore.frames import FramedEvent
from replay.engine import ReplayEngine, resolve
from services.runtime.replay_worker import ReplayWorker
from services.runtime.role import Input, Role
from tests import scenario


class EvilSignal:
    """A strategy whose answer to the second bar names a strategy that cannot form a
    subject, next to an output that could: neither may be recorded."""

    snapshot_version: ClassVar[int] = 1

    def __init__(self) -> None:
        self.seen = 0

    def decide(self, event: Event, now: int) -> Sequence[Event]:
        assert isinstance(event, Bar)
        self.seen += 1
        status = SystemStatus(ts=now, status="RUNNING", reason=str(self.seen), source="probe")
        if self.seen == 2:
            evil = Signal(
                ts=now,
                strategy="evil strat",
                venue=event.venue,
                symbol=event.symbol,
                target_position=1.0,
            )
            return [status, evil]
        return [status]

    def snapshot(self) -> bytes:
        return str(self.seen).encode()

    def restore(self, data: bytes) -> None:
        self.seen = int(data)


def role() -> Role:
    return Role("probe", (Input("MARKET", ("md.bar.>",)),), EvilSignal())


def in_process(bars: list[Bar]) -> list[tuple[str, bytes, str, str]]:
    recorded: list[tuple[str, bytes, str, str]] = []

    def sink(subject: str, event: Event, lazy: tuple, producer: str) -> None:
        recorded.append((subject, encode(event), resolve(lazy).event_id, producer))

    ReplayEngine([role()], sink).run(bars)
    return recorded


def test_an_unpublishable_output_is_one_dead_letter_and_the_replay_carries_on() -> None:
    bars = scenario.bars()[:3]
    recorded = in_process(bars)
    events = [decode(data) for _, data, _, _ in recorded]
    [letter] = [e for e in events if isinstance(e, DeadLetter)]
    assert letter.worker == "probe"
    assert letter.subject == subject_for(bars[1])
    assert letter.reason.startswith("output error: SubjectError")
    assert "evil strat" in letter.reason
    assert letter.payload == encode(bars[1])
    assert letter.ts == bars[1].ts
    assert not any(isinstance(e, Signal) for e in events)
    statuses = [e.reason for e in events if isinstance(e, SystemStatus)]
    assert statuses == ["1", "3"]  # nothing of the second bar's outputs
    assert in_process(bars) == recorded  # deterministic


def test_the_bus_replay_worker_gives_the_same_dead_letter() -> None:
    bars = scenario.bars()[:3]
    expected = [(s, data, eid) for s, data, eid, _ in in_process(bars)]

    worker = ReplayWorker(role(), "test")
    for bar in bars:
        worker._apply(FramedEvent(subject_for(bar), root_envelope(bar), "", encode(bar)))
    framed = sorted(
        (f for _, box in worker._outbox for f in box), key=lambda f: f.envelope.event_time
    )
    on_bus = [(f.subject, f.data, f.envelope.event_id) for f in framed]
    assert sorted(on_bus) == sorted(expected)
