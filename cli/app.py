"""The ``keel`` console script."""

from __future__ import annotations

import typer

from cli import (
    backtest_commands,
    backup_commands,
    bot_commands,
    fleet_commands,
    gov_commands,
    log_commands,
    model_commands,
    publish_commands,
    reconcile_commands,
    report_commands,
    run_commands,
    status_commands,
    sweep_commands,
    venue_commands,
)

app = typer.Typer(
    name="keel",
    help="Keel: an event-sourced trading fleet on NATS JetStream.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command()(fleet_commands.demo)
app.command()(fleet_commands.up)
run_commands.app.command(name="telegram-bot")(bot_commands.telegram_bot)
app.add_typer(run_commands.app, name="run")
app.add_typer(model_commands.app, name="model")
app.add_typer(publish_commands.app, name="publish")
app.add_typer(venue_commands.app, name="venue")
app.add_typer(gov_commands.app, name="gov")
app.command()(log_commands.ingest)
app.command(name="tap")(log_commands.tap_command)
app.command()(log_commands.streams)
app.command()(status_commands.status)
app.command()(log_commands.kill)
app.command()(log_commands.resume)
app.command()(reconcile_commands.reconcile)
app.command()(backtest_commands.backtest)
app.command()(backtest_commands.replay)
app.command()(sweep_commands.sweep)
app.add_typer(report_commands.app, name="report")
app.command()(backup_commands.backup)
app.command()(backup_commands.restore)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
