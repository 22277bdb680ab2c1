"""Governance decisions on ``gov.playbook.<rule>`` (docs/governance.md, "Playbooks").

A playbook's action (decided by ``services/governance/playbooks.py``) carries its rule, the
numbers that triggered it and the reason; the event wraps it as it is, so the log holds
exactly what the decider decided and no field is kept twice. The actions are defined here,
with the event, so that contracts import nothing from the services.
"""

from __future__ import annotations

import msgspec

from contracts.event_base import Event, is_token, require

__all__ = [
    "GOVERNANCE_RULE",
    "Action",
    "DisableStrategy",
    "EnableStrategy",
    "HaltEntries",
    "PlaybookAction",
    "ScaleBudgets",
]


class ScaleBudgets(msgspec.Struct, frozen=True, tag=True):
    """Multiply every budget by ``factor`` (1.0 lifts the scale); not cumulative."""

    id: str
    rule: str
    cause_id: str
    at: int
    factor: float
    drawdown: float
    max_drawdown: float
    reset_below: float
    reason: str


class DisableStrategy(msgspec.Struct, frozen=True, tag=True):
    id: str
    rule: str
    cause_id: str
    at: int
    strategy: str
    rejections: int
    max_rejections: int
    window_ns: int
    reason: str


class EnableStrategy(msgspec.Struct, frozen=True, tag=True):
    id: str
    rule: str
    cause_id: str
    at: int
    strategy: str
    by: str
    reason: str


class HaltEntries(msgspec.Struct, frozen=True, tag=True):
    """No new entries (exits still allowed) until ``until`` (ns), the next local midnight."""

    id: str
    rule: str
    cause_id: str
    at: int
    pnl: float
    max_loss: float
    day: str
    timezone: str
    until: int
    reason: str


Action = ScaleBudgets | DisableStrategy | EnableStrategy | HaltEntries


class PlaybookAction(Event, frozen=True):
    """One playbook action: scale budgets, disable or enable a strategy, halt entries.
    Risk enforces it (docs/risk.md, "Governance")."""

    action: Action

    @property
    def rule(self) -> str:
        """The playbook rule: the subject's last token."""
        return self.action.rule

    def __post_init__(self) -> None:
        super().__post_init__()
        action = self.action
        require(bool(action.id), "action.id must not be empty")
        require(is_token(action.rule), "action.rule must match [A-Za-z0-9_-]+")
        if isinstance(action, ScaleBudgets):
            require(0.0 <= action.factor <= 1.0, "factor must be within [0, 1]")
        if isinstance(action, DisableStrategy | EnableStrategy):
            require(bool(action.strategy), "strategy must not be empty")
        if isinstance(action, HaltEntries):
            require(action.until > action.at, "until must be after at")


GOVERNANCE_RULE = "governance"
"""The rule of a risk refusal a playbook caused: the governance role does not count those as
rejections, so a halt cannot feed the rejection rule."""
