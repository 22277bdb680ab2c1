"""The daily report (docs/alerts.md, "Daily report"): the figures of a hand-computed day
(tests/daily_day.py) folded purely, then read from a real nats-server by ``keel report
daily`` (JSON, text, the HTML page with its plots), a day without data, and bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from contracts.envelope import Envelope, content_id
from contracts.system_events import DeadLetter
from eventstore.bus import Bus
from eventstore.server import URL_ENV, EmbeddedServer
from services.reports.daily import DailyFold, DailyReport, day_window, previous_day
from services.reports.daily_read import read_day
from services.reports.daily_text import body
from tests import daily_day
from tests.conftest import ROOT

WINDOW = day_window(date(2026, 12, 5), daily_day.TZ)


def keel_report(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``keel report ARGS`` through the report command group (cli/report_commands.py)."""
    code = "from cli.report_commands import app; app(prog_name='keel report')"
    env = {**os.environ, URL_ENV: url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )


def folded() -> DailyReport:
    fold = DailyFold(WINDOW)
    for event in daily_day.events():
        fold.observe(event)
    return fold.report()


def assert_hand_computed(r: DailyReport) -> None:
    assert (r.day, r.has_data) == ("2026-12-05", True)
    assert (r.start, r.end) == (daily_day.START, daily_day.END)
    assert r.opening_equity == pytest.approx(9_999.9)
    assert r.closing_equity == pytest.approx(10_008.19)
    assert r.pnl == pytest.approx(8.29)  # 10 realized - 1 unrealized - 0.21 fees - 0.5 funding
    assert r.pnl == pytest.approx(r.closing_equity - r.opening_equity)
    assert (r.realized, r.unrealized, r.unrealized_change) == pytest.approx((10.0, -1.0, -1.0))
    assert (r.fees, r.funding) == pytest.approx((0.21, 0.5))
    assert r.max_drawdown == pytest.approx(10_019.8 - 10_008.19)
    assert r.max_drawdown_pct == pytest.approx((10_008.19 / 10_019.8 - 1) * 100)
    assert (r.fills, r.trades, r.win_rate) == (4, 2, 0.5)
    s1, s2 = r.strategies
    assert (s1.strategy, s1.trades, s1.win_rate) == ("s1", 1, 1.0)
    assert s1.pnl == pytest.approx(18.39)  # 20 - 1 - 0.21 - 0.5 - (-0.1 before the day)
    assert (s1.realized, s1.fees, s1.funding) == pytest.approx((20.0, 0.11, 0.5))
    assert (s2.strategy, s2.trades, s2.win_rate) == ("s2", 1, 0.0)
    assert s2.pnl == pytest.approx(-10.1)
    (m1,) = r.models
    assert (m1.strategy, m1.model, m1.trades) == ("s1", "m1", 1)
    assert m1.pnl == pytest.approx(18.39)
    v1, v2 = r.venues
    assert (v1.venue, v1.fills, v1.trades, v1.win_rate) == ("v1", 2, 1, 1.0)
    assert (v1.pnl, v1.fees) == pytest.approx((19.8, 0.11))  # 120 - 100 - 0.1 - 0.1
    assert (v2.venue, v2.fills, v2.trades, v2.win_rate) == ("v2", 2, 1, 0.0)
    assert (v2.pnl, v2.fees) == pytest.approx((-10.1, 0.1))  # 2 x (45 - 50) - 0.05 - 0.05
    (position,) = r.positions
    assert (position.venue, position.symbol, position.qty) == ("v1", "SOL/USDT", 1.0)
    kinds = [(a.kind, a.source) for a in r.alerts]
    assert kinds == [
        ("command", "alice"),
        ("risk", "max_drawdown"),
        ("status", "risk"),
        ("dead letter", "risk"),
        ("discrepancy", "v1"),
    ]
    assert r.alerts[2].text == "HALTED: max drawdown"  # RUNNING again was no change
    assert len(r.curve_ts) == 4 and r.curve_equity[-1] == pytest.approx(10_008.19)


def test_a_hand_computed_day() -> None:
    assert_hand_computed(folded())


