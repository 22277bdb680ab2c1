"""The execution role: order commands and market data in, execution reports out: the order
manager (docs/orders.md) in front of the paper venue (docs/fill-models.md) and, for venues a
gateway trades, the gateway's recorded answers (``gateway_venue.py``)."""

from __future__ import annotations

from services.execution.gateway_venue import GatewayVenue
from services.execution.lifecycle import Venue
from services.execution.oms import OrderManager, OrdersConfig
from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.runtime.role import Input, Role

ORDERS = Input("ORDERS", ("ord.cmd.>", "ord.alert.>"))


def execution_inputs(
    config: PaperVenueConfig, gateways: frozenset[str] = frozenset()
) -> tuple[Input, ...]:
    """Bars always (expiry, trailing stops and the stop validator run on them); quotes too
    when they fill orders (``fill = "quote"``); the kill switch, and the answers of each
    gateway venue; with a gateway venue, instruments too (each leg names its market's parts
    for the gateway's journal)."""
    market = ("md.bar.>", "md.quote.>") if config.fill == "quote" else ("md.bar.>",)
    if gateways:
        market = (*market, "md.instrument.>")
    answers = tuple(f"venue.answer.{name}.>" for name in sorted(gateways))
    return (ORDERS, Input("MARKET", market), Input("VENUE", ("venue.kill", *answers)))


def execution_role(
    config: PaperVenueConfig,
    orders: OrdersConfig | None = None,
    gateways: frozenset[str] = frozenset(),
    in_place: frozenset[str] = frozenset(),
) -> Role:
    """``gateways``: the venues a venue gateway trades (``mode`` other than paper);
    ``in_place``: those whose protective legs are amended in place."""
    paper = PaperVenue(config)
    venue: Venue = GatewayVenue(gateways, paper, in_place) if gateways else paper
    return Role("execution", execution_inputs(config, gateways), OrderManager(venue, orders))
