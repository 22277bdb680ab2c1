"""The leaderboard (``keel gov leaderboard``) and governance metrics: figures on a
hand-computed log published on a real nats-server, the command on an empty log, with data
and without a server, and the metrics a worker exports after the same events."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from cli.leaderboard_commands import NO_TRADES, read_board
from contracts.envelope import Envelope, content_id
from contracts.events import Event, ExecutionReport, Instrument, StrategyPnL
from contracts.model_events import ModelVariant
from eventstore.bus import Bus
from eventstore.server import URL_ENV, EmbeddedServer
from services.governance.leaderboard import Figures, Standings
from services.runtime.telemetry import WorkerMetrics
from tests.conftest import ROOT, keel
from tests.factories import fill as factory_fill
from tests.model_event_samples import ALLOCATION, PROMOTION, ROSTER

T = 1_700_000_000_000_000_000
S = 1_000_000_000


def fill(
    at: int,
    side: str,
    qty: float,
    price: float,
    fee: float = 0.0,
    *,
    strategy: str = "alpha",
    tag: str = "v1",
    venue: str = "sim",
    symbol: str = "BTC/USDT",
) -> ExecutionReport:
    return factory_fill(
        side,
        qty,
        price,
        fee,
        ts=T + at * S,
        client_order_id=f"{strategy}-{tag}-{at}",
        strategy=strategy,
        symbol=symbol,
        venue=venue,
        model_tag=tag,
    )


# alpha/v1: long 1 @100 -> 110 (fees 0.1 + 0.11), then short 2 @110 -> 121 (fees 0.2 + 0.2)
# alpha/v2: long 1 @100, a sell of 2 @105 (fee 0.2) closes it and opens a short of 1, which
#           a buy of 1 @100 closes; beta/v1 on venue "other": long 2 @50, out at 40 and 70.
REPORTS = (
    fill(1, "buy", 1, 100, 0.1),
    fill(2, "sell", 1, 110, 0.11),
    fill(3, "sell", 2, 110, 0.2),
    fill(4, "buy", 2, 121, 0.2),
    fill(5, "buy", 1, 100, tag="v2"),
    fill(6, "sell", 2, 105, 0.2, tag="v2"),
    fill(7, "buy", 1, 100, tag="v2"),
    fill(8, "buy", 2, 50, strategy="beta", venue="other", symbol="ETH/USDT"),
    fill(9, "sell", 1, 40, strategy="beta", venue="other", symbol="ETH/USDT"),
    fill(10, "sell", 1, 70, strategy="beta", venue="other", symbol="ETH/USDT"),
    fill(11, "buy", 3, 100, tag="v1"),  # still open
)
V1 = [(10 - 0.21, 100.0), (2 * (110 - 121) - 0.4, 220.0)]  # (net pnl, entry notional)
V2 = [(5 - 0.1, 100.0), (5 - 0.1, 105.0)]
BETA = [(-10 + 20, 100.0)]


def expected(trades: list[tuple[float, float]]) -> Figures:
    """The leaderboard's definitions, written out: r = pnl / notional per trade."""
    r = [pnl / notional for pnl, notional in trades]
    n = len(r)
    mean = sum(r) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / (n - 1)) if n > 1 else 0.0
    downside = math.sqrt(sum(min(x, 0.0) ** 2 for x in r) / n)
    cum = peak = dd = 0.0
    for pnl, _ in trades:
        cum += pnl
        peak = max(peak, cum)
        dd = max(dd, peak - cum)
    return Figures(
        trades=n,
        pnl=cum,
        fees=0.0,
        sharpe=mean / std if std > 0 else None,
        sortino=mean / downside if downside > 0 else None,
        win_rate=sum(p > 0 for p, _ in trades) / n,
        max_drawdown=dd,
    )


