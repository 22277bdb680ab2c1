"""Risk's trading status: the active conditions, the gates the rails consult, and the
``SystemStatus`` published whenever the combined status changes (docs/risk.md, Statuses)."""

from __future__ import annotations

from contracts.system_events import SystemStatus
from services.risk.state import Condition, RiskState

SOURCE = "risk"
SEVERITY: dict[str, int] = {"RUNNING": 0, "DEGRADED": 1, "SAFE_MODE": 2, "HALTED": 3}


class StatusBoard:
    """The conditions in ``RiskState.conditions``; ``halt``, ``soft`` and ``depegged`` are
    looked up once per change so the rails read them for free."""

    __slots__ = ("changed", "depegged", "halt", "soft", "state")

    def __init__(self, state: RiskState) -> None:
        self.state = state
        self.changed = False
        self.halt: Condition | None = None
        self.soft: Condition | None = None
        self.depegged: dict[str, Condition] = {}
        self._refresh()

    def set(self, name: str, condition: Condition | None, publish: bool = True) -> None:
        """Raise (or, with None, clear) a condition. ``publish=False`` for a fact already on
        the log: a kill command is its own status."""
        conditions = self.state.conditions
        if condition is None:
            if conditions.pop(name, None) is None:
                return
        else:
            conditions[name] = condition
        self.changed = self.changed or publish
        self._refresh()

    def clear(self, *prefixes: str) -> None:
        for name in [n for n in self.state.conditions if n.startswith(prefixes)]:
            self.set(name, None)

    def _refresh(self) -> None:
        conditions = self.state.conditions
        self.halt = next((c for name, c in conditions.items() if name.startswith("halt:")), None)
        self.soft = next(
            (
                c
                for name, c in conditions.items()
                if name.startswith("soft:") and c.status == "SAFE_MODE"
            ),
            None,
        )
        self.depegged = {name[6:]: c for name, c in conditions.items() if name.startswith("depeg:")}

    def combined(self) -> Condition:
        """The most severe condition (ties: the earliest), with the others named in the
        reason."""
        conditions = self.state.conditions
        if not conditions:
            return Condition("RUNNING", "", "all clear")
        ranked = sorted(
            conditions.items(), key=lambda kv: (-SEVERITY[kv[1].status], kv[1].since, kv[0])
        )
        worst = ranked[0][1]
        reason = worst.reason
        if len(ranked) > 1:
            others = ", ".join(f"{c.rule} ({c.status})" for _, c in ranked[1:])
            reason = f"{reason}; also {others}"
        return Condition(worst.status, worst.rule, reason, worst.since)

    def publish(self, now: int) -> SystemStatus | None:
        """The status to publish after a change, if the combined status, rule or reason
        moved (nothing while everything stays RUNNING)."""
        self.changed = False
        current = self.combined()
        last = self.state.published
        if (current.status, current.rule, current.reason) == (
            last.status,
            last.rule,
            last.reason,
        ) or (current.status == last.status == "RUNNING"):
            return None
        self.state.published = current
        reason = current.reason
        if current.status == "RUNNING":
            reason = f"all clear (was {last.status}: {last.rule})"
        return SystemStatus(
            ts=now, status=current.status, reason=reason, source=SOURCE, rule=current.rule
        )
