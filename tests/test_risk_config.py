"""The risk sections of the TOML config: the depeg example loads, every bad value fails
with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.intervals import duration_ns
from eventstore.errors import KeelError
from services.config import load_config

DEPEG_EXAMPLE = """
[guards.depeg]
asset = "USDC"
reference = "USD"
threshold_pct = 1.0
resume_after = "6h"
action = "halt_entries"   # or "flatten"
"""

FULL = """
[risk]
trading_enabled = true
allowed_symbols = ["BTC/USDT", "ETH/USDT", "BTC/USDC"]
denied_symbols = ["LUNA/USDT"]
min_order_notional = 10
max_order_notional = 5000
max_position = 2
max_symbol_exposure = 20000
max_venue_exposure = 50000
max_total_exposure = 80000
max_open_positions = 5
max_orders_per_minute = 30
max_venue_orders_per_minute = 60
equity_floor = 50000
max_drawdown_pct = 15
max_daily_loss_pct = 3
soft_drawdown_pct = 10
soft_daily_loss_pct = 2
soft_action = "safe_mode"
flatten_on_halt = true

[risk.breaker]
window = "5m"
min_reports = 5
max_error_pct = 50
cooldown = "2m"

[risk.correlation]
max = 0.8
window = 60
min_periods = 20

[[guards.depeg]]
asset = "USDC"
threshold_pct = 1.0
resume_after = "6h"
action = "flatten"

[[guards.depeg]]
asset = "USDT"
threshold_pct = 2.0

[guards.funding]
threshold_pct = 0.1
action = "trim"
trim_pct = 50

[sizing]
mode = "turtle"
risk_pct = 1.0
atr_multiple = 2.0

[sizing.strategies.ma]
mode = "fixed_notional"
notional = 1000

[[instruments]]
venue = "binance"
symbol = "BTC/USDT"
lot_size = 0.00001
tick_size = 0.01
min_notional = 5
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "keel.toml"
    path.write_text(text)
    return load_config(path)


def test_the_depeg_example_loads(tmp_path: Path) -> None:
    config = load(tmp_path, DEPEG_EXAMPLE)
    [guard] = config.guards.depegs
    assert (guard.asset, guard.reference, guard.threshold_pct, guard.action) == (
        "USDC",
        "USD",
        1.0,
        "halt_entries",
    )
    assert guard.resume_ns == 6 * 3_600 * 10**9


def test_every_section_loads(tmp_path: Path) -> None:
    config = load(tmp_path, FULL)
    assert config.risk.breaker is not None and config.risk.breaker.cooldown == "2m"
    assert [g.asset for g in config.guards.depegs] == ["USDC", "USDT"]
    assert config.guards.funding is not None and config.guards.funding.action == "trim"
    assert config.sizing.rule("ma").mode == "fixed_notional"
    assert config.sizing.rule("other").mode == "turtle"
    assert config.instruments[0].lot_size == 0.00001


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        (
            "[risk]\nmax_drawdown_pct = 150\n",
            ["Expected `float` <= 100.0", "$.risk.max_drawdown_pct"],
        ),
        (
            "[risk]\nmax_symbol_exposure = -1\n",
            ["Expected `float` > 0.0", "$.risk.max_symbol_exposure"],
        ),
        (
            "[risk]\nmax_position = inf\n",
            ["max_position must be a finite number (got inf)", "$.risk"],
        ),
        ("[risk]\nmax_open_positions = 0\n", ["Expected `int` >= 1", "$.risk.max_open_positions"]),
        (
            "[risk]\nmin_order_notional = 10\nmax_order_notional = 5\n",
            ["min_order_notional (10) is above max_order_notional (5)"],
        ),
        (
            "[risk]\nsoft_drawdown_pct = 20\nmax_drawdown_pct = 10\n",
            ["soft_drawdown_pct (20) must be below max_drawdown_pct (10)"],
        ),
        ('[risk]\nsoft_action = "panic"\n', ["$.risk.soft_action"]),
        (
            '[risk.breaker]\ncooldown = "soon"\n',
            ["cooldown ('soon') must be a duration", "$.risk.breaker"],
        ),
        ("[risk.correlation]\nmax = 2\n", ["Expected `float` <= 1.0", "$.risk.correlation.max"]),
        (
            "[risk.correlation]\nwindow = 10\nmin_periods = 20\n",
            ["min_periods must be within [3, window] (got 20)", "$.risk.correlation"],
        ),
        (
            '[risk.correlation]\ninterval = "1M"\n',
            ["interval '1M': expected a whole number > 0 and a unit", "$.risk.correlation"],
        ),
        (
            '[guards.depeg]\nasset = "USDC"\nresume_after = "6 hours"\n',
            ["resume_after", "$.guards.depeg"],
        ),
        (
            '[guards.depeg]\nasset = "USDC"\nthreshold_pct = 0\n',
            ["Expected `float` > 0.0", "$.guards.depeg.threshold_pct"],
        ),
        ('[guards.depeg]\nasset = "USDC"\naction = "sell"\n', ["$.guards.depeg"]),
        ("[guards.depeg]\nthreshold_pct = 1\n", ["asset", "$.guards.depeg"]),
        ('[guards.funding]\naction = "hedge"\n', ["$.guards.funding.action"]),
        (
            "[guards.funding]\ntrim_pct = 0\n",
            ["Expected `float` > 0.0", "$.guards.funding.trim_pct"],
        ),
        ("[guards.typo]\nx = 1\n", ["typo", "$.guards"]),
        (
            '[sizing]\nmode = "turtle"\natr_multiple = 0\n',
            ["Expected `float` > 0.0", "$.sizing.atr_multiple"],
        ),
        (
            '[sizing]\nmode = "fixed_notional"\n',
            ["mode 'fixed_notional' needs notional", "$.sizing"],
        ),
        ('[sizing]\nmode = "kelly"\n', ["$.sizing.mode"]),
        (
            '[sizing.strategies.ma]\nmode = "pct_equity"\n',
            ["mode 'pct_equity' needs pct", "$.sizing.strategies"],
        ),
        (
            '[[instruments]]\nvenue = "v"\nsymbol = "X/Y"\nlot_size = -1\n',
            ["Expected `float` >= 0.0", "$.instruments[0].lot_size"],
        ),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    with pytest.raises(KeelError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config {tmp_path / 'keel.toml'}: ")
    for needle in needles:
        assert needle in message, message


def test_durations() -> None:
    assert duration_ns("90s", "x") == 90 * 10**9
    assert duration_ns("1.5h", "x") == 5_400 * 10**9
    assert duration_ns("250ms", "x") == 250_000_000
    assert duration_ns("0s", "x") == 0
    with pytest.raises(ValueError, match="x"):
        duration_ns("6 hours", "x")
