"""``[telegram_bot]``: who may command the fleet from Telegram, and where the token lives.

No section, no bot: nothing runs unless an operator configures one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from eventstore.errors import KeelError

TOKEN_ENV = "KEEL_TELEGRAM_BOT_TOKEN"


class TelegramBotConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``chat_ids``: the only chats answered (a private chat's id is the user's id, a
    group's is negative). The token comes from ``token_env`` or ``token_file``, never from
    this file, so a config can be shared without it."""

    chat_ids: Annotated[tuple[int, ...], Meta(min_length=1)]
    token_env: str = TOKEN_ENV
    token_file: str = ""
    api_url: str = "https://api.telegram.org"
    poll_timeout_s: Annotated[int, Meta(ge=0, le=50)] = 25  # getUpdates long poll
    max_age_s: Annotated[float, Meta(gt=0)] = 300.0  # older commands (a bot down) are refused
    orders_lookback_h: Annotated[float, Meta(gt=0)] = 168.0  # /orders reads reports this far
    max_backoff_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    timezone: str = "UTC"  # /daily's calendar day (IANA name)

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone") from None


def bot_token(config: TelegramBotConfig, env: Mapping[str, str]) -> str:
    """The token from the file when one is named, else from the environment variable; the
    errors name where it was looked for, never what was found."""
    if config.token_file:
        try:
            token = Path(config.token_file).read_text().strip()
        except OSError as exc:
            raise KeelError(
                f"telegram_bot.token_file: cannot read {config.token_file}: {exc.strerror}"
            ) from None
        if not token:
            raise KeelError(f"telegram_bot.token_file: {config.token_file} is empty")
        return token
    token = env.get(config.token_env, "").strip()
    if not token:
        raise KeelError(
            f"telegram_bot: no bot token: set {config.token_env} or telegram_bot.token_file"
        )
    return token
