"""Event times (ns since the epoch) as people read them, the same in every report."""

from __future__ import annotations

from datetime import UTC, datetime


def iso_ns(ns: int) -> str:
    """Nanoseconds since the epoch as ISO-8601 UTC, to the millisecond."""
    moment = datetime.fromtimestamp(ns / 1e9, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
