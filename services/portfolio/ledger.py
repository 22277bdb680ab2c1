"""The portfolio ledger, under the names the rest of Keel has always imported.

The accounting itself (several venues and currencies, spot and perpetuals, margin, funding,
attribution) lives in ``accounts.py``; docs/portfolio.md is the reference. With one spot
venue in one currency it decides exactly what the original single-currency ledger did, byte
for byte, so runs recorded before keep their result hash.
"""

from __future__ import annotations

from services.portfolio.accounts import (
    EPS,
    Lot,
    Portfolio,
    PortfolioConfig,
    PortfolioState,
    Position,
)

Ledger = Portfolio
LedgerConfig = PortfolioConfig
LedgerState = PortfolioState

__all__ = ["EPS", "Ledger", "LedgerConfig", "LedgerState", "Lot", "Position"]
