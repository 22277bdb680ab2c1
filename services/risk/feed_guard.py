"""The stale-data guard: no new entries on a market whose live feed is not fresh.

The marketdata worker publishes a ``FeedStatus`` per venue and symbol whenever its feed
changes state (``md.status.<venue>.<symbol>``). ``stale``, ``backfilling`` and ``delisted``
block entries (orders that grow the market's exposure): an entry decided on a price that may
be minutes old is what the guard is for, while an exit or a reduction on old data still
lowers risk, so those pass. ``streaming`` or ``polling`` (``FeedStatus.fresh``) lifts the
block. A delisted market stays blocked until the venue streams it again; an inactive
``Instrument`` blocks it as delisted too.

While a venue has stale or backfilling markets it is a ``DEGRADED`` condition (one per
venue, naming the oldest outage, so a venue-wide outage of 541 perpetuals is one line). A
delisting is a fact about the market, not an impaired feed: it blocks, but does not hold the
status ``DEGRADED`` for ever. ``closed`` (a broker's market outside its trading session,
said by the feed's trading calendar) blocks the same way with its own reason ("market closed
until ..."): an entry taken then waits at the broker until the open, when the price may have
gapped past the signal's stop and target. It is normal, so it raises no condition either.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from contracts.events import FeedState
from contracts.keys import InstrumentId
from services.risk.state import Condition, FeedBlock

RULE = "stale_data"


class FeedChange(msgspec.Struct, frozen=True):
    """What one status did: ``action`` for the ``RiskAlert`` (``halt_entries``, ``resume``,
    or empty when a blocked market only moved between states that block)."""

    action: str
    detail: str


def iso(ns: int) -> str:
    """UTC time of an event time in whole seconds, e.g. ``2023-11-15T00:01:00Z``."""
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


NOT_OUTAGES: tuple[FeedState, ...] = ("delisted", "closed")
"""Blocking states that are facts about the market, not an impaired feed."""


def describe(block: FeedBlock) -> str:
    if block.state == "closed":
        return block.reason or f"market closed since {iso(block.since)}"
    text = f"feed {block.state} since {iso(block.since)}"
    return f"{text} ({block.reason})" if block.reason else text


class FeedGuard:
    """The blocked markets (``RiskState.feeds``) and their transitions."""

    def __init__(self, blocks: dict[InstrumentId, FeedBlock]) -> None:
        self.blocks = blocks

    def observe(
        self, market: InstrumentId, state: FeedState, fresh: bool, ts: int, reason: str
    ) -> FeedChange | None:
        """A market's feed reported ``state`` at ``ts``; the change, if any."""
        where = f"{market.symbol} on {market.venue}"
        block = self.blocks.get(market)
        if fresh:
            if block is None:
                return None
            del self.blocks[market]
            return FeedChange(
                "resume", f"{where}: feed {state} at {iso(ts)}, was {describe(block)}"
            )
        if block is None:
            block = self.blocks[market] = FeedBlock(state, ts, reason)
            return FeedChange("halt_entries", f"{where}: {describe(block)}: entries blocked")
        if block.state == state:
            return None
        if (block.state == "closed") != (state == "closed"):
            # A closed market becomes an outage (or the reverse): a new block from now.
            block = self.blocks[market] = FeedBlock(state, ts, reason)
            return FeedChange("halt_entries", f"{where}: {describe(block)}: entries blocked")
        block.state, block.reason = state, reason
        if state == "delisted":  # no longer a passing outage: say so
            return FeedChange("halt_entries", f"{where}: {describe(block)}: entries blocked")
        return FeedChange("", f"{where}: {describe(block)}")

    def condition(self, venue: str) -> Condition | None:
        """The venue's ``DEGRADED`` condition while any of its markets is stale or
        backfilling: the oldest outage (ties: by symbol) and how many markets share it.
        Delisted and closed markets are not outages."""
        outages = sorted(
            (block.since, market.symbol, block)
            for market, block in self.blocks.items()
            if market.venue == venue and block.state not in NOT_OUTAGES
        )
        if not outages:
            return None
        since, symbol, block = outages[0]
        reason = f"no fresh data on {venue}: {symbol} {describe(block)}"
        if len(outages) > 1:
            reason += f" and {len(outages) - 1} more"
        return Condition("DEGRADED", RULE, reason, since)
