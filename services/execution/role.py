"""The execution role: order commands and market data in, execution reports out: the order
manager (docs/orders.md) in front of the paper venue (docs/fill-models.md)."""

from __future__ import annotations

from services.execution.oms import OrderManager, OrdersConfig
from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.runtime.role import Input, Role

ORDERS = Input("ORDERS", ("ord.cmd.>", "ord.alert.>"))


def execution_inputs(config: PaperVenueConfig) -> tuple[Input, ...]:
    """Bars always (expiry, trailing stops and the stop validator run on them); quotes too
    when they fill orders (``fill = "quote"``)."""
    market = ("md.bar.>", "md.quote.>") if config.fill == "quote" else ("md.bar.>",)
    return (ORDERS, Input("MARKET", market))


def execution_role(config: PaperVenueConfig, orders: OrdersConfig | None = None) -> Role:
    return Role("execution", execution_inputs(config), OrderManager(PaperVenue(config), orders))
