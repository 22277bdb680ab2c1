"""Wire encoding of events: JSON with a ``type`` tag, decoded and validated in one step."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from contracts.events import AnyEvent, Event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)


class DecodeError(ValueError):
    """Bytes that are not a valid Keel event; the message says why."""


encode: Callable[[Event], bytes] = _encoder.encode
"""An event as JSON bytes: the encoder's own method, since a wrapper function would add a
Python call to every event a replay records."""


def decode(data: bytes) -> Event:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(str(exc)) from exc
