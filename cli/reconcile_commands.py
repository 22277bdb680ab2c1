"""``keel reconcile VENUE``: what reconciliation found at a venue, and the operator's way out
of a halt (docs/reconciliation.md).

Without options it shows the gateway's last status (mode, state, why) and every discrepancy
recorded since the last adoption, and exits 1 while the venue is halted. ``--adopt --reason``
records a ``VenueAdoption``: the gateway takes the venue's positions and balances as Keel's
new baseline and lifts the halt. Both are events on the log; nothing here talks to the
exchange.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from nats.js.api import DeliverPolicy
from rich.table import Table
from rich.text import Text

from cli.console import console, fail, load_config_or_exit, run
from contracts.envelope import Envelope, content_id
from contracts.subjects import SubjectError, name_token
from contracts.timestamps import iso_ns
from contracts.venue_events import Discrepancy, VenueAdoption, VenueStatus
from eventstore.bus import Bus, Stored
from eventstore.log_reader import last_or_none, read_caught_up
from eventstore.server import nats_url

SHOWN = 50
"""Discrepancies listed (the newest); the count says how many there were."""


def reconcile(
    venue: Annotated[str, typer.Argument(help="The venue's name ([[venues]] name).")],
    adopt: Annotated[
        bool,
        typer.Option("--adopt", help="Take the venue's view as Keel's and lift the halt."),
    ] = False,
    reason: Annotated[
        str, typer.Option("--reason", help="Why the venue's view is right (needed by --adopt).")
    ] = "",
    config: Annotated[
        Path | None, typer.Option("--config", help="Fleet config: checks the venue name.")
    ] = None,
) -> None:
    """Show a venue's reconciliation findings; --adopt --reason lifts its halt."""
    try:
        name_token(venue, "venue")
    except SubjectError as exc:
        raise fail(str(exc)) from None
    if config is not None and load_config_or_exit(config).venue(venue) is None:
        raise fail(f"venue {venue!r} is not a [[venues]] entry of {config}")
    if adopt and not reason.strip():
        raise fail("--adopt needs --reason: say why the venue's view is right")
    if reason and not adopt:
        raise fail("--reason goes with --adopt")
    if adopt:
        run(_adopt(venue, reason.strip()))
        return
    if run(_show(venue)):
        raise typer.Exit(1)


async def _adopt(venue: str, reason: str) -> None:
    now = time.time_ns()
    event = VenueAdoption(ts=now, venue=venue, reason=reason, issued_by="cli")
    with nats_url(start_server=False) as url:
        bus = await Bus.connect(url, name="reconcile-cli")
        try:
            await bus.publish(event, Envelope.root(content_id("adopt", venue, now), now))
        finally:
            await bus.close()
    console.print(
        f"adoption of {venue}'s view published at {iso_ns(now)}: {reason}\n"
        "the gateway takes the venue's positions and balances as the baseline and lifts "
        "the halt (watch it: keel status)"
    )


async def _show(venue: str) -> bool:
    """Print the report; True when the venue is halted."""
    with nats_url(start_server=False) as url:
        bus = await Bus.connect(url, name="reconcile-cli")
        try:
            status = await last_or_none(bus, "VENUE", f"venue.status.{venue}")
            adopted = await last_or_none(bus, "VENUE", f"venue.adopt.{venue}")
            start = adopted.seq + 1 if adopted is not None else 1
            found = await read_caught_up(
                bus,
                "VENUE",
                f"venue.recon.{venue}",
                DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
            )
        finally:
            await bus.close()
    state = status.event if status is not None else None
    if not isinstance(state, VenueStatus):
        console.print(f"no gateway has reported on venue {venue} yet")
        return False
    head = Text.assemble(
        (f"venue {venue}", "bold"),
        "  mode ",
        (state.mode.upper(), "bold white on red" if state.mode == "live" else "bold"),
        "  gateway ",
        (state.state, "bold red" if state.state == "halted" else "bold"),
    )
    if state.reason:
        head.append(f" ({state.reason})")
    console.print(head)
    if state.last_reconcile:
        console.print(f"last reconciliation {iso_ns(state.last_reconcile)}")
    if adopted is not None and isinstance(adopted.event, VenueAdoption):
        console.print(
            f"last adoption {iso_ns(adopted.event.ts)}: {adopted.event.reason}", markup=False
        )
    console.print(_table(found))
    return state.state == "halted"


def _table(found: list[Stored]) -> Table | Text:
    rows = [s.event for s in found if isinstance(s.event, Discrepancy)]
    if not rows:
        return Text("no discrepancies since the last adoption")
    title = f"{len(rows)} discrepancies since the last adoption"
    if len(rows) > SHOWN:
        title += f" (the newest {SHOWN})"
    table = Table(
        "time",
        "kind",
        "symbol/asset",
        "venue",
        "keel",
        "action",
        "detail",
        title=title,
        box=None,
        pad_edge=False,
    )
    for d in rows[-SHOWN:]:
        numbers = d.kind in ("position_mismatch", "balance_mismatch")
        table.add_row(
            iso_ns(d.ts),
            d.kind,
            d.symbol or d.asset,
            f"{d.venue_value:.10g}" if numbers else "-",
            f"{d.keel_value:.10g}" if numbers else "-",
            Text(d.action),
            Text(d.detail),  # the exchange's words: never markup
        )
    return table
