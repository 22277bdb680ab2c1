"""One TOML file configures the fleet: what to trade, the rails, guards and sizing
(docs/risk.md), instrument specs, the venue, the portfolio.

Every section is optional; defaults give a working paper fleet. A bad value stops start-up
with one line naming the key (msgspec reports the path, e.g. ``$.risk.max_position``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.intervals import Interval
from eventstore.errors import KeelError
from services.execution.orders_config import OrdersConfig
from services.execution.paper_venue import PaperVenueConfig
from services.governance.decider import GovernanceConfig
from services.notifier.config import NotifierConfig
from services.portfolio.config import PortfolioConfig
from services.risk.limits import GuardsConfig, InstrumentSpec, RiskLimits, SizingConfig
from services.strategy.variant_config import ParamValue, VariantConfig, variant_set
from services.telegram_bot.config import TelegramBotConfig
from services.venues.config import VenueConfig
from services.venues.gateway.config import amends_in_place


class StrategyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = "ma_cross"
    instance: str = ""
    symbols: tuple[str, ...] = ()
    params: dict[str, ParamValue] = msgspec.field(default_factory=dict)
    variants: tuple[VariantConfig, ...] = ()  # models side by side (docs/governance.md)
    max_canary: Annotated[float, Meta(ge=0, le=1)] = 0.1  # the canaries' share, capped

    def __post_init__(self) -> None:
        variant_set(self.variants, self.instance_name)  # one current model, unique tags

    @property
    def instance_name(self) -> str:
        return self.instance or self.name


class MarketConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the marketdata worker publishes. ``venue`` is the synthetic market's name, or a
    ``[[venues]]`` entry's: then the feed is that exchange's live data (docs/venues.md) and
    the rest of the section says what to stream and how to watch it."""

    venue: str = "sim"
    symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    interval: str = "1m"
    seed: int = 7
    universe: Literal["", "usdt_perpetuals"] = ""  # every active USDT perpetual, not symbols
    trades: bool = False  # md.trade.*
    quotes: bool = False  # md.quote.* from the best bid/ask
    quotes_per_s: Annotated[float, Meta(ge=0, le=1000)] = 0.0  # per symbol; 0 = every change
    funding_every_s: Annotated[float, Meta(ge=1, le=86_400)] = 60.0  # perpetuals' funding poll
    stall_grace_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0  # close + this = stale
    poll_every_s: Annotated[float, Meta(gt=0, le=3600)] = 5.0  # REST polling while stale
    lockstep: bool = True  # a burst of bars (backfill) waits for the fleet between time steps
    backfill_bars: Annotated[int, Meta(ge=0, le=100_000)] = 0  # first run: closed bars by REST
    shards: Annotated[int, Meta(ge=1, le=64)] = 1  # feed processes splitting the symbols

    def __post_init__(self) -> None:
        Interval.parse(self.interval, "interval")


class KeelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    market: MarketConfig = msgspec.field(default_factory=MarketConfig)
    strategies: tuple[StrategyConfig, ...] = (
        StrategyConfig(params={"kind": "ema", "fast": 8, "slow": 21, "qty": 1}),
    )
    risk: RiskLimits = msgspec.field(default_factory=RiskLimits)
    guards: GuardsConfig = msgspec.field(default_factory=GuardsConfig)
    sizing: SizingConfig = msgspec.field(default_factory=SizingConfig)
    instruments: tuple[InstrumentSpec, ...] = ()
    execution: PaperVenueConfig = msgspec.field(default_factory=PaperVenueConfig)
    orders: OrdersConfig = msgspec.field(default_factory=OrdersConfig)
    portfolio: PortfolioConfig = msgspec.field(default_factory=PortfolioConfig)
    venues: tuple[VenueConfig, ...] = ()
    governance: GovernanceConfig | None = None  # the governance role, only when configured
    notifier: NotifierConfig | None = None  # the notifier worker, only when configured
    telegram_bot: TelegramBotConfig | None = None  # the command bot, off unless configured

    def __post_init__(self) -> None:
        names = [v.name for v in self.venues]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"venues: {name!r} is named twice")

    @property
    def gateways(self) -> frozenset[str]:
        """The venues a venue gateway trades (``mode`` other than paper)."""
        return frozenset(v.name for v in self.venues if v.gateway_mode)

    @property
    def in_place_gateways(self) -> frozenset[str]:
        """The gateway venues whose protective legs are amended in place (Kraken spot)."""
        return frozenset(
            v.name for v in self.venues if v.gateway_mode and amends_in_place(v.exchange, v.gateway)
        )

    def venue(self, name: str) -> VenueConfig | None:
        """The ``[[venues]]`` entry called ``name``; None for the synthetic market or a file."""
        return next((v for v in self.venues if v.name == name), None)


def load_config(path: Path | None) -> KeelConfig:
    """TOML (what people write), or JSON (what ``keel replay --bus`` hands its workers)."""
    if path is None:
        return KeelConfig()
    try:
        text = path.read_text()
        raw = msgspec.json.decode(text) if path.suffix == ".json" else tomllib.loads(text)
    except FileNotFoundError as exc:
        raise KeelError(f"config {path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise KeelError(f"config {path}: cannot read: {exc}") from exc
    except (tomllib.TOMLDecodeError, msgspec.DecodeError) as exc:
        raise KeelError(
            f"config {path}: not valid {path.suffix[1:].upper() or 'TOML'}: {exc}"
        ) from exc
    try:
        return msgspec.convert(raw, KeelConfig)
    except msgspec.ValidationError as exc:
        raise KeelError(f"config {path}: {exc}") from exc
