"""The contract between pure decision logic and the runtimes that feed it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from contracts.events import Event


class Decider(Protocol):
    """(state, event, clock) -> output events; no I/O, no wall clock.

    ``now`` is the input's event time: live workers and the replay engine pass the same
    value, which is what makes a replay reproduce a live session.
    """

    def decide(self, event: Event, now: int) -> Sequence[Event]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...