def assert_figures(got: Figures, want: Figures) -> None:
    assert got.trades == want.trades
    for name in ("pnl", "sharpe", "sortino", "win_rate", "max_drawdown"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert a == pytest.approx(b, rel=1e-12, abs=1e-12), name


async def publish(bus: Bus, events: list[Event]) -> None:
    for i, event in enumerate(events):
        await bus.publish(event, Envelope.root(content_id("board", i), event.ts))


def hand_log() -> list[Event]:
    book = StrategyPnL(ts=T + 12 * S, strategy="alpha", model_tag="v1", realized_pnl=-12.61)
    return [*REPORTS, ROSTER, ALLOCATION, PROMOTION, book]


# --- the fold --------------------------------------------------------------------------------


def test_figures_by_hand() -> None:
    """Sharpe -0.0139 and Sortino -0.0272 for v1 (returns 0.0979 and -0.10182), drawdown
    22.4 from the peak 9.79; the strategy row takes every trade in the order they closed."""
    standings = Standings()
    closed = [t for r in REPORTS if (t := standings.observe(r)) is not None]
    assert [round(t.pnl, 10) for t in closed] == [9.79, -22.4, 4.9, 4.9, 10.0]
    assert closed[2].fees == pytest.approx(0.1) and closed[3].notional == 105.0
    v1 = standings.figures("model", "alpha", "v1")
    assert_figures(v1, expected(V1))
    assert v1.sharpe == pytest.approx(-0.013873, abs=1e-6)
    assert v1.sortino == pytest.approx(-0.027211, abs=1e-6)
    assert (v1.win_rate, v1.max_drawdown) == (0.5, pytest.approx(22.4))
    assert_figures(standings.figures("model", "alpha", "v2"), expected(V2))
    assert_figures(standings.figures("strategy", "alpha"), expected(V1 + V2))
    assert_figures(standings.figures("venue", venue="sim"), expected(V1 + V2))
    beta = standings.figures("venue", venue="other")
    assert_figures(beta, expected(BETA))
    assert (beta.sharpe, beta.sortino, beta.win_rate) == (None, None, 1.0)  # one winning trade
    board = standings.board()
    assert board.open_trades == 1 and board.reports == len(REPORTS)
    assert [(r.scope, r.strategy, r.model, r.venue) for r in board.rows] == [
        ("strategy", "alpha", "", ""),
        ("strategy", "beta", "", ""),
        ("model", "alpha", "v1", ""),
        ("model", "alpha", "v2", ""),
        ("model", "beta", "v1", ""),
        ("venue", "", "", "other"),
        ("venue", "", "", "sim"),
    ]


def test_since_counts_only_trades_closed_after_it_and_contract_sizes_scale_pnl() -> None:
    standings = Standings(since=T + 3 * S)  # v1's first trade closed at 2 s: not counted
    standings.size_of("sim", "BTC/USDT", 50.0)
    for report in REPORTS[:4]:
        standings.observe(report)
    v1 = standings.figures("model", "alpha", "v1")
    assert (v1.trades, v1.pnl) == (1, pytest.approx(2 * (110 - 121) * 50 - 0.4))


def test_weights_come_from_the_latest_roster_else_the_config() -> None:
    configured = [
        ("gamma", (ModelVariant("a", 3.0), ModelVariant("b", 1.0, canary=True))),
        ("plain", ()),
    ]
    standings = Standings(configured)
    standings.observe(ROSTER)
    weights = {(w.strategy, w.model): w for w in standings.board().weights}
    assert set(weights) == {("gamma", "a"), ("gamma", "b"), ("ma_hmm", "v3"), ("ma_hmm", "v4")}
    assert (weights["gamma", "b"].share, weights["gamma", "b"].source) == (0.25, "config")
    v4 = weights["ma_hmm", "v4"]
    assert (v4.canary, v4.source, v4.share, v4.at) == (True, "roster", pytest.approx(0.1), T)


# --- on a real server ------------------------------------------------------------------------


async def test_the_board_is_read_from_the_log(nats_server: EmbeddedServer, bus: Bus) -> None:
    instrument = Instrument(ts=T, venue="other", symbol="ETH/USDT", base="ETH", quote="USDT")
    await publish(bus, [instrument, *hand_log()])
    board = await read_board(bus, Standings())
    rows = {(r.scope, r.strategy, r.model, r.venue): r.figures for r in board.rows}
    assert_figures(rows["model", "alpha", "v1", ""], expected(V1))
    assert_figures(rows["strategy", "alpha", "", ""], expected(V1 + V2))
    assert_figures(rows["venue", "", "", "other"], expected(BETA))
    (promotion,) = board.promotions
    assert (promotion.decision, promotion.statistic, promotion.threshold) == ("hold", 1.2, 2.995732)
    assert promotion.reason == "the sequential test has not crossed"
    (budget,) = board.budgets
    assert (budget.model, budget.weight, budget.bound) == ("v3", 0.4, "max_step")
    (book,) = board.books
    assert (book.strategy, book.model, book.pnl) == ("alpha", "v1", -12.61)
    assert [w.model for w in board.weights] == ["v3", "v4"]


async def test_the_command_with_data_as_a_table_and_as_json(
    nats_server: EmbeddedServer, bus: Bus
) -> None:
    await publish(bus, hand_log())
    table = await asyncio.to_thread(keel, nats_server.url, "gov", "leaderboard")
    assert table.returncode == 0, table.stderr
    for text in ("Per strategy and model", "Per venue", "-12.61", "Routing weights", "hold"):
        assert text in table.stdout, text
    assert "the sequential test has not crossed" in table.stdout
    done = await asyncio.to_thread(keel, nats_server.url, "gov", "leaderboard", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["since"] == 0
    rows = {(r["scope"], r["strategy"], r["model"], r["venue"]): r for r in out["board"]["rows"]}
    v2 = rows["model", "alpha", "v2", ""]["figures"]
    assert (v2["trades"], v2["win_rate"]) == (2, 1.0)
    assert v2["pnl"] == pytest.approx(9.8)
    later = await asyncio.to_thread(
        keel, nats_server.url, "gov", "leaderboard", "--json", "--since", "2100-01-01"
    )
    assert later.returncode == 0 and json.loads(later.stdout)["board"]["rows"] == []


async def test_the_command_on_an_empty_log_says_no_trades_yet(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    config = tmp_path / "keel.toml"
    config.write_text(
        '[[strategies]]\nname = "ma_cross"\ninstance = "mc"\n'
        'variants = [{ tag = "v1", weight = 0.9 }, { tag = "v2", weight = 0.1, canary = true }]\n'
    )
    done = await asyncio.to_thread(
        keel, nats_server.url, "gov", "leaderboard", "--config", str(config)
    )
    assert done.returncode == 0, done.stderr
    assert NO_TRADES in done.stdout
    assert "Routing weights" in done.stdout and "config" in done.stdout  # the configured ones
    bad = await asyncio.to_thread(keel, nats_server.url, "gov", "leaderboard", "--since", "soon")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_without_a_server_the_command_says_so_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    done = subprocess.run(
        [sys.executable, "-m", "cli.app", "gov", "leaderboard"],
        capture_output=True,
        text=True,
        env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode != 0
    assert done.stderr.startswith("error:") and done.stderr.strip().count("\n") == 0
    assert "Traceback" not in done.stderr


# --- metrics ---------------------------------------------------------------------------------


def samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    body = urllib.request.urlopen(request, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def test_metrics_after_the_events() -> None:
    metrics = WorkerMetrics("governance", 0)
    try:
        for event in hand_log():
            metrics.published(event, "x.y", True, None)
        metrics.published(REPORTS[0], "x.y", False, None)  # a de-duplicated copy: not folded
        got = samples(metrics.port)
    finally:
        metrics.close()

    def value(name: str, **labels: str) -> float:
        return got[name, tuple(sorted(labels.items()))]

    model = {"scope": "model", "strategy": "alpha", "model_tag": "v1", "venue": "all"}
    want = expected(V1)
    assert value("keel_leaderboard_trades", **model) == 2
    assert value("keel_leaderboard_pnl", **model) == pytest.approx(want.pnl)
    assert value("keel_leaderboard_sharpe", **model) == pytest.approx(want.sharpe)
    assert value("keel_leaderboard_sortino", **model) == pytest.approx(want.sortino)
    assert value("keel_leaderboard_win_rate", **model) == 0.5
    assert value("keel_leaderboard_max_drawdown", **model) == pytest.approx(22.4)
    venue = {"scope": "venue", "strategy": "all", "model_tag": "all", "venue": "other"}
    assert value("keel_leaderboard_trades", **venue) == 1
    assert ("keel_leaderboard_sharpe", tuple(sorted(venue.items()))) not in got  # undefined
    assert value("keel_gov_roster_weight", strategy="ma_hmm", model_tag="v4", canary="true") == 0.1
    assert value("keel_gov_budget_weight", strategy="ma_hmm", model_tag="v3", canary="false") == 0.4
    assert value("keel_gov_budget_total", strategy="ma_hmm") == 0.4
    decision = {"strategy": "ma_hmm", "canary": "v4", "decision": "hold"}
    assert value("keel_gov_promotions_total", **decision) == 1
    assert value("keel_gov_promotion_statistic", strategy="ma_hmm", canary="v4") == 1.2
    assert value("keel_gov_promotion_threshold", strategy="ma_hmm", canary="v4") == 2.995732
    assert (
        value("keel_gov_promotion_sharpe", strategy="ma_hmm", model_tag="v4", arm="canary") == 0.3
    )
