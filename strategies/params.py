"""What every strategy's params share: one error type for the user, and finite numbers."""

from __future__ import annotations

import math

import msgspec


class StrategyError(ValueError):
    """Unknown strategy, bad params or a missing model; the message is one line for the user."""


def require_finite(params: msgspec.Struct) -> None:
    """A NaN or infinite param would compare false everywhere and never trade; refuse it
    by name, first, so range checks after it can assume real numbers."""
    for field in params.__struct_fields__:
        value = getattr(params, field)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number")
