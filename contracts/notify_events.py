"""The notifier's audit trail: every notification it sent, merged, suppressed, dropped or
failed to deliver is a ``Notification`` on ``sys.notify.<outcome>`` (docs/alerts.md).

A destination is named by its configured name, never by its URL: URLs carry tokens.
"""

from __future__ import annotations

from typing import Literal

from contracts.event_base import Event, Int64, is_token, require

Priority = Literal["CRITICAL", "ERROR", "WARNING", "INFO", "HEARTBEAT"]
Outcome = Literal["sent", "merged", "suppressed", "dropped", "failed"]

__all__ = ["Notification", "Outcome", "Priority"]


class Notification(Event, frozen=True):
    """One notification's fate. ``key`` is the alert key (de-duplication and latching are per
    key); ``count`` how many alerts it carries (more than one when merged); ``attempts``
    the delivery attempts made; ``cause_ids`` the ids of the events that raised it."""

    key: str
    priority: Priority
    outcome: Outcome
    destination: str
    title: str
    body: str = ""
    count: Int64 = 1
    attempts: Int64 = 0
    reason: str = ""
    cause_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.key), "key must not be empty")
        require(is_token(self.destination), "destination must match [A-Za-z0-9_-]+")
        require(self.count >= 1, "count must be >= 1")
        require(self.attempts >= 0, "attempts must be >= 0")
