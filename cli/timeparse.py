"""Times a person types: ISO-8601 instants or ages like ``15m`` / ``2h`` / ``7d``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts.intervals import IntervalError, duration_ns


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime; naive ISO input is taken as UTC."""
    try:
        age = timedelta(microseconds=duration_ns(text) / 1_000)
    except IntervalError:
        return _instant(text)
    return (now or datetime.now(UTC)) - age


def _instant(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"time {text!r}: use ISO-8601 (2024-01-31T12:00Z) or an age like 15m"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
