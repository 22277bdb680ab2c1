"""Building a ccxt exchange (REST and websocket, ``ccxt.pro``) from a ``[[venues]]`` entry.

The product's code path is ccxt's own: the entry's ``urls`` and ``options`` are merged into
the exchange's (tables deep, values replaced), ccxt's rate limiter stays on, and a testnet or
demo is selected the way ccxt documents it. Secrets are read here, from the environment or
files the entry names, and every text that leaves a venue process passes ``Redactor``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ccxt
import ccxt.pro

from eventstore.errors import KeelError
from services.venues.config import SECRET_FIELDS, VenueConfig

CCXT_ATTRIBUTE = {"api_key": "apiKey", "secret": "secret", "password": "password", "uid": "uid"}


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it: tables merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_secrets(venue: VenueConfig, required: tuple[str, ...] = ()) -> dict[str, str]:
    """The secrets the entry names, by ccxt attribute. A named variable that is unset, an
    unreadable file, or a ``required`` secret the entry does not name is one line naming the
    key, never the value."""
    where = f"venues.{venue.name}.credentials"
    secrets: dict[str, str] = {}
    for field in SECRET_FIELDS:
        env = getattr(venue.credentials, f"{field}_env")
        file = getattr(venue.credentials, f"{field}_file")
        if env:
            value = os.environ.get(env, "")
            if not value:
                raise KeelError(f"{where}.{field}_env: environment variable {env} is not set")
        elif file:
            try:
                value = Path(file).read_text().strip().splitlines()[0].strip()
            except (OSError, UnicodeDecodeError, IndexError):
                raise KeelError(f"{where}.{field}_file: cannot read a secret from {file}") from None
        elif field in required:
            raise KeelError(f"{where}: {field} is needed; give {field}_env or {field}_file")
        else:
            continue
        secrets[CCXT_ATTRIBUTE[field]] = value
    return secrets


def build_exchange(
    venue: VenueConfig, secrets: Mapping[str, str] | None = None
) -> ccxt.pro.Exchange:
    """The async ccxt exchange (with ``watch*`` methods) this venue stands for."""
    where = f"venues.{venue.name}"
    if venue.exchange not in ccxt.pro.exchanges:
        known = "binance, binanceusdm, bybit, kraken, krakenfutures"
        raise KeelError(
            f"{where}.exchange: {venue.exchange!r} is not a ccxt exchange with websocket "
            f"support (for example {known})"
        )
    exchange_class = getattr(ccxt.pro, venue.exchange)
    exchange: ccxt.pro.Exchange = exchange_class(
        {"enableRateLimit": True, "timeout": venue.timeout_ms, **(secrets or {})}
    )
    if venue.sandbox:
        if not exchange.urls.get("test"):
            raise KeelError(f"{where}.sandbox: {venue.exchange} has no testnet")
        exchange.set_sandbox_mode(True)
    if venue.demo:
        if type(exchange).enable_demo_trading is ccxt.Exchange.enable_demo_trading:
            raise KeelError(f"{where}.demo: {venue.exchange} has no demo trading environment")
        exchange.enable_demo_trading(True)
    exchange.urls = deep_merge(exchange.urls, venue.urls)
    exchange.options = deep_merge(exchange.options, venue.options)
    exchange.enableRateLimit = True  # an entry's options cannot switch the limiter off
    return exchange


class Redactor(logging.Filter):
    """Replaces every secret value in a log record's text with ``***``: ccxt's errors quote
    requests, and a secret must never reach a log line."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        super().__init__()
        self._values = sorted((v for v in secrets.values() if len(v) >= 4), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """The record is shared by every handler: an earlier handler's filter may already
        have formatted the traceback into ``exc_text``, so that text is redacted too."""
        if self._values:
            record.msg = self.redact(record.getMessage())
            record.args = ()
            if record.exc_info:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
                record.exc_info = None
            if record.exc_text:
                record.exc_text = self.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = self.redact(record.stack_info)
        return True


def redact_logs(secrets: Mapping[str, str]) -> Redactor:
    """Hide ``secrets`` in every line the process logs: the filter goes on the root logger's
    handlers, since a logger's own filters never see records its children propagate."""
    redactor = Redactor(secrets)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        handler.addFilter(redactor)
    return redactor
