"""The replay plan: which cascade events each worker handles after which market event.

The in-process engine defines the canonical processing order (docs/replay.md): a market
event, then its whole cascade first-in first-out, each event delivered to its subscribers in
the fleet's order. Outputs reach the engine's sink in exactly that queue order, so the
events a role receives inside one cascade are the sink's outputs whose subject the role
subscribes to, in sink order. A bus replay runs the engine alongside the workers to compute
this, ships it on the market frames, and each worker follows it: it never needs barriers or
watermarks, only the next event its plan names. The workers' outputs are still their own:
a worker that decides differently sends events with other ids or other bytes, which shows
up as a planned event that never comes or as a different result hash.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from contracts.envelope import Envelope
from contracts.events import Event
from eventstore.frames import PlanStep
from replay.engine import LazyEnvelope, ReplayEngine, resolve
from services.runtime.role import Role


class ReplayPlanner:
    """Feeds market events through a private in-process engine and reports, per market
    event, the cascade ids each role will receive and how many outputs each role makes."""

    def __init__(self, roles: Sequence[Role]) -> None:
        self._outputs: list[tuple[str, LazyEnvelope, str]] = []
        self._engine = ReplayEngine(roles, self._collect)
        self.outputs = Counter[str]()

    def _collect(self, subject: str, _event: Event, envelope: LazyEnvelope, producer: str) -> None:
        self._outputs.append((subject, envelope, producer))

    def plan_frame(
        self, bars: Sequence[Event], roots: Sequence[Envelope | None] = ()
    ) -> dict[str, list[PlanStep]]:
        """Run one frame's market events; the steps each role follows after each of them.
        ``roots``: each event's recorded envelope, or None (``ReplayEngine.feed``)."""
        steps: dict[str, list[PlanStep]] = {}
        for index, bar in enumerate(bars):
            self._outputs.clear()
            self._engine.feed(bar, roots[index] if roots else None)
            due: dict[str, list[str]] = {}
            for subject, envelope, producer in self._outputs:
                self.outputs[producer] += 1
                for name in self._engine.subscribers(subject):
                    due.setdefault(name, []).append(resolve(envelope).event_id)
            for name, ids in due.items():
                steps.setdefault(name, []).append(PlanStep(index, ids))
        return steps
