"""In-process replay: the fleet's roles driven through an in-memory ordered bus.

The same deciders the live workers run, wired by the same input subjects, fed market events
in event-time order with a virtual clock (each input's event time). No sockets, no wall
clock, no threads.

Processing order (the deterministic merge):
1. market events are taken one at a time, in event-time order (ties: source order);
2. each event's whole causal cascade is processed before the next market event starts;
3. inside a cascade, events are handled first-in first-out, and each event is delivered
   to the roles that subscribe to its subject in the fleet's canonical order: strategies
   as declared, then risk, execution, portfolio.
A worker therefore always handles a bar before anything the bar caused, which is the same
rule the live workers follow in lockstep and bus replay (see docs/replay.md).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable, Sequence

from contracts.codec import encode
from contracts.envelope import Envelope, bar_envelope
from contracts.events import Bar, DeadLetter, Event
from contracts.subjects import subject_for, subject_matches
from services.runtime.role import Role

Sink = Callable[[str, Event, Envelope, str], None]
"""Receives every output: (subject, event, envelope, producer)."""


class ReplayEngine:
    def __init__(self, roles: Sequence[Role], sink: Sink) -> None:
        self._roles = tuple(roles)
        self._sink = sink
        self._routes: dict[str, tuple[Role, ...]] = {}
        self.market_events = 0

    def _route(self, subject: str) -> tuple[Role, ...]:
        roles = self._routes.get(subject)
        if roles is None:
            roles = tuple(
                role
                for role in self._roles
                if any(subject_matches(p, subject) for i in role.inputs for p in i.subjects)
            )
            self._routes[subject] = roles
        return roles

    def run(self, market: Iterable[Bar]) -> None:
        for bar in market:
            self.feed(bar)

    def feed(self, bar: Bar) -> None:
        """Process one market event and everything it causes."""
        self.market_events += 1
        queue: collections.deque[tuple[Event, Envelope, str]] = collections.deque()
        queue.append((bar, bar_envelope(bar), subject_for(bar)))
        while queue:
            event, envelope, subject = queue.popleft()
            for role in self._route(subject):
                for index, output in enumerate(self._decide(role, event, envelope, subject)):
                    child = envelope.child(role.name, index, output.ts)
                    out_subject = subject_for(output)
                    self._sink(out_subject, output, child, role.name)
                    queue.append((output, child, out_subject))

    @staticmethod
    def _decide(role: Role, event: Event, envelope: Envelope, subject: str) -> Sequence[Event]:
        """A decider that raises gives a dead letter, as in a live worker."""
        try:
            return role.decider.decide(event, envelope.event_time)
        except Exception as exc:
            return [
                DeadLetter(
                    ts=envelope.event_time,
                    worker=role.name,
                    subject=subject,
                    reason=f"handler error: {type(exc).__name__}: {exc}",
                    payload=encode(event),
                )
            ]
