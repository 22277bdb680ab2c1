"""The sha256 of one producer's outputs, hashed in batches.

Each output contributes ``subject\\n`` + its JSON payload + ``\\n``, in the order produced.
Hashing them one at a time costs a Python-level encode and update per event (a replay
records one equity snapshot per bar), so events are kept until the subject changes or
``BATCH`` of them wait, then one ``encode_lines`` call encodes the run of same-subject events
and the subject is spliced in before each line: the bytes hashed are exactly those of the
event-by-event definition (a JSON payload never contains a raw newline).
"""

from __future__ import annotations

import hashlib

from contracts.codec import encode_lines
from contracts.events import Event

BATCH = 64
"""Events kept at most before hashing: few, so that they are still in the CPU cache when
encoded and their memory is reused soon (4,096 measured 4 % slower a bar than 64)."""


class ProducerDigest:
    __slots__ = ("_digest", "_events", "_prefix", "_subject")

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._events: list[Event] = []
        self._subject = ""
        self._prefix = b""

    def add(self, subject: str, event: Event) -> None:
        events = self._events
        if subject != self._subject or len(events) >= BATCH:
            self._flush()
            if subject != self._subject:
                self._subject = subject
                self._prefix = subject.encode() + b"\n"
        events.append(event)

    def _flush(self) -> None:
        events = self._events
        if not events:
            return
        prefix = self._prefix
        lines = encode_lines(events)  # payload\n payload\n ...
        self._digest.update(prefix + lines[:-1].replace(b"\n", b"\n" + prefix) + b"\n")
        events.clear()

    def hexdigest(self) -> str:
        self._flush()
        return self._digest.hexdigest()
