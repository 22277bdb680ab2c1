"""``keel gov``: an operator's governance commands, each an event on ``gov.cmd.*`` that
names who issued it (docs/governance.md, "Playbooks" and "Promotion on the log")."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from msgspec import UNSET

from cli.console import console, fail, run
from contracts.envelope import Envelope, content_id
from contracts.model_events import ModelRoster, ShadowStep
from contracts.subjects import SubjectError, name_token
from contracts.system_events import GovernanceAction, GovernanceCommand
from contracts.timestamps import iso_ns
from eventstore.bus import Bus
from eventstore.server import nats_url

app = typer.Typer(
    help="Governance commands (playbooks, promotions, leaderboard).", no_args_is_help=True
)


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


async def _models(bus: Bus, strategy: str) -> tuple[str, ...]:
    """The strategy's model tags as the log has them: governance's latest roster, else the
    latest shadow step (every variant's result is in it); none when it runs no variants."""
    roster = await bus.last_event("GOVERNANCE", f"gov.model.{strategy}")
    if roster is not None and isinstance(roster.event, ModelRoster):
        return tuple(v.tag for v in roster.event.variants)
    step = await bus.last_event("GOVERNANCE", f"gov.shadow.{strategy}.>")
    if step is not None and isinstance(step.event, ShadowStep):
        return tuple(r.tag for r in step.event.results)
    return ()


def _roster_command(
    action: GovernanceAction, strategy: str, model: str, reason: str, by: str
) -> None:
    """Check the strategy and model against the log, then publish the command; governance
    answers with the new roster on gov.model.STRATEGY (or a dead letter saying why not)."""
    try:
        name_token(strategy, "strategy")
    except SubjectError as exc:
        raise fail(str(exc)) from None
    if not reason.strip():
        raise fail(f"--reason must say why to {action} {strategy}")

    async def main() -> None:
        now = time.time_ns()
        with nats_url(start_server=False) as url:
            bus = await Bus.connect(url, name="governance-cli")
            try:
                models = await _models(bus, strategy)
                if not models:
                    raise fail(
                        f"unknown strategy {strategy}: the log has no roster (gov.model.{strategy}) "
                        f"and no shadow step (gov.shadow.{strategy}.>): does it run variants?",
                        1,
                    )
                if action == "promote" and model not in models:
                    raise fail(
                        f"unknown model {model} of {strategy} (models: {', '.join(models)})", 1
                    )
                command = GovernanceCommand(
                    ts=now,
                    action=action,
                    reason=reason,
                    issued_by=by,
                    strategy=strategy,
                    model=model if action == "promote" else UNSET,
                )
                envelope = Envelope.root(content_id("gov", action, strategy, model, now), now)
                await bus.publish(command, envelope)
            finally:
                await bus.close()
        what = f"{action} {strategy}" + (f" {model}" if action == "promote" else "")
        console.print(f"{what} published at {iso_ns(now)} by {by}: {reason}")

    run(main())


@app.command()
def promote(
    strategy: Annotated[str, typer.Argument(help="The strategy instance (with variants).")],
    model: Annotated[str, typer.Argument(help="The variant tag that becomes current.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the roster).")],
    by: Annotated[str, typer.Option("--by", help="Who promotes it (recorded).")] = "cli",
) -> None:
    """Make MODEL the strategy's current model now, whatever the gate says; the current one
    stays as a canary of weight 0 that `keel gov rollback` restores."""
    _roster_command("promote", strategy, model, reason, by)


@app.command()
def rollback(
    strategy: Annotated[str, typer.Argument(help="The strategy instance (with variants).")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in the roster).")],
    by: Annotated[str, typer.Option("--by", help="Who rolls back (recorded).")] = "cli",
) -> None:
    """Make the model the last promotion replaced current again."""
    _roster_command("rollback", strategy, "", reason, by)


from cli.leaderboard_commands import leaderboard  # noqa: E402  (docs/governance.md, "Leaderboard")

app.command()(leaderboard)
