"""The governance decider: its desks, each a pure decider of its own, fed from the log.

The decider hands every input to each desk in turn (``DESKS`` order) and concatenates their
outputs; each desk keeps its own state and its own part of the snapshot. A further desk is one
entry in ``GovernanceDecider.__init__``.

- ``PlaybookDesk`` (here): the playbooks (``playbooks.py``). An equity snapshot
  (``pf.equity``) is an equity update (the peak is this desk's running maximum) and, for every
  daily loss rule, the day's PnL (equity minus the day's start equity: the last equity seen
  before the rule's local midnight, else the day's first); a risk rejection (``ord.risk.*``,
  approved false) is a rejection of its strategy, its reason prefixed by risk's rule;
  ``gov.cmd.enable`` is an enable command. Rejections that governance itself caused (risk's
  rule ``governance``) are not counted, so a halt cannot feed the rejection rule.
- ``PromotionDesk`` (``promotion_desk.py``): the promotion gate on shadow steps, and the
  manual promote and rollback commands.
- ``AllocationDesk`` (``allocation_desk.py``, only with ``[governance.allocator]``): the
  budgets, rebalanced on a cadence of event time from the models' per-trade returns.

An input's id (``fact_id.py``) is its kind, event time and a digest of its bytes: the same
fact redelivered has the same id and the desks ignore it; the outputs' ids derive from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Protocol

import msgspec

from contracts.events import EquitySnapshot, Event, RiskDecision
from contracts.governance_events import GOVERNANCE_RULE, PlaybookAction
from contracts.model_events import ModelRoster, ModelVariant
from contracts.system_events import GovernanceCommand
from services.governance.allocation_desk import AllocationDesk, AllocationDeskConfig
from services.governance.fact_id import input_id
from services.governance.playbooks import (
    Action,
    DailyLossState,
    DailyPnl,
    EnableCommand,
    EquityUpdate,
    PlaybookConfig,
    PlaybookState,
    RiskRejection,
    daily_loss_rule,
    local_day,
    step,
)
from services.governance.promotion import PromotionConfig
from services.governance.promotion_desk import PromotionDesk

__all__ = ["GovernanceConfig", "GovernanceDecider", "PlaybookDesk", "input_id"]


class GovernanceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[governance]``: its presence adds the governance role and risk's enforcement."""

    playbooks: PlaybookConfig = msgspec.field(default_factory=PlaybookConfig)
    promotion: PromotionConfig = msgspec.field(default_factory=PromotionConfig)
    allocator: AllocationDeskConfig | None = None  # budgets only when configured


class DayStart(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The trading day of one time zone and the equity it started from."""

    timezone: str
    day: str
    start: float


class GovernanceState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    playbooks: PlaybookState = PlaybookState()
    peak: float = 0.0
    last_equity: float | None = None
    days: tuple[DayStart, ...] = ()


class Desk(Protocol):
    """One part of governance: a pure decider with its own snapshot part."""

    def decide(self, event: Event, now: int) -> list[Event]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class PlaybookDesk:
    """Equity, risk rejections and enable commands in; playbook actions out."""

    def __init__(self, config: PlaybookConfig) -> None:
        self.config = config
        self.state = GovernanceState()

    def decide(self, event: Event, now: int) -> list[Event]:
        actions: list[Action] | tuple[Action, ...]
        if isinstance(event, EquitySnapshot):
            actions = self._on_equity(event, now)
        elif isinstance(event, RiskDecision):
            if event.approved or event.rule == GOVERNANCE_RULE:
                return []
            reason = f"{event.rule}: {event.reason}" if event.rule else event.reason
            rejection = RiskRejection(input_id("reject", event), event.strategy, reason, event.ts)
            actions = self._step(rejection, now)
        elif isinstance(event, GovernanceCommand) and event.action == "enable":
            strategy = event.strategy if isinstance(event.strategy, str) else ""
            by = event.issued_by or "unknown"
            command = EnableCommand(input_id("enable", event), strategy, by, event.reason, event.ts)
            actions = self._step(command, now)
        else:
            return []
        return [PlaybookAction(ts=now, action=a) for a in actions]

    def _step(self, event: RiskRejection | EnableCommand, now: int) -> tuple[Action, ...]:
        playbooks, actions = step(self.config, self.state.playbooks, event, now)
        self.state = msgspec.structs.replace(self.state, playbooks=playbooks)
        return actions

    def _on_equity(self, snap: EquitySnapshot, now: int) -> list[Action]:
        state, config = self.state, self.config
        peak = max(state.peak, snap.equity)
        update = EquityUpdate(input_id("equity", snap), snap.equity, peak, snap.ts)
        playbooks, out = step(config, state.playbooks, update, now)
        if playbooks is state.playbooks:
            return []  # seen before: step changed nothing
        actions = list(out)
        days = {d.timezone: d for d in state.days}
        daily: list[DailyLossState] = []
        for rule in config.daily_loss:
            day, _ = local_day(snap.ts, rule.timezone)
            known = days.get(rule.timezone)
            if known is None or known.day != day:
                start = snap.equity if state.last_equity is None else state.last_equity
                known = days[rule.timezone] = DayStart(rule.timezone, day, start)
            pnl = DailyPnl(f"{update.id}:pnl", snap.equity - known.start, snap.ts)
            old = next((s for s in playbooks.daily_loss if s.rule == rule.name), None)
            new, halts = daily_loss_rule(rule, old or DailyLossState(rule.name), pnl, now)
            daily.append(new)
            actions.extend(halts)
        playbooks = msgspec.structs.replace(playbooks, daily_loss=tuple(daily))
        self.state = GovernanceState(
            playbooks, peak, snap.equity, tuple(sorted(days.values(), key=lambda d: d.timezone))
        )
        return actions

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=GovernanceState)


class GovernanceDecider:
    """Version 2: the snapshot is the desks' parts by name (v1 held the playbooks alone)."""

    snapshot_version: ClassVar[int] = 2

    def __init__(
        self,
        config: GovernanceConfig,
        rosters: Mapping[str, tuple[ModelVariant, ...]] | None = None,
    ) -> None:
        """``rosters``: every strategy instance of the fleet and its variants (``()``: none);
        the promotion desk evaluates those with variants, the allocator budgets them all."""
        self.config = config
        rosters = rosters or {}
        self.playbooks = PlaybookDesk(config.playbooks)
        variants = {name: roster for name, roster in rosters.items() if roster}
        self.promotion = PromotionDesk(config.promotion, variants)
        self.desks: dict[str, Desk] = {"playbooks": self.playbooks, "promotion": self.promotion}
        if config.allocator is not None:
            self.desks["allocation"] = AllocationDesk(config.allocator, rosters)

    def decide(self, event: Event, now: int) -> list[Event]:
        """Each desk in turn; a roster a desk decided is an input of the desks after it
        (governance does not read its own events back from the log)."""
        out: list[Event] = []
        for desk in self.desks.values():
            decided = [e for e in out if isinstance(e, ModelRoster)]
            out.extend(desk.decide(event, now))
            for roster in decided:
                out.extend(desk.decide(roster, now))
        return out

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode({name: d.snapshot() for name, d in self.desks.items()})

    def restore(self, data: bytes) -> None:
        parts = msgspec.msgpack.decode(data, type=dict[str, bytes])
        for name, desk in self.desks.items():
            if name in parts:
                desk.restore(parts[name])
