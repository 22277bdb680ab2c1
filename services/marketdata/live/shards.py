"""Splitting a venue's symbols over several feed processes (``[market] shards``).

Parsing websocket frames is the feed's CPU cost, and one Python process parses on one core:
at hundreds of symbols a minute's closes arrive as one burst, so the last bar of the burst
waits for every frame before it. ``shards = N`` runs N feed processes for the venue, each
streaming the symbols whose stable hash falls in its share: principle 9's scale-out by
symbol. The split depends only on the symbol and N, so every process agrees without talking.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def shard_of(symbol: str, shards: int) -> int:
    """The shard (0 .. shards-1) that streams ``symbol``."""
    digest = hashlib.blake2b(symbol.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def in_shard(symbols: Iterable[str], shard: int, shards: int) -> list[str]:
    """The symbols of ``shard`` in their given order; every symbol when there is one shard."""
    if shards <= 1:
        return list(symbols)
    return [s for s in symbols if shard_of(s, shards) == shard]
