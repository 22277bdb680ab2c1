"""The governance role: equity, risk rejections, shadow steps and operator commands in;
playbook actions (``gov.playbook.<rule>``, risk enforces them), promotion decisions
(``gov.promotion.<strategy>``) and rosters (``gov.model.<strategy>``, the strategy hosts
route by them) out. Only a config with ``[governance]`` has it."""

from __future__ import annotations

from collections.abc import Iterable

from contracts.model_events import ModelVariant
from services.config import StrategyConfig
from services.governance.decider import GovernanceConfig, GovernanceDecider
from services.governance.promotion_desk import SUBJECTS as PROMOTION_SUBJECTS
from services.runtime.role import Input, Role

INPUTS = (
    Input("GOVERNANCE", ("gov.cmd.enable", *PROMOTION_SUBJECTS)),
    Input("ORDERS", ("ord.risk.>",)),
    Input("PORTFOLIO", ("pf.equity",)),
)
ALLOCATOR_INPUTS = (Input("EXECUTION", ("exec.report.>",)),)
"""The allocator's live round trips (its shadow records and equity are inputs already)."""


def fleet_rosters(strategies: Iterable[StrategyConfig]) -> dict[str, tuple[ModelVariant, ...]]:
    """Every strategy instance and its configured variants (``()``: none)."""
    return {
        s.instance_name: tuple(ModelVariant(v.tag, v.weight, v.canary) for v in s.variants)
        for s in strategies
    }


def governance_role(config: GovernanceConfig, strategies: Iterable[StrategyConfig] = ()) -> Role:
    """``strategies``: the fleet's; their ``variants`` are the first rosters (an instance
    without variants is budgeted, not evaluated)."""
    inputs = INPUTS + (ALLOCATOR_INPUTS if config.allocator is not None else ())
    return Role("governance", inputs, GovernanceDecider(config, fleet_rosters(strategies)))
