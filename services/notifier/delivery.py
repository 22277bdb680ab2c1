"""The one place that delivers: Apprise, one instance per destination.

Apprise speaks every destination's protocol (Telegram, Slack, Discord, e-mail, ntfy, JSON
webhooks...); Keel does no HTTP of its own. Keel's outbox (``policy.py``) already paces
each destination, so Apprise's own sleeps between requests are turned off. Apprise logs
request URLs (tokens included) at debug level, and so does urllib3 under it: both loggers
are held at ERROR, and a failure is reported by destination name only.
"""

from __future__ import annotations

import asyncio
import logging

import apprise
from apprise.plugins.telegram import NotifyTelegram

from contracts.notify_events import Priority
from eventstore.errors import KeelError
from services.notifier.config import DestinationConfig

NOTIFY_TYPE: dict[str, apprise.NotifyType] = {
    "CRITICAL": apprise.NotifyType.FAILURE,
    "ERROR": apprise.NotifyType.FAILURE,
    "WARNING": apprise.NotifyType.WARNING,
    "INFO": apprise.NotifyType.INFO,
    "HEARTBEAT": apprise.NotifyType.SUCCESS,
}

QUIET = ("apprise", "urllib3")
"""Loggers that write request URLs (bot tokens, webhook secrets in paths) below ERROR."""


class Delivery:
    """Sends to one destination; ``send`` never raises, it says whether it worked."""

    def __init__(self, config: DestinationConfig, timeout_s: float) -> None:
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.ERROR)
        self.name = config.name
        self.timeout_s = timeout_s
        plugin = apprise.Apprise.instantiate(config.url())
        if plugin is None:
            source = f"${config.url_env}" if config.url_env else config.url_file
            raise KeelError(
                f"notifier destination {config.name}: the URL in {source} is not one Apprise "
                "supports (see docs/alerts.md for the URL forms)"
            )
        plugin.request_rate_per_sec = 0
        if config.api_base and isinstance(plugin, NotifyTelegram):
            plugin.notify_url = config.api_base.rstrip("/") + "/bot"
        self._apprise = apprise.Apprise()
        self._apprise.add(plugin)

    async def send(self, priority: Priority, title: str, body: str) -> tuple[bool, str]:
        """One attempt, bounded by ``timeout_s``; (delivered, why not)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self._apprise.async_notify(
                    body=body or title,
                    title=title if body else "",
                    notify_type=NOTIFY_TYPE[priority],
                )
        except TimeoutError:
            return False, f"no answer within {self.timeout_s:g} s"
        except Exception as exc:  # Apprise's own failure: named by type, never by URL
            return False, f"delivery error: {type(exc).__name__}"
        if result:
            return True, ""
        return False, "the destination refused or could not be reached"
