"""The contract between pure decision logic and the runtimes that feed it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Protocol

from contracts.codec import encode
from contracts.events import Event
from contracts.system_events import DeadLetter


class Decider(Protocol):
    """(state, event, clock) -> output events; no I/O, no wall clock.

    ``now`` is the input's event time: live workers and the replay engine pass the same
    value, which is what makes a replay reproduce a live session.

    ``snapshot_version`` names the layout of ``snapshot()``'s bytes: raise it whenever that
    layout or its meaning changes, and a worker holding an older snapshot stops and asks
    for a rebuild from the log instead of misreading it (docs/architecture.md, "Schema
    evolution").
    """

    snapshot_version: ClassVar[int]

    def decide(self, event: Event, now: int) -> Sequence[Event]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


def handler_dead_letter(worker: str, event: Event, subject: str, exc: Exception) -> DeadLetter:
    """The dead letter for a decider that raised, the same in every runtime that replays
    (it depends on the event only, so replays agree byte for byte)."""
    return DeadLetter(
        ts=event.ts,
        worker=worker,
        subject=subject,
        reason=f"handler error: {type(exc).__name__}: {exc}",
        payload=encode(event),
    )
