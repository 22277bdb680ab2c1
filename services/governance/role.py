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


def initial_rosters(strategies: Iterable[StrategyConfig]) -> dict[str, tuple[ModelVariant, ...]]:
    """The configured variants of every strategy instance that has some."""
    return {
        s.instance_name: tuple(ModelVariant(v.tag, v.weight, v.canary) for v in s.variants)
        for s in strategies
        if s.variants
    }


def governance_role(config: GovernanceConfig, strategies: Iterable[StrategyConfig] = ()) -> Role:
    """``strategies``: the fleet's, whose ``variants`` are the promotion desk's first rosters
    (an instance without variants is not evaluated)."""
    return Role("governance", INPUTS, GovernanceDecider(config, initial_rosters(strategies)))
