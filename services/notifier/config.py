"""``[notifier]``: destinations, routing rules and the limits (docs/alerts.md).

A destination's URL (an Apprise URL: ``tgram://``, ``json://``, ``slack://``...) carries
its token, so the TOML names only where to read it: an environment variable (``url_env``)
or a file (``url_file``, e.g. a mounted secret). It is read at start, never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contracts.event_base import is_token
from contracts.notify_events import Priority
from eventstore.errors import KeelError
from services.notifier.alerts import KINDS, RANK, Alert
from services.notifier.policy import PolicyConfig


class DestinationConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One place alerts go. ``min_priority`` and ``kinds`` are its routing rule (``kinds``
    empty: every kind but fills, which need ``fills = true``, and the daily report, which
    goes wherever ``report`` is true whatever ``min_priority`` says). ``api_base`` points a
    ``tgram://`` URL at another Bot API server (a self-hosted one, or a test fake)."""

    name: str
    url_env: str = ""
    url_file: str = ""
    min_priority: Priority = "WARNING"
    kinds: tuple[str, ...] = ()
    fills: bool = False
    report: bool = True
    api_base: str = ""
    limits: PolicyConfig = msgspec.field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if not is_token(self.name):
            raise ValueError(f"notifier destination {self.name!r} must match [A-Za-z0-9_-]+")
        if bool(self.url_env) == bool(self.url_file):
            raise ValueError(f"notifier destination {self.name}: give url_env or url_file")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(
                f"notifier destination {self.name}: unknown kinds {unknown}; known: {KINDS}"
            )

    def wants(self, alert: Alert) -> bool:
        if alert.kind == "fill":
            return self.fills
        if alert.kind == "report":
            return self.report
        if self.kinds and alert.kind not in self.kinds:
            return False
        if alert.resolves:
            return True  # its outbox says it only when the condition was reported there
        return RANK[alert.priority] >= RANK[self.min_priority]

    def url(self) -> str:
        """The secret URL; a missing one is one clear line that names the variable or file,
        never a value."""
        if self.url_env:
            value = os.environ.get(self.url_env, "").strip()
            if not value:
                raise KeelError(f"notifier destination {self.name}: ${self.url_env} is not set")
            return value
        try:
            value = Path(self.url_file).read_text().strip()
        except OSError as exc:
            raise KeelError(
                f"notifier destination {self.name}: cannot read {self.url_file}: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        if not value:
            raise KeelError(f"notifier destination {self.name}: {self.url_file} is empty")
        return value


class DailyReportConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[notifier.daily_report]``: the previous day's report (docs/alerts.md, "Daily
    report") once after each midnight of ``timezone``; ``html_dir``: also write its page."""

    timezone: str = "UTC"
    html_dir: str = ""

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"notifier.daily_report: unknown time zone {self.timezone!r}"
            ) from None


class NotifierConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``dead_after_s``: a worker silent that long is dead (workers beat every 2 s).
    ``timeout_s`` bounds one delivery attempt. ``alive_every_s`` > 0 sends a HEARTBEAT
    message that often, to destinations whose ``min_priority`` is HEARTBEAT."""

    destinations: tuple[DestinationConfig, ...] = ()
    dead_after_s: float = 30.0
    timeout_s: float = 15.0
    heartbeat_s: float = 2.0
    alive_every_s: float = 0.0
    daily_report: DailyReportConfig | None = None

    def __post_init__(self) -> None:
        names = [d.name for d in self.destinations]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"notifier: destination {name!r} is named twice")
        if self.dead_after_s <= 0 or self.timeout_s <= 0 or self.heartbeat_s <= 0:
            raise ValueError("notifier: dead_after_s, timeout_s and heartbeat_s must be > 0")
        if self.alive_every_s < 0:
            raise ValueError("notifier: alive_every_s must be >= 0")

    @property
    def fills(self) -> bool:
        """Whether any destination wants fills (else execution reports are not read)."""
        return any(d.fills for d in self.destinations)
