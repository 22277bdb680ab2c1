"""Which gateway venues amend protective legs in place reaches the order manager from the
config (Kraken spot by default, ``[venues.gateway] amend_in_place`` either way)."""

from __future__ import annotations

from pathlib import Path

from services.config import load_config
from services.execution.gateway_venue import GatewayVenue
from services.fleet import fleet_roles

CONFIG = """
[market]
venue = "kr"
symbols = ["BTC/USD"]
interval = "1m"

[[strategies]]
name = "ma_cross"
symbols = ["BTC/USD"]

[[venues]]
name = "kr"
exchange = "kraken"
mode = "live"
live = true

[[venues]]
name = "bn"
exchange = "binance"
sandbox = true
mode = "sandbox"

[[venues]]
name = "bn2"
exchange = "binance"
sandbox = true
mode = "sandbox"
[venues.gateway]
amend_in_place = true

[[venues]]
name = "kr2"
exchange = "kraken"
mode = "live"
live = true
[venues.gateway]
amend_in_place = false
"""


def test_kraken_amends_in_place_by_default_and_the_setting_overrides(tmp_path: Path) -> None:
    path = tmp_path / "keel.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    assert config.gateways == {"kr", "bn", "bn2", "kr2"}
    assert config.in_place_gateways == {"kr", "bn2"}
    (execution,) = [r for r in fleet_roles(config) if r.name == "execution"]
    venue = execution.decider.venue  # type: ignore[attr-defined]
    assert isinstance(venue, GatewayVenue) and venue.in_place == {"kr", "bn2"}
