"""One TOML file configures the fleet: what to trade, the rails, guards and sizing
(docs/risk.md), instrument specs, the venue, the portfolio.

Every section is optional; defaults give a working paper fleet. A bad value stops start-up
with one line naming the key (msgspec reports the path, e.g. ``$.risk.max_position``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec

from contracts.intervals import Interval
from eventstore.errors import KeelError
from services.execution.orders_config import OrdersConfig
from services.execution.paper_venue import PaperVenueConfig
from services.portfolio.config import PortfolioConfig
from services.risk.limits import GuardsConfig, InstrumentSpec, RiskLimits, SizingConfig


class StrategyConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = "ma_cross"
    instance: str = ""
    symbols: tuple[str, ...] = ()
    params: dict[str, str | int | float | bool] = msgspec.field(default_factory=dict)

    @property
    def instance_name(self) -> str:
        return self.instance or self.name


class MarketConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    venue: str = "sim"
    symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT", "SOL/USDT")
    interval: str = "1m"
    seed: int = 7

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
