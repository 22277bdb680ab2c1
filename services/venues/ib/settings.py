"""``[venues.ib]``: where the IB Gateway (or TWS) listens, which client id and account Keel
uses, and the contracts it trades.

IB's own conventions: IB Gateway listens on 4001 (live) and 4002 (paper), TWS on 7496 (live)
and 7497 (paper); paper accounts have ids starting ``DU`` (``DF`` for an advisor's paper
master). Keel has no keys for IB: the login is the Gateway's (IBC runs it unattended).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from services.venues.ib.specs import ContractSpec, check_symbols

PAPER_PREFIXES = ("DU", "DF")
LIVE_PORTS = frozenset({4001, 7496})
PAPER_PORTS = frozenset({4002, 7497})


class IbSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``client_id``: the API session's id (two sessions with one id: IB's error 326);
    ``account``: the account orders go to and positions are read from (empty: data only,
    for ``mode = "paper"``); ``connect_timeout_s`` bounds the handshake."""

    host: Annotated[str, Meta(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65_535)] = 4002
    client_id: Annotated[int, Meta(ge=0, le=2_147_483_647)] = 1
    account: Annotated[str, Meta(pattern=r"^[A-Za-z0-9]*$", max_length=32)] = ""
    connect_timeout_s: Annotated[float, Meta(gt=0, le=300)] = 10.0
    contracts: tuple[ContractSpec, ...] = ()

    def __post_init__(self) -> None:
        check_symbols(self.contracts)

    @property
    def paper_account(self) -> bool:
        return is_paper_account(self.account)

    def spec(self, symbol: str) -> ContractSpec | None:
        """The contract traded under the Keel symbol ``symbol``."""
        return next((c for c in self.contracts if c.name == symbol), None)


def is_paper_account(account: str) -> bool:
    return account.upper().startswith(PAPER_PREFIXES)


def check_mode(settings: IbSettings, mode: str) -> None:
    """The account and port agree with the venue's mode: ``demo`` trades IB's paper account,
    ``live`` a real one; ``paper`` is Keel's own paper venue on IB's data (no orders reach
    IB). A well-known port of the other kind is refused too (a custom port is not judged)."""
    account, port = settings.account, settings.port
    if mode == "sandbox":
        raise ValueError(
            'IB has no sandbox: its paper account is mode = "demo" (account DU..., port 4002)'
        )
    if mode in ("demo", "live") and not account:
        raise ValueError(f'mode = "{mode}" sends orders to IB: ib.account must name the account')
    if mode == "demo" and not is_paper_account(account):
        raise ValueError(
            f'mode = "demo" trades IB\'s paper account: {account!r} is not one (paper ids '
            "start with DU)"
        )
    if mode == "live" and is_paper_account(account):
        raise ValueError(f'mode = "live" trades real money: {account!r} is a paper account')
    if mode == "demo" and port in LIVE_PORTS:
        raise ValueError(f'mode = "demo": port {port} is where IB listens for live sessions')
    if mode == "live" and port in PAPER_PORTS:
        raise ValueError(f'mode = "live": port {port} is where IB listens for paper sessions')


def check_accounts(settings: IbSettings, managed: tuple[str, ...]) -> str:
    """What the gateway checks once connected: the configured account is among the
    session's ``managedAccounts``. Returns the problem in one line, empty when none."""
    if settings.account and settings.account not in managed:
        listed = ", ".join(managed) or "none"
        return f"account {settings.account} is not served by this IB session (it serves {listed})"
    return ""
