"""Recorded venue: a recorded live session replayed with the venue's recorded answers standing
in for the venue (docs/replay.md, "Recorded venue").

When the config trades venues through a gateway and the data is a recorded stream, no
gateway runs in the replay: the orders of those venues (``VenueOrder``) are outputs, and what
the exchange answered (``VenueAnswer`` on ``venue.answer.<venue>.>``) comes back from the log
with the other inputs the fleet took from outside it (``venue.kill``, operator commands on
``gov.cmd.>``). Each is a top-level input with its own cascade, merged with the market events
by **stored time** (the JetStream timestamp, ties in the order MARKET, VENUE, GOVERNANCE;
each stream keeps its own order). What they cause is delivered at the time the live log
stored the same event (found by its id, which the replay derives as live did), not at the
end of its cause's cascade: a live worker takes its inputs in stored order
(``services/runtime/merge.py``), and a venue answer stored while a bar's signal was on its
way to the order manager reached it before that signal's order. Each recorded input keeps its
recorded envelope, so what it causes gets the ids it got live.

The replay's venue orders are checked against the recorded ``venue.order`` events the
execution worker published, each market's in order: the recorded answers only mean something
for the same orders. Across markets the order is not checked: the live workers take the
signals and orders of different markets at one instant in the order they arrive, which the
log does not fix, and the replay takes them in stored order (docs/replay.md). A difference
stops the run with one line naming the first order that differs.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.codec import encode
from contracts.envelope import Envelope
from contracts.events import Bar, Event
from contracts.subjects import subject_for, subject_matches, symbol_token
from contracts.venue_events import VenueAnswer, VenueOrder
from eventstore.bus import Bus, Stored, read_message
from eventstore.errors import KeelError
from eventstore.streams import STREAM_BY_NAME
from replay.engine import LazyEnvelope, ReplayEngine, Sink, resolve
from replay.market import MARKET_TYPES, DataSource
from services.runtime.merge import stored_ns
from services.runtime.role import Role

INPUT_STREAMS = ("VENUE", "GOVERNANCE")
"""Streams whose events the fleet consumes as inputs from outside it, besides MARKET."""
RANK = {"MARKET": 0, "VENUE": 1, "GOVERNANCE": 2}
OUTPUT_STREAMS = (
    ("SIGNALS", "sig.>"),
    ("ORDERS", "ord.>"),
    ("EXECUTION", "exec.>"),
    ("PORTFOLIO", "pf.>"),
    ("GOVERNANCE", "gov.>"),
    ("VENUE", "venue.>"),
    ("SYSTEM", "sys.status.>"),
)
"""Where the fleet's workers store what they make (and, in VENUE and GOVERNANCE, the inputs
from outside it): the subjects whose stored times order a recorded replay."""
IDLE_S = 0.5


class Recorded(msgspec.Struct, frozen=True):
    """A stored event with when the log stored it and its exact bytes."""

    stored: int
    stream: str
    seq: int
    subject: str
    envelope: Envelope
    event: Event
    producer: str
    data: bytes


class RecordedSession:
    """The inputs of a recorded session in the order the live fleet took them."""

    def __init__(
        self,
        gateways: Sequence[str],
        market: list[Recorded],
        inputs: list[Recorded],
        orders: list[Recorded],
        stored: dict[str, int],
    ) -> None:
        self.gateways = tuple(sorted(gateways))
        self.market = market
        self.inputs = inputs
        self.orders = orders
        self.stored = stored
        """When the live log stored each event the fleet's workers made, by event id."""
        self.bars = sum(1 for r in market if type(r.event) is Bar)
        self.answers = sum(1 for r in inputs if type(r.event) is VenueAnswer)
        self.interval = next((r.event.interval for r in market if type(r.event) is Bar), "")

    def merged(self) -> Iterator[Recorded]:
        """Market events and recorded inputs by stored time; each stream keeps its stored
        order."""
        return heapq.merge(self.market, self.inputs, key=lambda r: (r.stored, RANK[r.stream]))

    def replay(self, engine: ReplayEngine, progress: Callable[[int], None] | None) -> None:
        """Feed the session to ``engine``, each event at its live stored time: an input at
        its own, what it causes at the time live stored the same event (at its cause's when
        the log has no such event: an output nobody stored, or one the replay makes anew,
        which the order check then names). Ties keep the order made."""
        pending: list[tuple[int, int, Event, LazyEnvelope, str]] = []
        made = itertools.count()

        def deliver(event: Event, envelope: LazyEnvelope, subject: str, at: int) -> None:
            for output, child, out_subject in engine.deliver(event, envelope, subject):
                when = max(at, self.stored.get(resolve(child).event_id, at))
                heapq.heappush(pending, (when, next(made), output, child, out_subject))

        def cascade(until: int | None) -> None:
            while pending and (until is None or pending[0][0] <= until):
                at, _, event, envelope, subject = heapq.heappop(pending)
                deliver(event, envelope, subject, at)

        for item in self.merged():
            cascade(item.stored)
            event = item.event
            root = (event,) if item.stream == "MARKET" else item.envelope
            engine.market_events += 1
            deliver(event, root, subject_for(event), item.stored)
            if progress and engine.market_events % 4096 == 0:
                progress(4096)
        cascade(None)
        if progress:
            progress(engine.market_events % 4096)

    def describe(self) -> str:
        """The venue mode, as the run reports it."""
        plural = "s" if len(self.gateways) > 1 else ""
        extra = len(self.inputs) - self.answers
        commands = f", {extra:,} operator commands" if extra else ""
        return (
            f"recorded answers ({self.answers:,} answers of gateway venue{plural} "
            f"{', '.join(self.gateways)}{commands})"
        )


