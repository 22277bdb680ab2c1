"""The portfolio role: fills and bars in, positions and equity out."""

from __future__ import annotations

from services.portfolio.ledger import Ledger, LedgerConfig
from services.runtime.role import Input, Role

INPUTS = (Input("EXECUTION", ("exec.>",)), Input("MARKET", ("md.bar.>",)))


def portfolio_role(config: LedgerConfig) -> Role:
    return Role("portfolio", INPUTS, Ledger(config))