def test_the_day_is_the_time_zones_calendar_day() -> None:
    assert WINDOW.end - WINDOW.start == 24 * daily_day.H
    spring = day_window(date(2026, 3, 29), "Europe/Berlin")  # clocks go forward: 23 hours
    assert spring.end - spring.start == 23 * daily_day.H
    assert previous_day(daily_day.START, "Europe/Berlin") == date(2026, 12, 4)
    assert previous_day(daily_day.START, "UTC") == date(2026, 12, 3)  # 23:00Z on the 4th
    assert previous_day(daily_day.END + 1, "Europe/Berlin") == date(2026, 12, 5)


def test_the_chat_text_is_short_and_complete() -> None:
    text = body(folded())
    assert text.splitlines()[0].startswith("PnL +8.29 (realized +10.00")
    for needle in ("win rate 50%", "s1/m1", "v2: 1 trades -10.10", "v1 SOL/USDT +1 @ 10"):
        assert needle in text
    assert "alerts: 5 (1 command, 1 dead letter, 1 discrepancy, 1 risk, 1 status)" in text
    assert "04:00" not in text and "03:00 status risk: HALTED" in text  # local (UTC+1) times
    assert len(text) < 4_096


def test_a_day_without_events() -> None:
    fold = DailyFold(day_window(date(2026, 12, 1), "UTC"))
    report = fold.report()
    assert not report.has_data and report.trades == 0 and report.win_rate is None
    assert body(report) == "no data for 2026-12-01 (UTC): the log holds no event of that day"


# --- from the log ---------------------------------------------------------------------------------


@pytest.fixture
async def day_server(tmp_path: Path) -> EmbeddedServer:
    server = EmbeddedServer(tmp_path / "nats").start()
    bus = await Bus.connect(server.url, name="test")
    try:
        for i, event in enumerate(daily_day.events()):
            await bus.publish(event, Envelope.root(content_id("day", i), event.ts))
    finally:
        await bus.close()
    return server


async def test_the_log_read_gives_the_hand_computed_day(day_server: EmbeddedServer) -> None:
    bus = await Bus.connect(day_server.url, name="test")
    try:
        assert_hand_computed(await read_day(bus, WINDOW))
    finally:
        await bus.close()
        day_server.stop()


def test_keel_report_daily_json_text_and_html(day_server: EmbeddedServer, tmp_path: Path) -> None:
    try:
        url = day_server.url
        args = ("daily", "--date", daily_day.DAY, "--tz", daily_day.TZ)
        result = keel_report(url, *args, "--json")
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert math.isclose(data["pnl"], 8.29) and data["trades"] == 2
        assert data["win_rate"] == 0.5 and len(data["alerts"]) == 5

        page = tmp_path / "daily.html"
        result = keel_report(url, *args, "--html", str(page))
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "Keel daily report 2026-12-05 (Europe/Berlin)"
        assert lines[1].startswith("PnL +8.29")
        assert lines[-1] == f"page: {page.resolve()}"
        html = page.read_text(encoding="utf-8")
        assert 'id="equity"' in html and 'id="drawdown"' in html  # the backtest report's plots
        assert "Plotly.newPlot" in html and "https://cdn" not in html  # plotly.js inline
        assert "HALTED: max drawdown" in html and "SOL/USDT" in html

        earlier = keel_report(url, "daily", "--date", "2026-11-30", "--tz", daily_day.TZ)
        assert earlier.returncode == 0, earlier.stderr
        assert earlier.stdout.strip() == (
            "no data for 2026-11-30 (Europe/Berlin): the log holds no event of that day"
        )
    finally:
        day_server.stop()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--date", "2026-13-40"), "is not a date"),
        (("--date", "yesterday"), "is not a date"),
        (("--tz", "Mars/Olympus"), "not an IANA time zone"),
    ],
)
def test_bad_date_or_zone_is_one_line(args: tuple[str, ...], needle: str) -> None:
    result = keel_report("nats://127.0.0.1:1", "daily", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines


def test_a_busy_day_stays_one_short_message() -> None:
    fold = DailyFold(WINDOW)
    for i in range(40):
        at = daily_day.START + i * 60 * 1_000_000_000
        fold.observe(daily_day.book(at, f"strategy{i:02d}", "", float(i), 0.0, 0.0))
        fold.observe(
            DeadLetter(ts=at, worker="risk", subject="sig.x", reason="x" * 200, payload=b"")
        )
    text = body(fold.report())
    assert "  ... and 28 more" in text  # 40 strategies, 12 shown
    assert "  ... and 32 more" in text  # 40 alerts, 8 shown
    assert "alerts: 40 (40 dead letter)" in text
    assert len(text) < 4_096
