"""Spot instruments never go short unless the account allows it, and bracket prices from a
signal land on the instrument's tick grid, away from the entry."""

from __future__ import annotations

import msgspec

from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits
from tests.factories import report
from tests.risk_helpers import BTC, T0, bar, instrument, order_of, rejection, sig


def _engine(kind: str = "spot", **limits: object) -> RiskEngine:
    engine = RiskEngine(RiskLimits(**limits))  # type: ignore[arg-type]
    engine.decide(instrument(BTC, tick=0.5, kind=kind), T0)
    engine.decide(bar(100.0), T0)
    return engine


def test_a_spot_short_is_refused_by_name_and_numbers() -> None:
    out = _engine().decide(sig(-1.0), T0)
    refused = rejection(out, "spot_short")
    assert "net position -1 would be short" in refused.reason


def test_reducing_a_spot_long_to_flat_is_fine_and_a_flip_is_not() -> None:
    engine = _engine()
    buy = order_of(engine.decide(sig(1.0), T0))
    engine.decide(report(buy, "filled", fill_qty=1.0, price=100.0), T0)
    assert order_of(engine.decide(sig(0.0, ts=T0 + 1), T0 + 1)).side == "sell"


def test_spot_shorts_allowed_on_a_margin_account_and_perpetuals() -> None:
    assert order_of(_engine(spot_shorts=True).decide(sig(-1.0), T0)).side == "sell"
    assert order_of(_engine(kind="perpetual").decide(sig(-1.0), T0)).side == "sell"


def test_bracket_prices_are_rounded_away_from_the_entry() -> None:
    engine = _engine(brackets=True, spot_shorts=True)
    long_signal = msgspec.structs.replace(sig(1.0), stop=97.3, target=104.2, atr=1.5)
    long = order_of(engine.decide(long_signal, T0))
    assert (long.stop_loss, long.take_profit, long.atr) == (97.0, 104.5, 1.5)
    engine = _engine(brackets=True, spot_shorts=True)
    short_signal = msgspec.structs.replace(sig(-1.0), stop=102.2, target=95.8)
    short = order_of(engine.decide(short_signal, T0))
    assert (short.stop_loss, short.take_profit) == (102.5, 95.5)
