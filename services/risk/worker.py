"""The risk worker: signals, governance, prices and fills in; orders or rejections out."""

from __future__ import annotations

from services.risk.rails import RiskEngine, RiskLimits
from services.runtime.worker import Input, Worker, WorkerOptions

INPUTS = (
    Input("GOVERNANCE", ("gov.>",)),
    Input("SIGNALS", ("sig.>",)),
    Input("EXECUTION", ("exec.>",)),
    Input("MARKET", ("md.bar.>",)),
)


def risk_worker(limits: RiskLimits, options: WorkerOptions | None = None) -> Worker:
    return Worker("risk", INPUTS, RiskEngine(limits), options)
