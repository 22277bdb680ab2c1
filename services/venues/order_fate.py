"""The unknown-order rule (docs/reconciliation.md): what to do with a leg whose fate is open.

A submit or cancel that timed out, a gateway that died between submit and acknowledgement,
an order reconciliation no longer finds: the leg is queried by its client id. A query that
finds the order gives its real state (that answer settles the leg, so the rule has nothing to
decide). Only ``queries`` misses spread over at least ``within_s`` seconds conclude that the
order is absent, since Binance can list a new order late: the first query goes at once, the
last no earlier than ``within_s`` after the doubt began. Then ``then`` decides: ``resubmit``
(the same client id, so an order that surfaces after all is refused as a duplicate by the
exchange) or ``fail``. A leg the venue once acknowledged is never resubmitted: it existed, so
it ended somehow, and reconciliation's trades tell how.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import msgspec

from services.venues.journal import Leg, Query

Fate = Literal["wait", "query", "resubmit", "fail"]
_NS = 1_000_000_000


class FateRule(msgspec.Struct, frozen=True):
    """``[venues.gateway]`` ``unknown_queries``, ``unknown_within_s``, ``unknown_then``."""

    queries: int = 3
    within_s: float = 30.0
    then: Literal["resubmit", "fail"] = "fail"

    def __post_init__(self) -> None:
        if self.queries < 1:
            raise ValueError("unknown_queries must be >= 1")
        if not self.within_s >= 0:
            raise ValueError("unknown_within_s must be >= 0")

    def offset_ns(self, k: int) -> int:
        """When the k-th query (from 0) is due, after the doubt began: evenly spread with
        the first at once and the last at ``within_s`` (one query: at ``within_s``)."""
        if self.queries == 1:
            return round(self.within_s * _NS)
        return round(self.within_s * _NS * min(k, self.queries - 1) / (self.queries - 1))

    def decide(self, leg: Leg, query_results: Sequence[Query], now: int) -> Fate:
        if not leg.in_doubt():
            return "wait"
        start = doubt_start(leg)
        results = [q for q in query_results if q.ts >= start]
        if any(q.found for q in results):
            return "wait"
        misses = sorted(q.ts for q in results)
        window = round(self.within_s * _NS)
        if len(misses) >= self.queries and misses[-1] - start >= window:
            return "fail" if leg.acknowledged else self.then
        due = self.next_query_at(leg, query_results)
        return "query" if now >= due else "wait"

    def next_query_at(self, leg: Leg, query_results: Sequence[Query]) -> int:
        """When the next query is due (the gateway's timer); a query made early does not
        count as a later one: past ``queries`` misses, one more at the window's end."""
        start = doubt_start(leg)
        misses = sorted(q.ts for q in query_results if q.ts >= start and not q.found)
        due = start + self.offset_ns(len(misses))
        if misses:
            gap = self.offset_ns(1) - self.offset_ns(0) if self.queries > 1 else 0
            due = max(due, misses[-1] + gap)
        return due


def doubt_start(leg: Leg) -> int:
    """When the leg's fate became open: its latest timeout or miss, else when it was sent
    (a gateway that restarted before the submit's answer)."""
    return leg.doubt_since or leg.order.ts


def decide(rule: FateRule, leg: Leg, query_results: Sequence[Query], now: int) -> Fate:
    """``rule.decide``; ``query_results`` is normally ``leg.queries`` (the journal's)."""
    return rule.decide(leg, query_results, now)
