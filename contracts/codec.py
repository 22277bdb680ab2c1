"""Wire encoding of events: JSON with a ``type`` tag, decoded and validated in one step."""

from __future__ import annotations

import msgspec

from contracts.events import AnyEvent, Event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


class DecodeError(ValueError):
    """Bytes that are not a valid Keel event; the message says why."""


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> Event:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(str(exc)) from exc
