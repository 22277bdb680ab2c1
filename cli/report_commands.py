"""``keel report RUN_DIR``: a stored run's summary, its metrics re-checked, and report.html."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.backtest_commands import summary_table
from cli.console import console, errors, user_errors
from replay.report import REPORT_FILE, report_is_stale, write_report
from replay.run_check import check_run
from replay.run_files import load_run_data


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
