"""The bot's pure parts: which updates are commands, who is refused, the backoff, the
working-orders fold and the token's sources (docs/alerts.md, "Telegram bot")."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import msgspec
import pytest

from contracts.events import ExecutionReport, PositionChanged
from eventstore.errors import KeelError
from services.config import KeelConfig
from services.telegram_bot import answers
from services.telegram_bot.answers import MAX_CHARS, positions_text, working_orders
from services.telegram_bot.api import Chat, Message, Update, User, polled
from services.telegram_bot.backoff import backoff_s
from services.telegram_bot.commands import Command, daily_date, issued_by, parse_command, triage
from services.telegram_bot.config import TelegramBotConfig, bot_token

NOW = 1_765_000_000
TOKEN = "123456789:AAH-secret-token"


def update(chat: int, text: str, date: int = NOW, username: str = "") -> Update:
    sender = User(chat, username=username)
    return Update(1, Message(5, date, Chat(chat), sender, text))


def test_commands_parse_with_arguments_and_a_bot_name() -> None:
    assert parse_command("/kill  fat   finger ") == Command("kill", "fat finger")
    assert parse_command("/STATUS@keel_bot", "keel_bot") == Command("status")
    assert parse_command("/start") == Command("help")
    assert parse_command("/status@other_bot", "keel_bot") is None  # another bot's command
    assert parse_command("hello") is None
    assert parse_command("/") is None
    assert parse_command("/flatten") is False
    assert len(parse_command("/kill " + "x" * 500).args) == 200  # type: ignore[union-attr]


def test_a_stranger_is_refused_before_anything_is_read() -> None:
    allowed = frozenset({42})
    assert triage(update(99, "/kill"), allowed, NOW, 300, "").verdict == "stranger"
    assert triage(update(99, "/nonsense"), allowed, NOW, 300, "").verdict == "stranger"
    assert triage(Update(3), allowed, NOW, 300, "").verdict == "no_message"
    assert triage(update(42, "hi"), allowed, NOW, 300, "").verdict == "not_command"
    assert triage(update(42, "/what"), allowed, NOW, 300, "").verdict == "unknown"
    verdict = triage(update(42, "/kill now"), allowed, NOW, 300, "")
    assert (verdict.verdict, verdict.chat_id, verdict.command) == (
        "command",
        42,
        Command("kill", "now"),
    )
    # queued while the bot was down: not acted on
    assert triage(update(42, "/kill", date=NOW - 301), allowed, NOW, 300, "").verdict == "stale"


def test_who_issued_names_the_chat_and_the_user() -> None:
    assert issued_by(update(42, "/kill").message) == "telegram:42"  # type: ignore[arg-type]
    named = update(42, "/kill", username="alice").message
    assert issued_by(named) == "telegram:42 (@alice)"  # type: ignore[arg-type]


def test_backoff_obeys_retry_after_and_doubles_to_a_cap() -> None:
    assert backoff_s(1, 7, 60) == 7.0
    assert [backoff_s(n, None, 10) for n in (0, 1, 2, 3, 4, 5, 100)] == [0, 1, 2, 4, 8, 10, 10]


def test_malformed_updates_are_confirmed_and_skipped() -> None:
    good = {"update_id": 1, "message": {"message_id": 1, "date": NOW, "chat": {"id": 4}}}
    items = polled(
        [
            good,
            {"update_id": 2, "message": {"chat": "nope"}},
            {"no": "id"},
            "junk",
            {"update_id": 3},
        ]
    )
    assert [(p.update_id, p.update is not None) for p in items] == [
        (1, True),
        (2, False),
        (3, True),
    ]
    assert items[0].update.message.text == ""  # type: ignore[union-attr]


def order_report(coid: str, status: str, ts: int) -> ExecutionReport:
    return ExecutionReport(
        ts=ts,
        status=status,  # type: ignore[arg-type]
        client_order_id=coid,
        strategy="s1",
        venue="sim",
        symbol="BTC/USDT",
        side="buy",
        order_qty=2.0,
    )


def test_working_orders_are_the_last_reports_still_open() -> None:
    reports = [
        order_report("a", "accepted", 1),
        order_report("b", "accepted", 2),
        order_report("a", "filled", 3),
        order_report("c", "accepted", 4),
        order_report("c", "partially_filled", 5),
        order_report("d", "accepted", 6),
        order_report("d", "canceled", 7),
    ]
    assert [(r.client_order_id, r.status) for r in working_orders(reports)] == [
        ("b", "accepted"),
        ("c", "partially_filled"),
    ]


def test_answers_stay_within_a_telegram_message() -> None:
    many = [
        PositionChanged(
            ts=NOW, venue="sim", symbol=f"S{i}/USDT", qty=1.0, avg_price=1.0, realized_pnl=0.0
        )
        for i in range(500)
    ]
    text = positions_text(many)
    assert len(text) <= MAX_CHARS and text.endswith("… and 480 more positions")
    assert len(answers.clip("x" * 10_000)) <= MAX_CHARS


def test_daily_is_today_in_the_zone_or_a_given_day() -> None:
    late = 1_765_148_400 * 10**9  # 2025-12-07 23:00 UTC = 2025-12-08 00:00 in Berlin
    assert daily_date("", late, "UTC") == date(2025, 12, 7)
    assert daily_date("", late, "Europe/Berlin") == date(2025, 12, 8)
    assert daily_date("2025-11-30 extra", late, "UTC") == date(2025, 11, 30)
    with pytest.raises(KeelError, match="not a date"):
        daily_date("yesterday", late, "UTC")
    with pytest.raises(msgspec.ValidationError, match="not an IANA time zone"):
        msgspec.convert({"chat_ids": [1], "timezone": "Mars/Olympus"}, TelegramBotConfig)


def test_the_bot_is_off_by_default_and_needs_a_chat() -> None:
    assert KeelConfig().telegram_bot is None
    with pytest.raises(msgspec.ValidationError, match="chat_ids"):
        msgspec.convert({"chat_ids": []}, TelegramBotConfig)


def test_the_token_comes_from_the_environment_or_a_file_and_no_error_shows_it(
    tmp_path: Path,
) -> None:
    config = TelegramBotConfig(chat_ids=(42,))
    assert bot_token(config, {"KEEL_TELEGRAM_BOT_TOKEN": f" {TOKEN}\n"}) == TOKEN
    with pytest.raises(KeelError, match="KEEL_TELEGRAM_BOT_TOKEN") as missing:
        bot_token(config, {"OTHER": TOKEN})
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    from_file = msgspec.structs.replace(config, token_file=str(secret))
    assert bot_token(from_file, {}) == TOKEN
    secret.write_text("")
    with pytest.raises(KeelError, match="is empty") as empty:
        bot_token(from_file, {"KEEL_TELEGRAM_BOT_TOKEN": TOKEN})
    gone = msgspec.structs.replace(config, token_file=str(tmp_path / "gone"))
    with pytest.raises(KeelError, match="cannot read") as unreadable:
        bot_token(gone, {"KEEL_TELEGRAM_BOT_TOKEN": TOKEN})
    for error in (missing, empty, unreadable):
        assert TOKEN not in str(error.value) and "secret" not in str(error.value)
