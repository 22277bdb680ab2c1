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
from contracts.envelope import Envelope, root_envelope
from contracts.events import Event
from contracts.subjects import subject_for, subject_matches
from contracts.system_events import DeadLetter
from services.runtime.decider import handler_dead_letter
from services.runtime.role import Role


def output_dead_letter(worker: str, event: Event, subject: str, exc: Exception) -> DeadLetter:
    """The one dead letter for outputs that cannot be published (a subject that cannot be
    formed): none of them is recorded, as in a live worker and the bus replay, whose letter
    this equals byte for byte (the input's time, subject and bytes)."""
    return DeadLetter(
        ts=event.ts,
        worker=worker,
        subject=subject,
        reason=f"output error: {type(exc).__name__}: {exc}",
        payload=encode(event)[:65_536],
    )


LazyEnvelope = tuple
"""An output's envelope, not yet derived: ``(bar,)`` for a market event, or
``(parent, producer, index, ts)``. Ids are derived only when asked for (the Parquet writer
asks; the hash does not need them), which keeps id hashing off the replay's hot path."""


def resolve(lazy: LazyEnvelope | Envelope) -> Envelope:
    """The envelope a live worker would give the same event."""
    if isinstance(lazy, Envelope):
        return lazy
    if len(lazy) == 1:
        return root_envelope(lazy[0])  # a bar or an external event
    parent, producer, index, ts = lazy
    return resolve(parent).child(producer, index, ts)


Sink = Callable[[str, Event, LazyEnvelope, str], None]
"""Receives every output: (subject, event, envelope, producer)."""


Decide = Callable[[Event, int], Sequence[Event]]
Route = tuple[tuple[str, Decide], ...]
"""The roles an event goes to, in canonical order, as (name, bound ``decide``) pairs."""


class ReplayEngine:
    def __init__(self, roles: Sequence[Role], sink: Sink) -> None:
        self._roles = tuple(roles)
        self._sink = sink
        self._routes: dict[str, Route] = {}
        self.market_events = 0

    def _route(self, subject: str) -> Route:
        route = self._routes.get(subject)
        if route is None:
            route = self._routes[subject] = tuple(
                (role.name, role.decider.decide)
                for role in self._roles
                if any(subject_matches(p, subject) for i in role.inputs for p in i.subjects)
            )
        return route

    def subscribers(self, subject: str) -> tuple[str, ...]:
        """The roles an event on ``subject`` is delivered to, in delivery order."""
        return tuple(name for name, _ in self._route(subject))

    def run(self, market: Iterable[Event]) -> None:
        for event in market:
            self.feed(event)

    def deliver(
        self, event: Event, envelope: LazyEnvelope | Envelope, subject: str
    ) -> Sequence[tuple[Event, LazyEnvelope, str]]:
        """Give one event to its roles and return its consumed outputs, without their
        cascade: for a caller that orders the cascade itself (``recorded_venue.py``)."""
        return self._deliver(event, envelope, subject, None) or ()

    def feed(self, event: Event, root: Envelope | None = None) -> None:
        """Process one input and everything it causes; the clock is each event's time.
        ``root``: a recorded input's own envelope (``recorded_venue.py``); a market or
        external event's is derived from it."""
        self.market_events += 1
        queue = self._deliver(event, (event,) if root is None else root, subject_for(event), None)
        while queue:
            self._deliver(*queue.popleft(), queue)

    def _deliver(
        self,
        event: Event,
        envelope: LazyEnvelope | Envelope,
        subject: str,
        queue: collections.deque[tuple[Event, LazyEnvelope, str]] | None,
    ) -> collections.deque[tuple[Event, LazyEnvelope, str]] | None:
        """Give one event to the roles of its subject; each output is recorded and queued
        (first in, first out) behind what already waits. Returns the queue, created only
        when an output has a consumer: most bars cause nothing that is consumed."""
        routes, sink, now = self._routes, self._sink, event.ts
        route = routes.get(subject)
        for name, decide in self._route(subject) if route is None else route:
            try:
                outputs = decide(event, now)
            except Exception as exc:
                outputs = [handler_dead_letter(name, event, subject, exc)]
            if not outputs:
                continue
            try:
                subjects = [subject_for(output) for output in outputs]
            except Exception as exc:  # e.g. a name that cannot form a subject: a poison pill
                outputs = [output_dead_letter(name, event, subject, exc)]
                subjects = [subject_for(outputs[0])]
            for index, output in enumerate(outputs):
                child = (envelope, name, index, output.ts)
                out_subject = subjects[index]
                sink(out_subject, output, child, name)
                if routes.get(out_subject, True):  # nobody consumes it: nothing to queue
                    if queue is None:
                        queue = collections.deque()
                    queue.append((output, child, out_subject))
        return queue
