"""The Telegram command bot against the loopback Bot API fake, with the real adapter and a
real nats-server: each command answers from the log, /kill and /resume are governance
commands naming the chat that risk acts on, strangers get nothing, a 429 is waited out and
the token appears nowhere (docs/alerts.md, "Telegram bot")."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import msgspec
import pytest

from contracts.envelope import Envelope, content_id
from contracts.events import EquitySnapshot, Event, ExecutionReport, PositionChanged, StrategyPnL
from contracts.system_events import GovernanceCommand, Heartbeat, SystemStatus
from eventstore.bus import Bus
from eventstore.lag import wait_drained
from eventstore.server import URL_ENV, EmbeddedServer
from services.risk.limits import RiskLimits
from services.risk.role import risk_role
from services.runtime.worker import Worker, WorkerOptions
from services.telegram_bot.api import BotApi
from services.telegram_bot.bot import TelegramBot
from services.telegram_bot.config import TelegramBotConfig
from tests.fakes.telegram_api import FakeTelegram
from tests.test_nats_permissions import SecuredServer

TOKEN = "987654321:AAF-very-secret-bot-token"
OPERATOR = 42
STRANGER = 666
CONFIG = TelegramBotConfig(chat_ids=(OPERATOR, -100200), poll_timeout_s=1, max_backoff_s=2.0)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    server = await FakeTelegram(TOKEN).start()
    yield server
    await server.stop()


@asynccontextmanager
async def running_bot(
    url: str, api_url: str, config: TelegramBotConfig = CONFIG, token: str = TOKEN
) -> AsyncIterator[TelegramBot]:
    bus = await Bus.connect(url, name="telegram-bot")
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        bot = TelegramBot(BotApi(api_url, token, session), bus, config)
        task = asyncio.create_task(bot.run(stop))
        try:
            yield bot
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
            await bus.close()


async def seed(bus: Bus) -> None:
    """A small live log: two equity snapshots today, an open and a closed position, a
    strategy's attribution, a working and a filled order, risk running, a live worker."""
    now = time.time_ns()
    book = {"cash": 6_000.0, "fees": 3.5, "gross_exposure": 4_250.0}
    working = {"strategy": "ma_cross", "venue": "sim", "side": "buy", "order_qty": 2.0}
    events: list[Event] = [
        EquitySnapshot(ts=now - 2, equity=10_000.0, realized_pnl=0.0, unrealized_pnl=0.0, **book),
        EquitySnapshot(
            ts=now - 1, equity=10_250.0, realized_pnl=180.0, unrealized_pnl=70.0, **book
        ),
        PositionChanged(
            ts=now,
            venue="sim",
            symbol="BTC/USDT",
            qty=0.5,
            avg_price=42_000.0,
            realized_pnl=180.0,
            strategy="ma_cross",
        ),
        PositionChanged(
            ts=now, venue="sim", symbol="ETH/USDT", qty=0.0, avg_price=0.0, realized_pnl=-5.0
        ),
        StrategyPnL(ts=now, strategy="ma_cross", realized_pnl=180.0, unrealized_pnl=70.0),
        ExecutionReport(
            ts=now, status="accepted", client_order_id="o-1", symbol="BTC/USDT", **working
        ),
        ExecutionReport(
            ts=now, status="accepted", client_order_id="o-2", symbol="ETH/USDT", **working
        ),
        ExecutionReport(
            ts=now + 1,
            status="filled",
            client_order_id="o-2",
            symbol="ETH/USDT",
            fill_price=2_000.0,
            fill_qty=2.0,
            cum_qty=2.0,
            **working,
        ),
        SystemStatus(ts=now, status="RUNNING", reason="all rails green", source="risk"),
        Heartbeat(ts=now, worker="risk", instance="risk-1", seq=1, processed=10),
    ]
    for i, event in enumerate(events):
        await bus.publish(event, Envelope.root(content_id("telegram-seed", i), event.ts))


