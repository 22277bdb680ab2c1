"""The risk role: governance, signals, fills and prices in; orders or rejections out."""

from __future__ import annotations

from services.risk.rails import RiskEngine, RiskLimits
from services.runtime.role import Input, Role

INPUTS = (
    Input("GOVERNANCE", ("gov.cmd.>",)),
    Input("SIGNALS", ("sig.>",)),
    Input("EXECUTION", ("exec.>",)),
    Input("MARKET", ("md.bar.>",)),
)


def risk_role(limits: RiskLimits) -> Role:
    return Role("risk", INPUTS, RiskEngine(limits))
