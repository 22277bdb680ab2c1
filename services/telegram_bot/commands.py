"""Which updates are commands the bot acts on (pure: the clock and the allowed chats are
given)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Literal

import msgspec

from services.reports.daily import parse_day, previous_day
from services.telegram_bot.api import Message, Update

CommandName = Literal["status", "pnl", "positions", "orders", "kill", "resume", "daily", "help"]
COMMANDS: dict[str, CommandName] = {
    "status": "status",
    "pnl": "pnl",
    "positions": "positions",
    "orders": "orders",
    "kill": "kill",
    "resume": "resume",
    "daily": "daily",
    "help": "help",
    "start": "help",  # what Telegram sends when a user opens the bot
}
MAX_REASON = 200
"""A reason longer than this is cut: it is stored in the log with the command."""

Verdict = Literal["command", "stranger", "stale", "unknown", "not_command", "no_message"]


class Command(msgspec.Struct, frozen=True):
    name: CommandName
    args: str = ""


class Triage(msgspec.Struct, frozen=True):
    """What to do with one update: only ``command`` from an allowed chat is acted on;
    ``unknown`` (an allowed chat's unknown command) is answered with the help; everything
    else gets no answer at all."""

    verdict: Verdict
    chat_id: int = 0
    command: Command | None = None


def parse_command(text: str, bot_username: str = "") -> Command | Literal[False] | None:
    """``/name[@bot] args``: the command, None for text that is not a command (or a command
    addressed to another bot), False for an unknown command."""
    head, _, rest = text.strip().partition(" ")
    if not head.startswith("/") or len(head) < 2:
        return None
    name, _, addressee = head[1:].partition("@")
    if addressee and bot_username and addressee.lower() != bot_username.lower():
        return None
    known = COMMANDS.get(name.lower())
    if known is None:
        return False
    return Command(known, " ".join(rest.split())[:MAX_REASON])


def triage(
    update: Update, allowed: frozenset[int], now_s: float, max_age_s: float, bot_username: str
) -> Triage:
    """A stranger is checked first, so what a stranger sends is never even parsed; a
    command older than ``max_age_s`` (queued while the bot was down) is refused."""
    message = update.message
    if message is None:
        return Triage("no_message")
    chat = message.chat.id
    if chat not in allowed:
        return Triage("stranger", chat)
    command = parse_command(message.text, bot_username)
    if command is None:
        return Triage("not_command", chat)
    if command is False:
        return Triage("unknown", chat)
    if now_s - message.date > max_age_s:
        return Triage("stale", chat, command)
    return Triage("command", chat, command)


def issued_by(message: Message) -> str:
    """Who a governance command names: the chat, and the sender's user name when known."""
    who = f"telegram:{message.chat.id}"
    sender = message.sender
    if sender is not None and sender.username:
        who += f" (@{sender.username})"
    return who


def daily_date(args: str, now_ns: int, timezone: str) -> date:
    """``/daily`` is today so far in ``timezone``; ``/daily 2026-12-06`` any past day (a
    ``KeelError`` for what is not a date or a zone, answered as such)."""
    if args:
        return parse_day(args.split()[0])
    return previous_day(now_ns, timezone) + timedelta(days=1)
