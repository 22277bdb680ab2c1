"""The id of a fact governance consumed: its kind, event time and a digest of its bytes.

The same fact redelivered has the same id, so every desk can ignore a redelivery, and the
ids of the decisions it caused derive from it (the same in every replay).
"""

from __future__ import annotations

import hashlib

from contracts.codec import encode
from contracts.events import Event


def input_id(kind: str, event: Event) -> str:
    digest = hashlib.blake2b(encode(event), digest_size=8).hexdigest()
    return f"{kind}:{event.ts}:{digest}"
