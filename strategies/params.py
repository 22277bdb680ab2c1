"""What every strategy's params share: they are finite numbers before anything else."""

from __future__ import annotations

import math

import msgspec


def require_finite(params: msgspec.Struct) -> None:
    """A NaN or infinite param would compare false everywhere and never trade; refuse it
    by name, first, so range checks after it can assume real numbers."""
    for field in params.__struct_fields__:
        value = getattr(params, field)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{field} must be a finite number")
