"""The governance role: equity, risk rejections and enable commands in; playbook actions out
(``gov.playbook.<rule>``), which risk enforces. Only a config with ``[governance]`` has it."""

from __future__ import annotations

from services.governance.decider import GovernanceConfig, GovernanceDecider
from services.runtime.role import Input, Role

INPUTS = (
    Input("GOVERNANCE", ("gov.cmd.enable",)),
    Input("ORDERS", ("ord.risk.>",)),
    Input("PORTFOLIO", ("pf.equity",)),
)


def governance_role(config: GovernanceConfig) -> Role:
    return Role("governance", INPUTS, GovernanceDecider(config))