def recorded_inputs(roles: Sequence[Role]) -> tuple[str, ...]:
    """The subjects the fleet consumes from the streams fed from outside it."""
    return tuple(
        subject
        for role in roles
        for spec in role.inputs
        if spec.stream in INPUT_STREAMS
        for subject in spec.subjects
    )


def load_session(
    source: DataSource,
    url: str | None,
    gateways: frozenset[str],
    roles: Sequence[Role],
    windowed: bool,
) -> RecordedSession:
    """A recorded session of ``source`` (a recorded stream) for a config with gateways."""
    if url is None:
        raise KeelError(f"data {source.location!r} is a stream: it needs a NATS server")
    if windowed:
        raise KeelError(
            "a recorded venue replays the whole session: --start/--end would cut orders "
            "from their answers"
        )
    producers = frozenset(role.name for role in roles)
    return asyncio.run(_load(source, url, gateways, recorded_inputs(roles), producers))


async def _load(
    source: DataSource,
    url: str,
    gateways: frozenset[str],
    inputs: tuple[str, ...],
    producers: frozenset[str],
) -> RecordedSession:
    """``producers``: the fleet's workers, whose venue orders the replay makes again (the
    gateway's own, re-placed stops, are not)."""
    subject = "md.>" if source.location in STREAM_BY_NAME else source.location
    token = symbol_token(source.symbol) if source.symbol else None
    orders = tuple(f"venue.order.{name}.>" for name in sorted(gateways))
    bus = await Bus.connect(url, name="replay-source")
    try:
        market = [
            r
            for r in await _read(bus, "MARKET", subject)
            if isinstance(r.event, MARKET_TYPES)
            and (token is None or symbol_token(r.event.symbol) == token)
        ]
        fed: dict[str, list[Recorded]] = {stream: [] for stream in INPUT_STREAMS}
        sent: list[Recorded] = []
        stored: dict[str, int] = {}
        for stream, outputs in OUTPUT_STREAMS:
            for r in await _read(bus, stream, outputs):
                if r.producer not in producers:  # from outside the fleet: an input, if consumed
                    if stream in INPUT_STREAMS and any(
                        subject_matches(p, r.subject) for p in inputs
                    ):
                        fed[stream].append(r)
                    continue
                stored[r.envelope.event_id] = r.stored  # the fleet's own (a playbook's action)
                if stream == "VENUE" and any(subject_matches(p, r.subject) for p in orders):
                    sent.append(r)
    finally:
        await bus.close()
    if not any(type(r.event) is Bar for r in market):
        raise KeelError(f"no bars stored on {subject}" + (f" for {source.symbol}" if token else ""))
    inputs_by_time = list(heapq.merge(*fed.values(), key=lambda r: (r.stored, RANK[r.stream])))
    return RecordedSession(sorted(gateways), market, inputs_by_time, sent, stored)


