"""Events between the order manager and a venue gateway, on ``venue.>`` (docs/venues.md,
docs/reconciliation.md).

The order manager asks with ``VenueOrder``; the gateway, the only code that talks to an
exchange, writes down every answer it gets as a ``VenueAnswer`` before anything acts on it.
Reconciliation's findings are ``Discrepancy`` events, the gateway's trading state is
``VenueStatus``, and an operator's adoption of the venue's view is ``VenueAdoption``.
"""

from __future__ import annotations

import re
from typing import Literal

from contracts.event_base import Event, Int64, is_token, require, require_order_prices

VenueMode = Literal["paper", "sandbox", "demo", "live"]
MarketKind = Literal["", "spot", "perpetual", "stock", "future", "fx"]
VenueAction = Literal["new", "cancel", "amend"]
LegType = Literal["market", "limit", "stop", "stop_limit"]
AnswerKind = Literal[
    "accepted",  # the exchange took the order (or the amendment)
    "rejected",  # the exchange refused it; ``reason`` is the exchange's own
    "fill",  # one venue trade of the order
    "canceled",  # the order is gone: canceled by request, by the exchange or reduce-only
    "expired",  # the exchange expired it (IOC/FOK remainder, GTD)
    "unknown",  # the outcome of a submit or cancel is not known: a query settles it
    "missing",  # queries did not find it within the configured time: the fate rule decided
]
AnswerSource = Literal["submit", "cancel", "amend", "stream", "poll", "query", "reconcile"]
DiscrepancyKind = Literal[
    "missed_fill",  # a venue trade Keel had not recorded: an inferred fill follows
    "external_order",  # an open order Keel did not place: recorded, never traded on
    "missing_order",  # an order Keel holds as working that the venue does not list
    "missing_stop",  # a protective stop the venue does not list: re-placed
    "position_mismatch",  # the venue's position differs from Keel's beyond tolerance: halt
    "balance_mismatch",  # the venue's balance differs from Keel's beyond tolerance: halt
    "query_failed",  # a reconciliation query failed or was partial: nothing concluded
]
GatewayState = Literal["starting", "running", "degraded", "halted"]

VENUE_CLIENT_ID = re.compile(r"[A-Za-z0-9-]{1,36}")
"""What every supported exchange accepts as a client order id: Binance ``newClientOrderId``
and ``clientAlgoId``, Bybit ``orderLinkId``, Kraken ``cl_ord_id``, Kraken Futures
``cliOrdId``."""


class VenueOrder(Event, frozen=True):
    """One venue leg the order manager wants placed, canceled or amended
    (``venue.order.<venue>.<symbol>``). ``client_order_id`` is Keel's order; the exchange
    sees ``venue_client_id`` (``services/venues/client_ids.py``: derived from the order and
    its leg number, so a restarted gateway sends the same id). ``replaces`` names the leg an
    amendment replaces.

    ``kind``, ``base``, ``quote``, ``settle`` and ``contract_size`` are the market's, from its
    ``Instrument``: the venue journal books fills by them. ``kind`` empty (orders stored before
    these fields, or a market with no ``Instrument`` seen) = the parts of ccxt's symbol text."""

    action: VenueAction
    client_order_id: str
    venue_client_id: str
    strategy: str
    venue: str
    symbol: str
    side: Literal["buy", "sell"]
    qty: float
    order_type: LegType = "market"
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: Literal["GTC", "IOC", "FOK"] = "GTC"
    reduce_only: bool = False
    protective: bool = False
    replaces: str = ""
    kind: MarketKind = ""
    base: str = ""
    quote: str = ""
    settle: str = ""
    contract_size: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.qty > 0, "qty must be > 0")
        require(self.contract_size > 0, "contract_size must be > 0")
        require(bool(self.client_order_id), "client_order_id must not be empty")
        require(
            VENUE_CLIENT_ID.fullmatch(self.venue_client_id) is not None,
            "venue_client_id must be 1 to 36 characters of [A-Za-z0-9-]",
        )
        require(
            not self.replaces or VENUE_CLIENT_ID.fullmatch(self.replaces) is not None,
            "replaces must be a venue client id",
        )
        require(is_token(self.strategy), "strategy must match [A-Za-z0-9_-]+")
        require_order_prices(self.order_type, self.limit_price, self.stop_price)


class VenueAnswer(Event, frozen=True):
    """One answer of the exchange, recorded before anything acts on it
    (``venue.answer.<venue>.<symbol>``). ``ts`` is the gateway's clock when it got the answer;
    ``venue_ts`` the exchange's own time for it (0 = not given). A ``fill`` is one venue
    trade: quantity, price and fee come from the exchange, and its event id derives from the
    venue and ``trade_id``, so a trade seen on the stream, by polling and by reconciliation is
    one fill. ``cum_qty`` is the order's filled quantity after this answer as the exchange
    reports it (0 when it does not say)."""

    kind: AnswerKind
    venue: str
    symbol: str
    client_order_id: str
    venue_client_id: str
    source: AnswerSource
    strategy: str = ""
    side: Literal["buy", "sell"] | None = None
    venue_order_id: str = ""
    order_qty: float = 0.0
    cum_qty: float = 0.0
    trade_id: str = ""
    fill_qty: float = 0.0
    fill_price: float = 0.0
    fee: float = 0.0
    fee_currency: str = ""
    venue_ts: Int64 = 0
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.order_qty >= 0 and self.cum_qty >= 0, "quantities must be >= 0")
        require(self.fill_qty >= 0 and self.fill_price >= 0, "fill_qty and fill_price >= 0")
        if self.kind == "fill":
            require(bool(self.trade_id), "a fill needs the venue's trade_id")
            require(self.fill_qty > 0 and self.fill_price > 0, "a fill needs qty and price > 0")
        require(not self.strategy or is_token(self.strategy), "strategy must be a token")


class Discrepancy(Event, frozen=True):
    """One difference reconciliation found between the venue and Keel's view
    (``venue.recon.<venue>``), with what Keel did about it (``action``) and the numbers.
    ``venue_value``/``keel_value``: the two sides of a position or balance (0 otherwise)."""

    venue: str
    kind: DiscrepancyKind
    action: str
    symbol: str = ""
    asset: str = ""
    venue_client_id: str = ""
    venue_order_id: str = ""
    trade_id: str = ""
    venue_value: float = 0.0
    keel_value: float = 0.0
    detail: str = ""


class VenueStatus(Event, frozen=True):
    """A gateway's state (``venue.status.<venue>``): its ``mode`` (paper, sandbox, demo,
    live), ``state`` (``halted``: no new entries, only cancels and reduce-only orders, until
    an operator adopts the venue's view) and why, with the discrepancies behind a halt."""

    venue: str
    mode: VenueMode
    state: GatewayState
    reason: str = ""
    discrepancies: Int64 = 0
    last_reconcile: Int64 = 0


class VenueAdoption(Event, frozen=True):
    """An operator accepted the venue's view (``keel reconcile VENUE --adopt --reason``):
    Keel's ledger takes the venue's positions and balances as the new baseline and the halt
    is lifted (``venue.adopt.<venue>``)."""

    venue: str
    reason: str
    issued_by: str = "cli"

    def __post_init__(self) -> None:
        super().__post_init__()
        require(bool(self.reason.strip()), "an adoption needs a reason")


class KillSwitch(Event, frozen=True):
    """``keel kill``: cancel open entry orders on every gateway venue (protective stops
    stay); with ``flatten`` also close every position with reduce-only market orders
    (``venue.kill``)."""

    reason: str
    flatten: bool = False
    issued_by: str = "cli"
