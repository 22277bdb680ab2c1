"""How the venue gateway gets its IB exchange: built from the venue's config, its process
lock keyed on the IB session, and a reconciliation whenever the session comes back."""

from __future__ import annotations

import asyncio

from eventstore.errors import KeelError
from services.runtime.clock import Clock
from services.venues.config import VenueConfig
from services.venues.ib.connection import IbConnection
from services.venues.ib.exchange import IbExchange, Resync


def ib_exchange(venue: VenueConfig, clock: Clock) -> IbExchange:
    """The gateway's exchange for a ``kind = "ib"`` venue; an order-sending mode without an
    account is refused with one line (the venue config refuses it first)."""
    settings = venue.ib
    if settings is None:
        raise KeelError(f'venue {venue.name}: kind = "ib" needs an ib table')
    if venue.gateway_mode and not settings.account:
        raise KeelError(
            f'venue {venue.name}: mode = "{venue.mode}" sends orders to IB: ib.account must '
            "name the account"
        )
    return IbExchange(settings, clock, IbConnection(settings, clock))


def ib_session_key(venue: VenueConfig) -> str:
    """What one gateway process owns on IB (there is no API key): the session it opens."""
    settings = venue.ib
    if settings is None:
        raise KeelError(f'venue {venue.name}: kind = "ib" needs an ib table')
    return f"{settings.host}:{settings.port}:{settings.client_id}"


def reconcile_on_resync(exchange: IbExchange, ready: asyncio.Event, reconcile: Resync) -> None:
    """Reconcile as soon as the session is back (executions missed while away, open orders,
    positions); not while the gateway is still starting (its own first reconciliation comes
    after it has rebuilt its legs from the log)."""

    async def hook() -> None:
        if ready.is_set():
            await reconcile()

    exchange.on_resync.append(hook)