async def _read(bus: Bus, stream: str, subject: str) -> list[Recorded]:
    """Every decodable event on ``subject`` in ``stream``, in stored order, with its stored
    time (``Bus.read`` does not keep it)."""
    try:
        info = await bus.js.stream_info(stream)
    except NotFoundError:
        return []
    last = info.state.last_seq
    if info.state.messages == 0:
        return []
    inbox: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await bus.js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        cb=inbox.put,
    )
    out: list[Recorded] = []
    try:
        while True:
            try:
                async with asyncio.timeout(IDLE_S):
                    msg = await inbox.get()
            except TimeoutError:
                return out
            item = read_message(msg, stream)
            if isinstance(item, Stored):
                out.append(
                    Recorded(
                        stored_ns(msg),
                        stream,
                        item.seq,
                        item.subject,
                        item.envelope,
                        item.event,
                        item.producer,
                        msg.data,
                    )
                )
            if msg.metadata.sequence.stream >= last:
                return out
    finally:
        await sub.unsubscribe()


class OrderCheck:
    """A sink in front of the run's own: each venue order the replay makes must be the next
    one the session recorded for its market (its subject), byte for byte and under the same
    id."""

    def __init__(self, recorded: list[Recorded], sink: Sink) -> None:
        self._recorded = recorded
        self._pending: dict[str, deque[Recorded]] = {}
        for r in recorded:
            self._pending.setdefault(r.subject, deque()).append(r)
        self._sink = sink
        self.checked = 0

    def __call__(self, subject: str, event: Event, envelope: LazyEnvelope, producer: str) -> None:
        if type(event) is VenueOrder:
            self._check(subject, event, envelope)
        self._sink(subject, event, envelope, producer)

    def _check(self, subject: str, order: VenueOrder, envelope: LazyEnvelope) -> None:
        n = self.checked
        self.checked += 1
        what = f"{order.action} {order.venue_client_id} ({order.venue} {order.symbol})"
        pending = self._pending.get(subject)
        if not pending:
            raise KeelError(
                f"recorded venue: the replay sends venue order {n + 1}, {what}, that the "
                f"session never sent: {UNFIT}"
            )
        want = pending.popleft()
        same = want.data == encode(order) and want.envelope.event_id == resolve(envelope).event_id
        if not same:
            was = want.event
            told = f"{was.action} {was.venue_client_id}" if isinstance(was, VenueOrder) else "?"
            raise KeelError(
                f"recorded venue: venue order {n + 1}, {what}, differs from the recorded one "
                f"(VENUE #{want.seq}, {told}; {_difference(was, order)}): {UNFIT}"
            )

    def finish(self) -> None:
        """After the run: every recorded venue order was made again."""
        if self.checked < len(self._recorded):
            missing = min((q[0] for q in self._pending.values() if q), key=lambda r: r.seq)
            raise KeelError(
                f"recorded venue: the session sent {len(self._recorded):,} venue orders, the "
                f"replay {self.checked:,} (the first missing is VENUE #{missing.seq}): {UNFIT}"
            )


UNFIT = "the recorded answers no longer fit this config or code"


def _difference(was: Event, now: VenueOrder) -> str:
    """What differs, field by field (recorded -> replayed), or that only the cause does."""
    if not isinstance(was, VenueOrder):
        return f"recorded a {type(was).__name__}"
    fields = [
        f"{name} {getattr(was, name)!r} -> {getattr(now, name)!r}"
        for name in now.__struct_fields__
        if getattr(was, name) != getattr(now, name)
    ]
    return ", ".join(fields) if fields else "a different cause (envelope)"
