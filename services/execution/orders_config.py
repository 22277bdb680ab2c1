"""The ``[orders]`` section of the fleet config: the stop validator's rule, the order
manager's ATR, how many finished ids it remembers and how far a soft breach tightens stops.

Single-key ranges are msgspec constraints, checked when the config is decoded
(``services/config.py``); ``__post_init__`` checks the rules that tie keys together.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

MAX_ATR_PERIOD = 10_000


class OrdersConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``require_stop``: strategies whose positions must carry a protective stop (``"*"``:
    every strategy); the validator places it ``stop_pct`` percent or ``stop_atr`` ATRs from
    the position's average entry price. ``atr_period`` > 0 keeps a Wilder ATR of each
    symbol's bars (needed by ``stop_atr`` and by ``trail_atr`` orders that carry no ``atr``).
    ``keep_done``: finished client order ids remembered to refuse duplicates.
    ``tighten_fraction``: on risk's ``tighten_stops`` alert (a soft breach) each working
    protective stop moves this fraction of its distance toward the last close."""

    require_stop: tuple[str, ...] = ()
    stop_pct: Annotated[float, Meta(gt=0, lt=100)] | None = None
    stop_atr: Annotated[float, Meta(gt=0)] | None = None
    atr_period: Annotated[int, Meta(ge=0, le=MAX_ATR_PERIOD)] = 0
    keep_done: Annotated[int, Meta(ge=0)] = 4096
    tighten_fraction: Annotated[float, Meta(gt=0, le=1)] = 0.5

    def __post_init__(self) -> None:
        if self.stop_pct is not None and self.stop_atr is not None:
            raise ValueError("give stop_pct or stop_atr, not both")
        if self.stop_atr is not None and not self.atr_period:
            raise ValueError("stop_atr needs atr_period > 0")
        if self.require_stop and self.stop_pct is None and self.stop_atr is None:
            raise ValueError("require_stop needs stop_pct or stop_atr")

    def requires_stop(self, strategy: str) -> bool:
        return "*" in self.require_stop or strategy in self.require_stop