async def test_each_command_answers_from_the_log_and_strangers_get_nothing(
    nats_server: EmbeddedServer, bus: Bus, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await seed(bus)
    # the stranger writes first: its commands are never acted on nor answered
    fake.message(STRANGER, "/kill now", username="mallory")
    fake.message(STRANGER, "/status")
    commands = ["/status", "/pnl", "/positions", "/orders", "/daily", "/help", "/bogus"]
    for text in commands:
        fake.message(OPERATOR, text, username="alice")
    fake.message(OPERATOR, "just chatting")  # not a command: no answer
    async with running_bot(nats_server.url, fake.api_url) as bot:
        sent = await fake.wait_sent(len(commands))
        fake.message(STRANGER, "/positions")
        fake.message(OPERATOR, "/status@keel_test_bot")  # addressed to this bot by name
        fake.message(OPERATOR, "/status@another_bot")  # addressed to another bot: ignored
        fake.message(OPERATOR, "/pnl", date=int(time.time()) - 3600)  # queued an hour ago
        fake.message(OPERATOR, "/daily 2020-01-01")
        fake.message(OPERATOR, "/daily soon")
        sent = await fake.wait_sent(len(commands) + 4)
        await asyncio.sleep(0.3)
    assert {s.chat_id for s in fake.sent} == {OPERATOR}
    assert len(fake.sent) == len(commands) + 4 and bot.ignored == 3
    texts = [s.text for s in sent]
    status, pnl, positions, orders, daily, help_, unknown, named, stale, past, bad = texts
    assert status.startswith("System RUNNING: all rails green\nKill switch off\n")
    assert re.search(r"Workers: [01] alive of 1", status)  # alive unless the load stalled it
    assert "Open positions: 1" in status
    assert "Equity 10,250.00 (cash 6,000.00)" in pnl
    assert "Realized +180.00  unrealized +70.00" in pnl and "ma_cross: +250.00" in pnl
    assert positions.splitlines() == [
        "1 open position:",
        "  sim BTC/USDT +0.5 @ 42,000 (ma_cross)",
    ]
    assert orders.splitlines() == [
        "1 working order:",
        "  sim BTC/USDT buy 0/2 accepted o-1 (ma_cross)",
    ]
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert daily.startswith(f"Keel daily report {today} (UTC)\nPnL ")
    assert "(realized +180.00, unrealized change +70.00)" in daily
    assert "open positions at close: 1" in daily
    assert past == "no data for 2020-01-01 (UTC): the log holds no event of that day"
    assert bad == "date 'soon' is not a date like 2026-12-06"
    assert help_ == unknown and "/kill [reason]" in help_
    assert named.startswith("System RUNNING")
    assert stale.startswith("Ignored: the command is older than 300 s")
    assert await bus.last_event("GOVERNANCE", "gov.cmd.kill") is None
    refusals = [r.getMessage() for r in caplog.records if "not an allowed chat" in r.getMessage()]
    assert len(refusals) == 3 and all(f"chat {STRANGER}" in r for r in refusals)
    assert not any(
        "/kill now" in r.getMessage() or "mallory" in r.getMessage() for r in caplog.records
    )


QUIET = WorkerOptions(metrics_port=None, heartbeat_s=0.5)


async def test_kill_and_resume_are_governance_commands_naming_the_chat_and_risk_acts(
    nats_server: EmbeddedServer, bus: Bus, fake: FakeTelegram
) -> None:
    risk = Worker(risk_role(RiskLimits()), QUIET)
    names = {f"risk-{i.stream.lower()}" for i in risk.inputs}
    risk_bus = await Bus.connect(nats_server.url, name="risk")
    risk_task = asyncio.create_task(risk.run(risk_bus))
    try:
        async with running_bot(nats_server.url, fake.api_url):
            fake.message(OPERATOR, "/kill fat finger on BTC", username="alice")
            (killed,) = await fake.wait_sent(1)
            assert await wait_drained(bus, names, timeout=20)
            assert risk.decider.state.killed
            stored = await bus.last_event("GOVERNANCE", "gov.cmd.kill")
            assert stored is not None and isinstance(stored.event, GovernanceCommand)
            command = stored.event
            assert (command.action, command.reason, command.issued_by) == (
                "kill",
                "fat finger on BTC",
                f"telegram:{OPERATOR} (@alice)",
            )
            assert killed.text.startswith("Kill switch ON: risk rejects every signal.")
            assert f"By telegram:{OPERATOR} (@alice)" in killed.text

            fake.message(OPERATOR, "/status")
            fake.message(OPERATOR, "/resume")
            _, status, resumed = await fake.wait_sent(3)
            assert "Kill switch ON since" in status.text and "fat finger on BTC" in status.text
            assert resumed.text.startswith("Resumed.")
            assert await wait_drained(bus, names, timeout=20)
            assert not risk.decider.state.killed
            last = await bus.last_event("GOVERNANCE", "gov.cmd.resume")
            assert last is not None and last.event.issued_by == f"telegram:{OPERATOR}"
    finally:
        risk.stop()
        await asyncio.wait_for(risk_task, 10)
        await risk_bus.close()


async def test_the_same_kill_handled_twice_is_stored_once(
    nats_server: EmbeddedServer, bus: Bus, fake: FakeTelegram
) -> None:
    """A bot that dies after publishing, before confirming the update, is handed the update
    again: the event id comes from the chat and message, so the log keeps one kill."""
    fake.message(OPERATOR, "/kill")
    served = dict(fake.updates[-1])
    async with running_bot(nats_server.url, fake.api_url):
        await fake.wait_sent(1)
    fake.raw_update(served)  # the same update again, as Telegram redelivers it
    async with running_bot(nats_server.url, fake.api_url):
        (_, again) = await fake.wait_sent(2)
    assert "(already in the log)" in again.text
    info = await bus.js.stream_info("GOVERNANCE")
    assert info.state.messages == 1


async def test_a_429_is_waited_out_and_errors_never_stop_the_bot(
    nats_server: EmbeddedServer, fake: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    fake.fail_next("getUpdates", 429, retry_after=1)
    fake.fail_next("getUpdates", 409)
    fake.fail_next("getUpdates", 502)
    fake.fail_next("sendMessage", 429, retry_after=1)
    fake.raw_update({"message": {"chat": "not a chat"}})  # malformed: skipped
    fake.message(OPERATOR, "/help")
    async with running_bot(nats_server.url, fake.api_url):
        (answer,) = await fake.wait_sent(1)
    assert "/status" in answer.text
    polls = fake.calls_of("getUpdates")
    assert [c.status for c in polls[:4]] == [429, 409, 502, 200]
    assert polls[1].at - polls[0].at >= 0.95  # retry_after: 1 s
    sends = fake.calls_of("sendMessage")
    assert [c.status for c in sends] == [429, 200] and sends[1].at - sends[0].at >= 0.95
    messages = [r.getMessage() for r in caplog.records]
    assert any("Too Many Requests: retry after 1; retrying in 1.0 s" in m for m in messages)
    assert any("Conflict: terminated by other getUpdates request" in m for m in messages)
    assert any("skipped: not a Bot API update shape" in m for m in messages)


async def test_the_token_never_appears_in_logs_or_errors(
    nats_server: EmbeddedServer,
    fake: FakeTelegram,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    # a wrong token (401), an API nobody listens on (connection refused), a non-API answer
    async with running_bot(nats_server.url, fake.api_url, token=TOKEN + "x"):
        await asyncio.sleep(1.5)
    async with running_bot(nats_server.url, "http://127.0.0.1:9", token=TOKEN):
        await asyncio.sleep(1.5)
    async with running_bot(nats_server.url, fake.api_url + "/nowhere", token=TOKEN):
        await asyncio.sleep(1.5)
    messages = [r.getMessage() for r in caplog.records]
    assert any("401: Unauthorized" in m for m in messages)
    assert any("network: ClientConnectorError" in m for m in messages)
    assert any("not a Bot API answer" in m for m in messages)
    out = capsys.readouterr()
    for text in (caplog.text, *messages, out.out, out.err):
        assert TOKEN not in text and "very-secret" not in text


async def test_keel_run_telegram_bot_answers_and_keeps_the_token_out_of_its_output(
    nats_server: EmbeddedServer, fake: FakeTelegram, tmp_path: Path
) -> None:
    config = tmp_path / "keel.toml"
    config.write_text(
        f'[telegram_bot]\nchat_ids = [{OPERATOR}]\napi_url = "{fake.api_url}"\npoll_timeout_s = 1\n'
    )
    fake.fail_next("getUpdates", 429, retry_after=1)
    fake.message(OPERATOR, "/positions")
    env = {**os.environ, URL_ENV: nats_server.url, "KEEL_TELEGRAM_BOT_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli.app",
        "run",
        "telegram-bot",
        "--config",
        str(config),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        (answer,) = await fake.wait_sent(1, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert answer.text == "No open positions."
    assert proc.returncode == 0, err.decode()
    logged = (out + err).decode()
    assert "polling as @keel_test_bot for 1 chat(s)" in logged
    assert "Too Many Requests" in logged
    assert TOKEN not in logged and "very-secret" not in logged


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[SecuredServer]:
    server = SecuredServer(tmp_path / "nats")
    yield server
    server.stop()


async def test_the_bot_runs_as_the_telegram_user_of_nats_conf(
    secured: SecuredServer, fake: FakeTelegram
) -> None:
    """The bot's own user, ``telegram`` (docs/alerts.md): every read its commands make and
    the kill and resume are allowed, and the server refuses it nothing."""
    admin = await secured.connect("admin", ensure=True)
    bus = await Bus.connect(secured.url, name="telegram-bot", credentials=secured.creds("telegram"))
    stop = asyncio.Event()
    try:
        await seed(admin)
        commands = ["/status", "/pnl", "/positions", "/orders", "/daily"]
        commands += ["/kill by phone", "/status", "/resume", "/status"]
        for text in commands:
            fake.message(OPERATOR, text)
        async with aiohttp.ClientSession() as session:
            bot = TelegramBot(BotApi(fake.api_url, TOKEN, session), bus, CONFIG)
            task = asyncio.create_task(bot.run(stop))
            sent = await fake.wait_sent(len(commands))
            stop.set()
            await asyncio.wait_for(task, 20)
        assert not any(s.text.startswith("Cannot read") for s in sent), sent
        *_, killed, status_killed, resumed, status_resumed = [s.text for s in sent]
        assert killed.startswith("Kill switch ON") and "Kill switch ON since" in status_killed
        assert resumed.startswith("Resumed.") and "Kill switch off" in status_resumed
        for action in ("kill", "resume"):
            stored = await admin.last_event("GOVERNANCE", f"gov.cmd.{action}")
            assert stored is not None and stored.event.issued_by == f"telegram:{OPERATOR}"
        assert bus.refusals.seen == [], bus.refusals.seen
    finally:
        await bus.close()
        await admin.close()


async def test_a_kill_the_log_cannot_take_is_reported_as_not_published(
    nats_server: EmbeddedServer, fake: FakeTelegram
) -> None:
    """The server gone: the operator is told the kill was not recorded, and a stop ends the
    long poll at once instead of waiting out ``poll_timeout_s``."""
    slow_poll = msgspec.structs.replace(CONFIG, poll_timeout_s=30)
    async with running_bot(nats_server.url, fake.api_url, config=slow_poll):
        fake.message(OPERATOR, "/help")
        await fake.wait_sent(1)
        nats_server.stop()
        fake.message(OPERATOR, "/kill server is gone")
        (_, refused) = await fake.wait_sent(2, timeout=60)
        await asyncio.sleep(0.2)  # the bot is back in its 30 s long poll
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 10
    assert refused.text.startswith("kill NOT published: the log did not take it (")
