"""``keel publish ext``: a person or a feeder injects one external event into the log."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
import typer
from nats.js.errors import NotFoundError

from cli.console import console, run, user_errors
from cli.timeparse import parse_time
from contracts.envelope import MSG_ID, external_envelope
from contracts.events import External, ListingAnnouncement, PromoAnnouncement, SocialSentiment
from contracts.subjects import subject_for
from contracts.timestamps import iso_ns
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.server import nats_url

app = typer.Typer(help="Publish events into the log by hand.", no_args_is_help=True)

KINDS: dict[str, type[External]] = {
    "listing": ListingAnnouncement,
    "sentiment": SocialSentiment,
    "promo": PromoAnnouncement,
}
TIME_FIELDS = ("ts", "listing_time", "starts_at", "ends_at")
"""Fields that take an ISO-8601 time (or an age like ``5m``) as well as nanoseconds."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BY_TYPE = {cls.__name__: kind for kind, cls in KINDS.items()}


def _ns(field: str, value: str) -> int:
    try:
        moment = parse_time(value)
    except ValueError as exc:
        raise KeelError(f"{field}: {exc}") from None
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1_000


def build_external(source: str, text: str, now: int) -> External:
    """The event a ``--json`` object describes: ``kind`` (listing | sentiment | promo) or the
    stored ``type`` picks the class, SOURCE fills ``source``, ``ts`` defaults to ``now``.
    Every mistake is a ``KeelError`` with one line saying what is wrong."""
    try:
        raw: Any = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise KeelError(f"--json is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise KeelError("--json must be a JSON object")
    kind = raw.pop("kind", None)
    type_name = raw.pop("type", None)
    if kind is None and type_name is not None:
        kind = _BY_TYPE.get(type_name)
        if kind is None:
            raise KeelError(f"type {type_name!r} is not an external event ({', '.join(_BY_TYPE)})")
    if kind not in KINDS:
        raise KeelError(f'--json needs "kind": one of {", ".join(KINDS)} (got {kind!r})')
    cls = KINDS[kind]
    if type_name is not None and type_name != cls.__name__:
        raise KeelError(f"kind {kind!r} and type {type_name!r} disagree")
    if raw.get("source", source) != source:
        raise KeelError(f"source {raw['source']!r} in --json differs from SOURCE {source!r}")
    raw["source"] = source
    unknown = sorted(set(raw) - set(cls.__struct_fields__))
    if unknown:
        raise KeelError(
            f"{kind}: unknown field(s) {', '.join(unknown)}; "
            f"known: kind, {', '.join(f for f in cls.__struct_fields__ if f != 'source')}"
        )
    for field in TIME_FIELDS:
        if isinstance(raw.get(field), str):
            raw[field] = _ns(field, raw[field])
    raw.setdefault("ts", now)
    try:
        event = msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        raise KeelError(f"{kind}: {exc}") from None
    subject_for(event)  # a source, venue or symbol that cannot be a subject token
    return event


async def publish_external(bus: Bus, event: External) -> bool:
    """Store the event; False when the log already holds it: the same id within the
    stream's duplicate window (JetStream drops it), or, past the window, as the last event
    on its subject."""
    envelope = external_envelope(event)
    subject = subject_for(event)
    try:
        last = await bus.js.get_last_msg("EXTERNAL", subject)
    except NotFoundError:
        last = None
    if last is not None and (last.headers or {}).get(MSG_ID) == envelope.event_id:
        return False
    return await bus.publish(event, envelope)


@app.command()
def ext(
    source: Annotated[
        str, typer.Argument(help="Who reports it (a subject token, e.g. binance_news).")
    ],
    json_text: Annotated[
        str,
        typer.Option(
            "--json",
            help='The event: {"kind": "listing"|"sentiment"|"promo", ...fields}; - reads stdin.',
        ),
    ],
) -> None:
    """Publish one external event (listing, sentiment, promo) on ext.<kind>.<source>.<key>."""
    with user_errors():
        text = sys.stdin.read() if json_text == "-" else json_text
        event = build_external(source, text, time.time_ns())
    envelope = external_envelope(event)
    subject = subject_for(event)

    async def main() -> bool:
        with nats_url(start_server=False) as url:
            bus = await Bus.connect(url, name="publish-ext")
            try:
                return await publish_external(bus, event)
            finally:
                await bus.close()

    stored = run(main())
    what = "stored" if stored else "already stored (duplicate)"
    console.print(
        f"{what}: {subject} id {envelope.event_id} at {iso_ns(event.ts)}", highlight=False
    )
