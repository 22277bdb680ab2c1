"""``[venues.gateway]``: how a venue gateway polls, reconciles and settles unknown orders."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Seconds = Annotated[float, Meta(gt=0, le=86_400)]


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gateway's timings and tolerances (docs/venues.md, "Orders").

    ``poll_after_s``: private stream silence after which REST polling takes over;
    ``poll_every_s``: the polling period then, and how often unsettled legs are queried;
    ``reconcile_every_s``: the period of a full reconciliation (one also runs at start);
    ``unknown_queries`` queries spread over ``unknown_within_s`` seconds must all miss an
    order before ``unknown_then`` decides (``resubmit`` with the same id, or ``fail``);
    ``position_tolerance`` (base units) and ``balance_tolerance`` (asset units): how far the
    venue may differ from Keel's ledger before the venue halts; ``backoff_max_s`` caps the
    wait after a rate limit; ``amend_in_place``: whether a protective leg is amended in
    place on the exchange (unset: Kraken spot and IB yes, the others no; ``amends_in_place``)."""

    poll_after_s: Seconds = 10.0
    poll_every_s: Seconds = 2.0
    reconcile_every_s: Seconds = 60.0
    unknown_queries: Annotated[int, Meta(ge=1, le=100)] = 3
    unknown_within_s: Seconds = 30.0
    unknown_then: Literal["resubmit", "fail"] = "fail"
    position_tolerance: Annotated[float, Meta(ge=0)] = 1e-9
    balance_tolerance: Annotated[float, Meta(ge=0)] = 1e-6
    backoff_max_s: Seconds = 30.0
    amend_in_place: bool | None = None


IN_PLACE_EXCHANGES = frozenset({"kraken", "ib"})
"""Exchanges whose protective legs Keel moves with one in-place edit of the same order
(Kraken spot ``AmendOrder``: a spot account locks what each open sell holds, so a second
stop cannot rest beside the first; IB's modify, ``placeOrder`` with the same orderId: no
second stop that could sell again while the first is still working, and the stop keeps
its OCA group): the edit keeps the one stop on the exchange."""


def amends_in_place(exchange: str, config: GatewayConfig) -> bool:
    """Whether the order manager amends this venue's protective legs in place (the same
    leg, same client id) rather than as a new leg; ``amend_in_place`` overrides the
    exchange's default."""
    if config.amend_in_place is not None:
        return config.amend_in_place
    return exchange in IN_PLACE_EXCHANGES
