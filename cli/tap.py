"""``keel tap``: decoded, typed events from any subject pattern, historical then live."""

from __future__ import annotations

import collections
import sys
from datetime import datetime

import msgspec

from cli.console import console
from contracts.envelope import trace_id_of
from contracts.events import Bar, Event, ExecutionReport
from contracts.timestamps import iso_ns
from eventstore.bus import Bus, DeadRead, Stored
from eventstore.errors import KeelError
from eventstore.streams import STREAMS, StreamSpec

_HIDDEN = {"ts", "venue", "symbol", "payload"}


def check_pattern(pattern: str) -> None:
    """A NATS subject pattern: non-empty tokens of ``[A-Za-z0-9_-]``, a ``*`` token for any
    one token, ``>`` only as the last token. Anything else would match nothing, silently."""
    tokens = pattern.split(".")
    for i, token in enumerate(tokens):
        if token == ">" and i < len(tokens) - 1:
            raise KeelError(f"pattern {pattern!r} is invalid: '>' must be the last token")
        if token in ("*", ">"):
            continue
        if not token or not all(c.isascii() and (c.isalnum() or c in "_-") for c in token):
            raise KeelError(
                f"pattern {pattern!r} is invalid: token {token!r} (tokens are "
                "[A-Za-z0-9_-], '*' or a final '>')"
            )


def stream_for_pattern(pattern: str) -> StreamSpec:
    check_pattern(pattern)
    first = pattern.split(".", 1)[0]
    for spec in STREAMS:
        if any(s.split(".", 1)[0] == first for s in spec.subjects):
            return spec
    prefixes = ", ".join(s.subjects[0].split(".", 1)[0] for s in STREAMS)
    raise KeelError(f"pattern {pattern!r} must start with one of: {prefixes}")


def describe(event: Event) -> str:
    """One readable line per event: the type, then its fields that matter."""
    name = type(event).__name__
    if isinstance(event, Bar):
        return f"{name} {event.symbol} {event.interval} O {event.open:g} H {event.high:g} L {event.low:g} C {event.close:g} V {event.volume:g}"
    if isinstance(event, ExecutionReport):
        head = f"{name} {event.status} {event.side} {event.symbol} qty {event.order_qty:g}"
        if event.fill_qty:
            head += f" filled {event.fill_qty:g} @ {event.fill_price:g} fee {event.fee:.4g}"
        return f"{head} [{event.client_order_id}]" + (f" {event.reason}" if event.reason else "")
    fields = msgspec.structs.asdict(event)
    parts = [
        f"{k}={_fmt(v)}"
        for k, v in fields.items()
        if k not in _HIDDEN and v not in (None, "", 0.0) and not isinstance(v, bytes)
    ]
    symbol = getattr(event, "symbol", "")
    return " ".join([name, *([symbol] if symbol else []), *parts])


def _fmt(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _matches(item: Stored, trace: str | None) -> bool:
    if trace is None:
        return True
    corr = item.envelope.correlation_id
    return trace in (corr, trace_id_of(corr))


def _emit(item: Stored | DeadRead, as_json: bool) -> None:
    if isinstance(item, DeadRead):
        if as_json:
            print(
                msgspec.json.encode(
                    {
                        "stream": item.stream,
                        "seq": item.seq,
                        "subject": item.subject,
                        "undecodable": item.reason,
                    }
                ).decode()
            )
        else:
            console.print(
                f"[red]#{item.seq} {item.subject} undecodable: {item.reason}[/]", highlight=False
            )
        return
    if as_json:
        record = {
            "stream": item.stream,
            "seq": item.seq,
            "subject": item.subject,
            "id": item.envelope.event_id,
            "causation_id": item.envelope.causation_id,
            "correlation_id": item.envelope.correlation_id,
            "event": item.event,
        }
        sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
        sys.stdout.flush()
        return
    line = f"[dim]{iso_ns(item.event.ts)}[/] [cyan]{item.subject}[/] {describe(item.event)}"
    console.print(line, highlight=False, soft_wrap=True)


async def tap(
    bus: Bus,
    pattern: str,
    *,
    last: int | None,
    since: datetime | None,
    follow: bool,
    as_json: bool,
    trace: str | None,
) -> int:
    """Print matching events; returns how many were shown."""
    stream = stream_for_pattern(pattern).name
    boundary = (await bus.js.stream_info(stream)).state.last_seq
    shown = 0
    history = last is not None or since is not None or trace is not None or not follow
    if history:
        keep: collections.deque[Stored | DeadRead] = collections.deque(maxlen=last)
        async for item in bus.read(pattern, stream, since=since, end_seq=boundary):
            if isinstance(item, DeadRead) or _matches(item, trace):
                keep.append(item)
        for item in keep:
            _emit(item, as_json)
            shown += 1
    if not follow:
        return shown
    async for item in bus.read(pattern, stream, start_seq=boundary + 1, stop_at_end=False):
        if isinstance(item, DeadRead) or _matches(item, trace):
            _emit(item, as_json)
            shown += 1
    return shown
