"""A worker's state rebuilt from the log instead of its snapshot.

The fold covers, per input, what the worker's durable consumer has acknowledged: every
message up to the consumer's ack floor, which the worker had applied and committed. Each one
goes through ``decide`` exactly as live, and the outputs are dropped, because they are
already in the log; nothing is published. What lies above a floor stays with the durable
consumer, which delivers it to the live loop afterwards. A worker with no durable consumer
yet has consumed nothing, so its rebuild is a fresh start.

Merge order. Live, a worker handles its inputs in the order they arrive, and a stream's own
order always holds. The fold takes the inputs in the order the server stored them (the
store time JetStream records with every message, to the nanosecond), each stream in its
sequence order, ties going to the input the role declares first. A message is stored only
after its cause was handled, so nothing comes before its cause. docs/architecture.md
("Rebuilding from the log") states where this can differ from the live arrival order.
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import AsyncIterator, Sequence

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from contracts.codec import DecodeError, decode
from contracts.envelope import Envelope
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import read_until
from services.runtime.decider import Decider
from services.runtime.role import Input, durable_name

IDLE_LIMIT_S = 30.0
"""How long the log may stay silent before the fold reached a floor: then it is missing."""


class Folded(msgspec.Struct, frozen=True):
    """``seqs``: per input stream, the ack floor the fold reached."""

    seqs: dict[str, int]
    processed: int


async def rebuild_state(bus: Bus, worker: str, inputs: Sequence[Input], decider: Decider) -> Folded:
    """Fold ``worker``'s acknowledged inputs into ``decider``, which starts empty."""
    floors = {spec.stream: await _ack_floor(bus, worker, spec.stream) for spec in inputs}
    readers = [_read(bus, spec, floors[spec.stream]) for spec in inputs if floors[spec.stream]]
    processed = 0
    try:
        async for msg in _merged(readers):
            _fold(decider, msg)
            processed += 1
    finally:
        for reader in readers:
            await reader.aclose()
    return Folded({stream: seq for stream, seq in floors.items() if seq}, processed)


async def _ack_floor(bus: Bus, worker: str, stream: str) -> int:
    try:
        info = await bus.js.consumer_info(stream, durable_name(worker, stream))
    except NotFoundError:
        return 0
    return info.ack_floor.stream_seq if info.ack_floor is not None else 0


def _fold(decider: Decider, msg: Msg) -> None:
    """What the live loop does with a message, minus publishing: an undecodable message is
    skipped, and a decider that raises keeps whatever state it left, as it did live (where
    both became dead letters, already in the log)."""
    try:
        envelope = Envelope.from_headers(msg.headers)
        event = decode(msg.data)
    except (DecodeError, ValueError):
        return
    with contextlib.suppress(Exception):
        decider.decide(event, envelope.event_time or event.ts)


def stored_ns(msg: Msg) -> int:
    """When the server stored the message, in ns: the reply subject carries it exactly
    (``msg.metadata.timestamp`` rounds it through a float)."""
    tokens = (msg.reply or "").split(".")
    return int(tokens[7] if len(tokens) == 9 else tokens[9])


async def _merged(readers: list[AsyncIterator[Msg]]) -> AsyncIterator[Msg]:
    """The readers' messages by store time; each reader's own order is kept, and equal
    times go to the reader listed first."""
    heads: list[tuple[int, int, Msg]] = []
    for index, reader in enumerate(readers):
        first = await anext(reader, None)
        if first is not None:
            heads.append((stored_ns(first), index, first))
    heapq.heapify(heads)
    while heads:
        _, index, msg = heapq.heappop(heads)
        yield msg
        following = await anext(readers[index], None)
        if following is not None:
            heapq.heappush(heads, (stored_ns(following), index, following))


async def _read(bus: Bus, spec: Input, floor: int) -> AsyncIterator[Msg]:
    """The input's messages up to ``floor``, from the start of its stream, through an
    ordered consumer (the one kind every worker may create)."""
    info = await bus.js.stream_info(spec.stream)
    if info.state.first_seq > 1:
        raise KeelError(
            f"stream {spec.stream} no longer holds its messages before sequence "
            f"{info.state.first_seq}: the state cannot be rebuilt from the log"
        )
    stalled = (
        f"stream {spec.stream} delivered nothing for {IDLE_LIMIT_S:g} s before sequence "
        f"{floor}: the state cannot be rebuilt from the log"
    )
    async for msg in read_until(
        bus.js,
        spec.stream,
        floor,
        subjects=spec.subjects,
        idle_s=IDLE_LIMIT_S,
        stalled=stalled,
        allow_empty=False,
    ):
        yield msg
