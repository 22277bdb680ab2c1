"""The risk role: governance, signals, fills, prices, instruments, feed statuses (and, when
configured, equity and funding rates) in; orders, rejections, alerts and statuses out."""

from __future__ import annotations

from services.risk.engine import RiskEngine
from services.risk.limits import GuardsConfig, InstrumentSpec, RiskLimits, SizingConfig
from services.runtime.role import Input, Role

INPUTS = (
    Input("GOVERNANCE", ("gov.cmd.>",)),
    Input("SIGNALS", ("sig.>",)),
    Input("EXECUTION", ("exec.>",)),
    Input("MARKET", ("md.bar.>", "md.instrument.>", "md.status.>")),
)
"""What every risk worker reads (``md.status.>``: the stale-data guard); ``risk_inputs``
adds equity and funding when needed."""


def risk_inputs(engine: RiskEngine, governed: bool = False) -> tuple[Input, ...]:
    """Equity snapshots only for equity rails, equity-based sizing or governance (a budget
    is a share of equity), funding rates only with the funding guard, playbook actions and
    budgets only with ``[governance]``: a fleet without them routes nothing new to risk."""
    inputs = list(INPUTS)
    if governed:
        inputs[0] = Input("GOVERNANCE", (*INPUTS[0].subjects, "gov.playbook.>", "gov.alloc.>"))
    if engine.guards.funding is not None:
        inputs[-1] = Input("MARKET", (*INPUTS[-1].subjects, "md.funding.>"))
    if engine.needs_equity or governed:
        inputs.append(Input("PORTFOLIO", ("pf.equity",)))
    return tuple(inputs)


def risk_role(
    limits: RiskLimits,
    guards: GuardsConfig | None = None,
    sizing: SizingConfig | None = None,
    instruments: tuple[InstrumentSpec, ...] = (),
    governed: bool = False,
) -> Role:
    engine = RiskEngine(limits, guards, sizing, instruments)
    return Role("risk", risk_inputs(engine, governed), engine)
