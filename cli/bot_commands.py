"""``keel run telegram-bot``: the Telegram command bot in the foreground (docs/alerts.md,
"Telegram bot"); off unless the config has a ``[telegram_bot]`` section."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import aiohttp
import typer
from rich.markup import escape

from cli.console import fail, load_config_or_exit, run, user_errors
from eventstore.bus import Bus
from eventstore.server import nats_url
from services.telegram_bot.api import BotApi
from services.telegram_bot.bot import TelegramBot
from services.telegram_bot.config import bot_token


def telegram_bot(
    config: Annotated[
        Path | None, typer.Option("--config", help="Fleet config (TOML) with [telegram_bot].")
    ] = None,
) -> None:
    """Answer /status, /pnl, /positions, /orders, /daily from the log and publish /kill and
    /resume as governance commands, for the configured chats only."""
    settings = load_config_or_exit(config)
    bot_config = settings.telegram_bot
    if bot_config is None:
        raise fail(
            escape("telegram-bot: the config has no [telegram_bot] section (the bot is off)")
        )
    with user_errors():
        token = bot_token(bot_config, os.environ)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s telegram-bot %(levelname)s %(message)s"
    )
    # aiohttp's own loggers could name a URL, and every URL carries the token.
    logging.getLogger("aiohttp").setLevel(logging.ERROR)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        with nats_url(start_server=False) as url:
            bus = await Bus.connect(url, name="telegram-bot")
            try:
                async with aiohttp.ClientSession() as session:
                    api = BotApi(bot_config.api_url, token, session)
                    await TelegramBot(api, bus, bot_config).run(stop)
            finally:
                await bus.close()

    run(main())
