"""The execution role: order commands and bars in, execution reports out: the order manager
(docs/orders.md) in front of the paper venue (docs/fill-models.md)."""

from __future__ import annotations

from services.execution.oms import OrderManager, OrdersConfig
from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.runtime.role import Input, Role

INPUTS = (Input("ORDERS", ("ord.cmd.>", "ord.alert.>")), Input("MARKET", ("md.bar.>",)))


def execution_role(config: PaperVenueConfig, orders: OrdersConfig | None = None) -> Role:
    return Role("execution", INPUTS, OrderManager(PaperVenue(config), orders))
