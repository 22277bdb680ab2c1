"""Portfolio snapshots: one every ``snapshot_every`` events, and the rebuild from a snapshot
plus the tail of the log, which equals the rebuild from the start (tested byte for byte).

A snapshot is ``Portfolio.snapshot()``: the whole state as msgpack, including the number of
events folded into it, so a rebuild knows where the tail starts. ``Portfolio.snapshot_due``
is the policy (every ``[portfolio] snapshot_every`` events). The live worker runtime stores
the state in the KV bucket ``keel_snapshots`` after every batch (at most 256 events, with
the stream sequences it covers: exactly-once rests on that), which is at least as often as
the policy asks (docs/portfolio.md, Snapshots).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from contracts.events import Event
from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig
from services.portfolio.instruments import Described


def rebuild(
    config: PortfolioConfig,
    events: Iterable[tuple[Event, int]],
    snapshot: bytes | None = None,
    instruments: tuple[Described, ...] = (),
) -> Portfolio:
    """The portfolio after ``events``: the log from its start, as (event, event time).

    With a ``snapshot`` taken after the first k of them, the first k are skipped and only
    the tail is folded."""
    portfolio = Portfolio(config, instruments)
    skip = 0
    if snapshot is not None:
        portfolio.restore(snapshot)
        skip = portfolio.state.events
    for event, now in itertools.islice(events, skip, None):
        portfolio.decide(event, now)
    return portfolio


def fold(portfolio: Portfolio, events: Iterable[tuple[Event, int]]) -> Iterator[tuple[int, bytes]]:
    """Fold ``events``, yielding (events folded, snapshot) whenever the policy asks."""
    for event, now in events:
        portfolio.decide(event, now)
        if portfolio.snapshot_due:
            yield portfolio.state.events, portfolio.snapshot()
