"""The execution role: order commands and bars in, execution reports out (paper venue)."""

from __future__ import annotations

from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.runtime.role import Input, Role

INPUTS = (Input("ORDERS", ("ord.cmd.>",)), Input("MARKET", ("md.bar.>",)))


def execution_role(config: PaperVenueConfig) -> Role:
    return Role("execution", INPUTS, PaperVenue(config))
