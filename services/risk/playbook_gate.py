"""Risk's side of governance's playbooks (``gov.playbook.<rule>``, docs/risk.md).

- ``ScaleBudgets``: sizing is multiplied by the smallest factor of the drawdown rules in
  force; each rule's latest factor replaces its previous one (1.0 lifts it), so repeated
  scales never compound;
- ``DisableStrategy``: the strategy's signals that open or add to a position are refused
  until an ``EnableStrategy`` of each rule that disabled it (exits still pass: a disabled
  strategy can always get flat);
- ``HaltEntries``: every entry is refused until the action's ``until``; exits pass.
A refusal is a ``RiskDecision`` of rule ``governance`` whose reason names the playbook rule.
"""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.event_base import Event
from contracts.governance_events import (
    DisableStrategy,
    EnableStrategy,
    HaltEntries,
    PlaybookAction,
    ScaleBudgets,
)
from services.risk.state import PlaybookHolds


class PlaybookGate:
    def __init__(self, holds: PlaybookHolds) -> None:
        self.holds = holds
        self.factor = min(holds.factors.values(), default=1.0)

    def apply(self, event: PlaybookAction, now: int) -> list[Event]:
        action, holds = event.action, self.holds
        if isinstance(action, ScaleBudgets):
            if action.factor >= 1.0:
                holds.factors.pop(action.rule, None)
            else:
                holds.factors[action.rule] = action.factor
            self.factor = min(holds.factors.values(), default=1.0)
        elif isinstance(action, DisableStrategy):
            rules = holds.disabled.setdefault(action.strategy, [])
            if action.rule not in rules:
                rules.append(action.rule)
        elif isinstance(action, EnableStrategy):
            rules = holds.disabled.get(action.strategy, [])
            if action.rule in rules:
                rules.remove(action.rule)
            if not rules:
                holds.disabled.pop(action.strategy, None)
        elif isinstance(action, HaltEntries):
            holds.halts[action.rule] = (action.until, action.reason)
        for rule, (until, _) in list(holds.halts.items()):
            if until <= now:
                del holds.halts[rule]
        return []

    def refusal(self, strategy: str, increases: bool, now: int) -> str | None:
        """Why a signal of ``strategy`` is refused, None when the playbooks let it pass."""
        if not increases:
            return None
        holds = self.holds
        rules = holds.disabled.get(strategy)
        if rules:
            return (
                f"playbook {', '.join(rules)}: {strategy} is disabled until "
                f"`keel gov enable {strategy}`"
            )
        for rule, (until, reason) in sorted(holds.halts.items()):
            if now < until:
                at = datetime.fromtimestamp(until / 1e9, UTC).isoformat()
                return f"playbook {rule}: entries halted until {at} ({reason})"
        return None
