"""``keel gov``: an operator's governance commands, each an event on ``gov.cmd.*`` that
names who issued it (docs/governance.md, "Playbooks")."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cli.console import console, fail, run
from cli.timeparse import iso_ns
from contracts.envelope import Envelope, content_id
from contracts.events import GovernanceCommand
from contracts.subjects import SubjectError, name_token
from eventstore.bus import Bus
from eventstore.server import nats_url

app = typer.Typer(help="Governance commands (playbooks).", no_args_is_help=True)


@app.command()
def enable(
    strategy: Annotated[str, typer.Argument(help="The strategy instance a playbook disabled.")],
    reason: Annotated[str, typer.Option("--reason", help="Why it may trade again.")],
    by: Annotated[str, typer.Option("--by", help="Who re-enables it (recorded).")] = "cli",
) -> None:
    """Re-enable a strategy the rejections playbook disabled; risk lets its entries pass
    again once the governance worker records the enable."""
    try:
        name_token(strategy, "strategy")
    except SubjectError as exc:
        raise fail(str(exc)) from None
    if not reason.strip():
        raise fail("--reason must say why the strategy may trade again")

    async def main() -> None:
        now = time.time_ns()
        command = GovernanceCommand(
            ts=now, action="enable", reason=reason, issued_by=by, strategy=strategy
        )
        with nats_url(start_server=False) as url:
            bus = await Bus.connect(url, name="governance-cli")
            try:
                envelope = Envelope.root(content_id("gov", "enable", strategy, now), now)
                await bus.publish(command, envelope)
            finally:
                await bus.close()
        console.print(f"enable {strategy} published at {iso_ns(now)} by {by}: {reason}")

    run(main())


from cli.leaderboard_commands import leaderboard  # noqa: E402  (docs/governance.md, "Leaderboard")

app.command()(leaderboard)
