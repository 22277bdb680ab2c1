"""Reading a stream's stored events without a durable consumer: the last per subject, those
since a time, the last N of a subject filter, the last one of a subject, and the event time
of one stored message.

Every read is an ordered consumer (unnamed, ephemeral), which the read-only users of
``nats.conf`` may create; it stops once it has caught up with the stream, so a read returns
what was stored when it began and never waits on new messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.envelope import Envelope
from eventstore.bus import READ_BUFFER, Bus, Stored, read_message
from eventstore.errors import KeelError

READ_TIMEOUT_S = 10.0
"""A read that has not caught up by then (a flood of new messages) returns what it has."""
PROBE_EXPIRY_S = 2.0
"""The counting consumers of ``tail`` expire this long after they were made."""


async def read_caught_up(
    bus: Bus, stream: str, filter_subject: str, policy: DeliverPolicy, **options: object
) -> list[Stored]:
    """What an ordered consumer delivers until it has caught up with the stream (a message
    with nothing pending after it); undecodable messages are left out. The consumer's info
    tells an empty result apart without waiting on a timeout."""
    inbox: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await bus.js.subscribe(
        filter_subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=policy,
        config=ConsumerConfig(**options),
        cb=inbox.put,
    )
    out: list[Stored] = []
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        if not info.num_pending and not delivered:
            return out
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    msg = await inbox.get()
            except TimeoutError:
                return out  # a flood that never lets it catch up: what was read so far
            item = read_message(msg, stream)
            if isinstance(item, Stored):
                out.append(item)
            if not msg.metadata.num_pending:
                return out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def last_per_subject(bus: Bus, stream: str, filter_subject: str) -> list[Stored]:
    """The last stored event of every subject matching the filter."""
    return await read_caught_up(bus, stream, filter_subject, DeliverPolicy.LAST_PER_SUBJECT)


async def since(bus: Bus, stream: str, filter_subject: str, start_ns: int) -> list[Stored]:
    """Events matching the filter stored at or after ``start_ns`` (the server's store time)."""
    start = datetime.fromtimestamp(start_ns / 1e9, UTC).isoformat()
    return await read_caught_up(
        bus, stream, filter_subject, DeliverPolicy.BY_START_TIME, opt_start_time=start
    )


async def _matching_from(bus: Bus, stream: str, filter_subject: str, seq: int) -> int:
    """How many messages match from ``seq`` on, counted by the server when it creates an
    unnamed pull consumer that is never pulled; it expires by itself (a read-only user may
    not delete consumers)."""
    config = ConsumerConfig(
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=seq,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=PROBE_EXPIRY_S,
        mem_storage=True,
    )
    return (await bus.js.add_consumer(stream, config)).num_pending or 0


async def tail(bus: Bus, stream: str, filter_subject: str, n: int) -> list[Stored]:
    """The last ``n`` messages matching a filter, oldest first. When more than ``n`` match,
    a binary search over the start sequence (one consumer probe per step, the server
    counting the matches) finds where the last ``n`` begin, so a long history is not read."""
    state = (await bus.js.stream_info(stream)).state
    if not state.messages or n <= 0:
        return []
    first, last = state.first_seq, state.last_seq
    matching = await _matching_from(bus, stream, filter_subject, first)
    if not matching:
        return []
    if matching > n:
        lo, hi = first, last + 1  # pending(lo) > n ... pending(hi) == 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await _matching_from(bus, stream, filter_subject, mid) >= n:
                lo = mid
            else:
                hi = mid
        first = lo
    items = await read_caught_up(
        bus, stream, filter_subject, DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first
    )
    return items[-n:]


async def last_or_none(bus: Bus, stream: str, subject: str) -> Stored | None:
    """The last event on one subject; None when there is none or it does not decode."""
    try:
        return await bus.last_event(stream, subject)
    except (NotFoundError, ValueError, msgspec.DecodeError):
        return None


async def event_time_at(bus: Bus, stream: str, seq: int) -> int | None:
    """The event time in the headers of the message at ``seq``; None when they hold none."""
    raw = await bus.js.get_msg(stream, seq)
    try:
        return Envelope.from_headers(raw.headers).event_time
    except ValueError:
        return None


async def read_until(
    js: JetStreamContext,
    stream: str,
    end_seq: int,
    *,
    subjects: Sequence[str] = (),
    idle_s: float,
    stalled: str,
    allow_empty: bool = True,
) -> AsyncIterator[Msg]:
    """Every message of ``stream`` (through ``subjects``, else all of them) up to sequence
    ``end_seq``, in order, through an ordered consumer. A stream that delivers nothing for
    ``idle_s`` before that is a ``KeelError`` saying ``stalled``: what was asked for is
    stored, so silence means the server is not delivering it; with ``allow_empty=False``
    so is finding nothing at all."""
    inbox: asyncio.Queue[Msg] = asyncio.Queue(maxsize=READ_BUFFER)
    config = ConsumerConfig(filter_subjects=list(subjects)) if subjects else ConsumerConfig()
    sub = await js.subscribe(
        subjects[0] if subjects else ">",
        stream=stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        config=config,
        cb=inbox.put,
    )
    try:
        info = await sub.consumer_info()
        if not info.num_pending and not (info.delivered and info.delivered.consumer_seq):
            if allow_empty:
                return
            raise KeelError(stalled)
        while True:
            try:
                async with asyncio.timeout(idle_s):
                    msg = await inbox.get()
            except TimeoutError:
                raise KeelError(stalled) from None
            seq = msg.metadata.sequence.stream
            if seq > end_seq:
                return
            yield msg
            if seq >= end_seq or not msg.metadata.num_pending:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
