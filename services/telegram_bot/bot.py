"""The bot's loop: long-poll updates, answer allowed chats, publish kill and resume as
governance commands, and back off on every failure without ever stopping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from contracts.envelope import Envelope, content_id
from contracts.system_events import GovernanceCommand
from eventstore.bus import Bus
from eventstore.errors import KeelError
from services.telegram_bot import answers
from services.telegram_bot.api import ApiError, BotApi, Polled
from services.telegram_bot.backoff import backoff_s
from services.telegram_bot.commands import Command, Triage, daily_date, issued_by, triage
from services.telegram_bot.config import TelegramBotConfig
from services.telegram_bot.views import LogViews

log = logging.getLogger("keel.telegram_bot")
T = TypeVar("T")
SEND_ATTEMPTS = 3
"""An answer Telegram refuses (429, network) is tried this many times, then dropped."""


async def pause(seconds: float, stop: asyncio.Event) -> bool:
    """Wait, or less when ``stop`` is set; True when the bot should go on."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return True
    return not stop.is_set()


async def until_stopped(call: Awaitable[T], stop: asyncio.Event) -> T | None:
    """The call's result, or None as soon as ``stop`` is set (a long poll is cancelled, so
    SIGTERM does not wait out ``poll_timeout_s``)."""
    task = asyncio.ensure_future(call)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


class TelegramBot:
    def __init__(
        self,
        api: BotApi,
        bus: Bus,
        config: TelegramBotConfig,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.api = api
        self.bus = bus
        self.config = config
        self.views = LogViews(bus, config.orders_lookback_h)
        self.allowed = frozenset(config.chat_ids)
        self.clock_ns = clock_ns
        self.username = ""
        self.offset: int | None = None
        self.handled = 0
        self.ignored = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: every failure is logged in one line and waited out."""
        failures = 0
        while not stop.is_set():
            try:
                if not self.username:
                    self.username = await self.api.get_me()
                    log.info("polling as @%s for %d chat(s)", self.username, len(self.allowed))
                batch = await until_stopped(
                    self.api.get_updates(self.offset, self.config.poll_timeout_s), stop
                )
            except ApiError as exc:
                failures += 1
                wait = backoff_s(failures, exc.retry_after, self.config.max_backoff_s)
                log.warning("Bot API %s; retrying in %.1f s", exc, wait)
                if not await pause(wait, stop):
                    return
                continue
            if batch is None:
                return
            failures = 0
            for item in batch:
                await self.handle(item)
                self.offset = item.update_id + 1

    async def handle(self, item: Polled) -> None:
        """One update; whatever goes wrong answering it is logged, never raised."""
        if item.update is None:
            log.warning("update %d skipped: not a Bot API update shape", item.update_id)
            return
        now_ns = self.clock_ns()
        verdict = triage(
            item.update, self.allowed, now_ns / 1e9, self.config.max_age_s, self.username
        )
        if verdict.verdict == "stranger":
            self.ignored += 1
            log.info(
                "update %d from chat %d ignored: not an allowed chat",
                item.update_id,
                verdict.chat_id,
            )
            return
        if verdict.verdict in ("no_message", "not_command"):
            return
        try:
            text = await self._answer(item, verdict, now_ns)
        except Exception as exc:  # a failed read must not end the bot
            log.warning(
                "update %d: cannot answer (%s: %s)", item.update_id, type(exc).__name__, exc
            )
            text = "Cannot read the log right now; try again."
        await self._send(verdict.chat_id, text)
        self.handled += 1

    async def _answer(self, item: Polled, verdict: Triage, now_ns: int) -> str:
        if verdict.verdict == "unknown":
            return answers.HELP
        if verdict.verdict == "stale":
            return answers.stale_text(self.config.max_age_s)
        command = verdict.command
        assert command is not None
        match command.name:
            case "help":
                return answers.HELP
            case "status":
                return answers.status_text(await self.views.status(now_ns))
            case "pnl":
                return answers.pnl_text(await self.views.equity(), await self.views.strategies())
            case "positions":
                return answers.positions_text(await self.views.positions())
            case "orders":
                working = answers.working_orders(await self.views.reports(now_ns))
                return answers.orders_text(working, self.config.orders_lookback_h)
            case "daily":
                try:
                    day = daily_date(command.args, now_ns, self.config.timezone)
                except KeelError as exc:
                    return str(exc)
                return answers.daily_text(await self.views.daily(day, self.config.timezone))
            case "kill" | "resume":
                return await self._govern(item, command, now_ns)

    async def _govern(self, item: Polled, command: Command, now_ns: int) -> str:
        """The same event ``keel kill``/``keel resume`` publishes, naming the chat. Its id
        comes from the chat and message, so the same update handled again after a restart
        is de-duplicated by the log instead of stored twice."""
        assert item.update is not None and item.update.message is not None
        message = item.update.message
        who = issued_by(message)
        reason = command.args or f"{command.name} from Telegram"
        event = GovernanceCommand(ts=now_ns, action=command.name, reason=reason, issued_by=who)
        event_id = content_id("gov", command.name, "telegram", message.chat.id, message.message_id)
        try:
            stored = await self.bus.publish(event, Envelope.root(event_id, now_ns))
        except Exception as exc:  # the server away: say so, the operator must know
            log.warning(
                "%s by %s NOT published: %s: %s", command.name, who, type(exc).__name__, exc
            )
            return answers.not_published_text(command.name, exc)
        log.info("%s published by %s (update %d)", command.name, who, item.update_id)
        return answers.governance_text(command.name, reason, who, now_ns, stored)

    async def _send(self, chat_id: int, text: str) -> None:
        for attempt in range(1, SEND_ATTEMPTS + 1):
            try:
                await self.api.send_message(chat_id, text)
                return
            except ApiError as exc:
                if attempt == SEND_ATTEMPTS or exc.code in (400, 401, 403):
                    log.warning("answer to chat %d dropped: %s", chat_id, exc)
                    return
                wait = backoff_s(attempt, exc.retry_after, self.config.max_backoff_s)
                log.warning("answer to chat %d: %s; retrying in %.1f s", chat_id, exc, wait)
                await asyncio.sleep(wait)
