"""``keel report RUN_DIR``: a stored run's summary, its metrics re-checked, and report.html;
``keel report daily``: one day's PnL report from the log (docs/alerts.md, "Daily report")."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import click
import msgspec
import typer
from typer.core import TyperGroup

from cli.backtest_commands import summary_table
from cli.console import console, errors, run, user_errors
from eventstore.bus import Bus
from eventstore.server import nats_url
from replay.report import REPORT_FILE, report_is_stale, write_report
from replay.run_check import check_run
from replay.run_files import load_run_data
from services.reports.daily import day_window, parse_day, previous_day
from services.reports.daily_html import write_page
from services.reports.daily_read import read_day
from services.reports.daily_text import body, no_data_line, title


def report(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by keel backtest --out.")
    ],
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Write report.html even if it is up to date.")
    ] = False,
) -> None:
    """Summarise a stored run, re-check its metrics from its events, and write report.html.

    The metrics are recomputed from events.parquet (polars and numpy) and compared with
    metrics.json; a disagreement prints a warning. report.html is written when it is
    missing, older than run.json, or with --rebuild.
    """
    with user_errors():
        data = load_run_data(run_dir)
        problems = check_run(data)
        path = run_dir / REPORT_FILE
        if rebuild or report_is_stale(run_dir):
            path = write_report(run_dir, data)
    result = data.record.result
    console.print(summary_table(result))
    for event in result.risk_events[:10]:
        console.print(
            f"[yellow]{event.ts} {event.rule} {event.action}: {event.detail}[/]", highlight=False
        )
    for problem in problems:
        errors.print(f"[bold yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    console.print(f"report: {path.resolve()}", markup=False, highlight=False, soft_wrap=True)


class _RunDirByDefault(TyperGroup):
    """``keel report RUN_DIR`` stays as it was: anything but a subcommand is a run's."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


def daily(
    day: Annotated[
        str | None,
        typer.Option("--date", help="The local day, YYYY-MM-DD (default: yesterday there)."),
    ] = None,
    timezone: Annotated[
        str, typer.Option("--tz", help="IANA time zone whose calendar day is reported.")
    ] = "UTC",
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write the page with the plots here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """One day's PnL report from the log: realized and unrealized PnL, trades and win
    rate, fees and funding, drawdown, per strategy, model and venue, open positions at
    the day's end and the day's alerts."""
    with user_errors():
        date = parse_day(day) if day else previous_day(time.time_ns(), timezone)
        window = day_window(date, timezone)

    async def main() -> None:
        with nats_url(start_server="store") as url:
            bus = await Bus.connect(url, name="daily-report")
            try:
                report = await read_day(bus, window)
            finally:
                await bus.close()
        page = write_page(report, html) if html is not None else None
        if as_json:
            sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        elif not report.has_data:
            console.print(no_data_line(report), markup=False, highlight=False)
        else:
            console.print(title(report), markup=False, highlight=False)
            console.print(body(report), markup=False, highlight=False, soft_wrap=True)
        if page is not None and not as_json:
            console.print(f"page: {page.resolve()}", markup=False, highlight=False, soft_wrap=True)

    run(main())


app = typer.Typer(
    cls=_RunDirByDefault,
    help="Reports: a stored backtest run (keel report RUN_DIR) or a day of the log.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("run")(report)
app.command("daily")(daily)
