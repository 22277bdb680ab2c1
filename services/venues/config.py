"""``[[venues]]`` entries: which exchange a venue name stands for and how to reach it.

``kind = "ccxt"`` (the default) is an exchange ccxt speaks to; ``kind = "ib"`` is Interactive
Brokers through IB Gateway or TWS, configured in its ``ib`` table (``services/venues/ib/``).

A venue's ``urls`` and ``options`` tables are merged into ccxt's own (``ccxt_exchange``):
that is how a testnet, a proxy or a loopback simulator stands in for the exchange. Secrets
are never in the TOML: ``credentials`` names environment variables or files, read when the
exchange is built (``Secrets``), and nothing that prints a config shows them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from contracts.subjects import name_token
from contracts.venue_events import VenueMode
from services.venues.gateway.config import GatewayConfig
from services.venues.ib.settings import IbSettings, check_mode

VenueKind = Literal["ccxt", "ib"]
SECRET_FIELDS = ("api_key", "secret", "password", "uid")
"""The ccxt credential attributes a venue may need (``password`` is a passphrase)."""


class Credentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where each secret comes from: ``<field>_env`` an environment variable's name,
    ``<field>_file`` a file whose first line is the secret. Never the secret itself."""

    api_key_env: str = ""
    api_key_file: str = ""
    secret_env: str = ""
    secret_file: str = ""
    password_env: str = ""
    password_file: str = ""
    uid_env: str = ""
    uid_file: str = ""

    def __post_init__(self) -> None:
        for field in SECRET_FIELDS:
            if getattr(self, f"{field}_env") and getattr(self, f"{field}_file"):
                raise ValueError(f"credentials.{field}: give {field}_env or {field}_file, not both")

    @property
    def given(self) -> tuple[str, ...]:
        """The secrets this entry says where to find."""
        return tuple(
            f for f in SECRET_FIELDS if getattr(self, f"{f}_env") or getattr(self, f"{f}_file")
        )


class VenueConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One ``[[venues]]`` entry (docs/venues.md). ``sandbox`` selects the exchange's testnet,
    ``demo`` its demo trading environment; ``timeout_ms`` bounds each REST request.
    ``mode`` is how orders for it are traded: ``paper`` (the paper venue, on this venue's
    data), ``sandbox`` or ``demo`` (a venue gateway sends them to that environment) or
    ``live`` (real money: also needs ``live = true`` here and ``keel up --live``);
    ``gateway`` (``[venues.gateway]``) times and bounds its gateway.

    For ``kind = "ib"``: ``ib`` holds the connection and contracts; ``exchange`` is ``ib``
    (filled in when left out); the ccxt fields (sandbox, demo, urls, options, credentials)
    do not apply and are refused; IB's paper account is ``mode = "demo"``."""

    name: str
    exchange: str = ""
    kind: VenueKind = "ccxt"
    sandbox: bool = False
    demo: bool = False
    urls: dict[str, Any] = msgspec.field(default_factory=dict)
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    credentials: Credentials = msgspec.field(default_factory=Credentials)
    timeout_ms: Annotated[int, Meta(ge=100, le=120_000)] = 10_000
    mode: VenueMode = "paper"
    live: bool = False
    gateway: GatewayConfig = msgspec.field(default_factory=GatewayConfig)
    ib: IbSettings | None = None

    def __post_init__(self) -> None:
        name_token(self.name, "venue name")
        if self.kind == "ib":
            self._check_ib()
            return
        if self.ib is not None:
            raise ValueError('an ib table needs kind = "ib"')
        if not self.exchange:
            raise ValueError("exchange must name a ccxt exchange id")
        if self.sandbox and self.demo:
            raise ValueError("sandbox and demo are two environments: choose one")
        if self.mode == "sandbox" and not self.sandbox:
            raise ValueError('mode = "sandbox" trades on the testnet: it needs sandbox = true')
        if self.mode == "demo" and not self.demo:
            raise ValueError('mode = "demo" trades on demo trading: it needs demo = true')
        if self.mode == "live" and (self.sandbox or self.demo):
            raise ValueError('mode = "live" trades real money: not with sandbox or demo')
        if self.mode == "live" and not self.live:
            raise ValueError('mode = "live" trades real money: it also needs live = true')
        if self.live and self.mode != "live":
            raise ValueError('live = true only goes with mode = "live"')

    def _check_ib(self) -> None:
        if self.exchange not in ("", "ib"):
            raise ValueError(f'exchange {self.exchange!r}: an ib venue\'s exchange is "ib"')
        msgspec.structs.force_setattr(self, "exchange", "ib")
        ccxt_only = {
            "sandbox": self.sandbox,
            "demo": self.demo,
            "urls": self.urls,
            "options": self.options,
            "credentials": self.credentials.given,
        }
        for field, value in ccxt_only.items():
            if value:
                raise ValueError(
                    f"{field} is for ccxt venues: an ib venue logs in through IB Gateway "
                    "and is configured in its ib table"
                )
        if self.ib is None or not self.ib.contracts:
            raise ValueError('kind = "ib" needs an ib table with [[venues.ib.contracts]]')
        check_mode(self.ib, self.mode)
        if self.mode == "live" and not self.live:
            raise ValueError('mode = "live" trades real money: it also needs live = true')
        if self.live and self.mode != "live":
            raise ValueError('live = true only goes with mode = "live"')

    @property
    def gateway_mode(self) -> bool:
        """Whether a venue gateway trades this venue (every mode but paper)."""
        return self.mode != "paper"
