"""The portfolio role: fills, bars, funding rates and instruments in; positions, equity and
(optionally) attribution out (docs/portfolio.md)."""

from __future__ import annotations

from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig
from services.portfolio.instruments import Described
from services.runtime.role import Input, Role

INPUTS = (
    Input("EXECUTION", ("exec.>",)),
    Input("MARKET", ("md.bar.>", "md.funding.>", "md.instrument.>")),
)


def portfolio_role(config: PortfolioConfig, instruments: tuple[Described, ...] = ()) -> Role:
    return Role("portfolio", INPUTS, Portfolio(config, instruments))
