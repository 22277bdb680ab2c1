"""``keel gov leaderboard``: how each strategy, model and venue traded, the routing weights,
budgets and the last promotion decision, all read from the log (docs/governance.md,
"Leaderboard and metrics")."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from nats.js.api import DeliverPolicy
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.console import console, fail, load_config_or_exit, run
from cli.timeparse import parse_time
from contracts.events import Instrument
from contracts.model_events import ModelVariant
from contracts.timestamps import iso_ns
from eventstore.bus import Bus, Stored, read_message
from eventstore.log_reader import last_per_subject, read_caught_up, read_until
from eventstore.server import nats_url
from services.config import KeelConfig
from services.governance.leaderboard import Figures, Leaderboard, Standings

NO_TRADES = "no trades yet: the log holds no closed round trip"
IDLE_S = 10.0
"""A stream that delivers nothing this long before the end it had when the read began."""


class LeaderboardOutput(msgspec.Struct, frozen=True):
    """``--json``: the board and the time its trades count from (ns, 0: all)."""

    since: int
    board: Leaderboard


def configured_variants(config: KeelConfig) -> list[tuple[str, tuple[ModelVariant, ...]]]:
    return [
        (
            s.instance_name,
            tuple(ModelVariant(tag=v.tag, weight=v.weight, canary=v.canary) for v in s.variants),
        )
        for s in config.strategies
    ]


async def read_board(bus: Bus, standings: Standings) -> Leaderboard:
    """Fold the log: instruments (contract sizes), then every execution report and
    attribution in stored order up to the end each stream had when its read began (all of
    them, however long that takes), then the latest roster, budget and promotion per
    strategy."""
    for item in await last_per_subject(bus, "MARKET", "md.instrument.>"):
        if isinstance(item.event, Instrument):
            standings.size_of(item.event.venue, item.event.symbol, item.event.contract_size)
    for stream, subject in (("EXECUTION", "exec.report.>"), ("PORTFOLIO", "pf.pnl.>")):
        end = (await bus.js.stream_info(stream)).state.last_seq
        stalled = f"reading {subject} from {stream}: the server stopped delivering"
        async for msg in read_until(
            bus.js, stream, end, subjects=(subject,), idle_s=IDLE_S, stalled=stalled
        ):
            item = read_message(msg, stream)
            if isinstance(item, Stored):
                standings.observe(item.event)
    for subject in ("gov.model.>", "gov.alloc.>", "gov.promotion.>"):
        items = await read_caught_up(bus, "GOVERNANCE", subject, DeliverPolicy.LAST_PER_SUBJECT)
        for item in items:
            standings.observe(item.event)
    return standings.board()


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _figures_table(title: str, board: Leaderboard, scope: str) -> Table:
    keys = {"strategy": ("strategy",), "model": ("strategy", "model"), "venue": ("venue",)}[scope]
    table = Table(*keys, "trades", "PnL", "fees", "Sharpe", "Sortino", "win rate", "max DD")
    table.title, table.title_justify = title, "left"
    for row in board.rows:
        if row.scope != scope:
            continue
        f: Figures = row.figures
        names = {"strategy": row.strategy, "model": row.model or "(none)", "venue": row.venue}
        pnl = Text(f"{f.pnl:,.2f}", style="green" if f.pnl > 0 else "red" if f.pnl < 0 else "")
        table.add_row(
            *(names[k] for k in keys),
            str(f.trades),
            pnl,
            f"{f.fees:,.2f}",
            _num(f.sharpe),
            _num(f.sortino),
            "-" if f.win_rate is None else f"{f.win_rate:.1%}",
            f"{f.max_drawdown:,.2f}",
        )
    return table


def render(board: Leaderboard, since: int) -> RenderableType:
    parts: list[RenderableType] = []
    if not board.rows:
        parts.append(Text(NO_TRADES, style="dim italic"))
    else:
        head = f"closed since {iso_ns(since)}" if since else "all closed trades"
        parts.append(Text(f"{head}; {board.open_trades} round trip(s) still open", style="dim"))
        parts.append(_figures_table("Per strategy", board, "strategy"))
        parts.append(_figures_table("Per strategy and model", board, "model"))
        parts.append(_figures_table("Per venue", board, "venue"))
    if board.books:
        books = Table("strategy", "model", "book PnL", "realized", "unrealized", "at")
        books.title, books.title_justify = "Attribution (latest pf.pnl)", "left"
        for b in board.books:
            books.add_row(
                b.strategy,
                b.model or "(all)",
                f"{b.pnl:,.2f}",
                f"{b.realized:,.2f}",
                f"{b.unrealized:,.2f}",
                iso_ns(b.at),
            )
        parts.append(books)
    if board.weights:
        weights = Table("strategy", "model", "role", "weight", "share", "from", "reason")
        weights.title, weights.title_justify = "Routing weights", "left"
        for w in board.weights:
            weights.add_row(
                w.strategy,
                w.model,
                "canary" if w.canary else "current",
                f"{w.weight:g}",
                f"{w.share:.1%}",
                f"roster {iso_ns(w.at)}" if w.source == "roster" else "config",
                w.reason,
            )
        parts.append(weights)
    if board.budgets:
        budgets = Table("strategy", "model", "budget", "bound", "at", "reason")
        budgets.title, budgets.title_justify = "Budgets (latest gov.alloc)", "left"
        for b in board.budgets:
            budgets.add_row(b.strategy, b.model, f"{b.weight:.4f}", b.bound, iso_ns(b.at), b.reason)
        parts.append(budgets)
    if board.promotions:
        promotions = Table(
            "strategy", "current", "canary", "decision", "log Λ / thr", "at", "reason"
        )
        promotions.title, promotions.title_justify = "Last promotion decision", "left"
        for p in board.promotions:
            promotions.add_row(
                p.strategy,
                p.current,
                p.canary,
                p.decision,
                f"{p.statistic:.3f} / {p.threshold:.3f}",
                iso_ns(p.at),
                p.reason,
            )
        parts.append(promotions)
    return Group(*parts)


def leaderboard(
    since: Annotated[
        str | None,
        typer.Option("--since", help="Count trades closed since (ISO time or age like 7d)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    config: Annotated[
        Path | None,
        typer.Option("--config", help="Fleet config: the configured variants' weights."),
    ] = None,
) -> None:
    """PnL, Sharpe, Sortino, win rate, max drawdown and trades per strategy, model and venue,
    with the routing weights, budgets and the last promotion decision, from the log."""
    try:
        since_ns = int(parse_time(since).timestamp() * 1e9) if since else 0
    except ValueError as exc:
        raise fail(str(exc)) from None
    fleet = load_config_or_exit(config)

    async def main() -> None:
        with nats_url(start_server="store") as url:
            bus = await Bus.connect(url, name="leaderboard")
            try:
                standings = Standings(configured_variants(fleet), since=since_ns)
                board = await read_board(bus, standings)
            finally:
                await bus.close()
        if as_json:
            sys.stdout.write(msgspec.json.encode(LeaderboardOutput(since_ns, board)).decode())
            sys.stdout.write("\n")
        else:
            console.print(render(board, since_ns))

    run(main())
