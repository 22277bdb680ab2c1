"""The portfolio worker: fills and bars in, positions and equity out."""

from __future__ import annotations

from services.portfolio.ledger import Ledger, LedgerConfig
from services.runtime.worker import Input, Worker, WorkerOptions

INPUTS = (Input("EXECUTION", ("exec.>",)), Input("MARKET", ("md.bar.>",)))


def portfolio_worker(config: LedgerConfig, options: WorkerOptions | None = None) -> Worker:
    return Worker("portfolio", INPUTS, Ledger(config), options)
