"""Incremental indicators: O(1) per update, state kept in msgspec structs so a worker's
snapshot can carry them. ``update`` returns the current value or None while warming up. The
indicators whose value is a tuple also have ``advance``: the same step without building the
tuple (a NamedTuple costs more than the step itself in CPython); hot loops read the value
from the struct's fields instead.

The indicators the rule engine runs many of a bar also have a slotted form (``SlottedEMA``
and so on, see ``slotted``): the same step methods over plain ``__slots__`` attributes.
"""

from strategies.indicators.averages import EMA, SMA, WMA, SlottedEMA
from strategies.indicators.rolling import (
    CANCELLATION_GUARD,
    RESYNC_FACTOR,
    BollingerBands,
    BollingerValue,
    Channel,
    Donchian,
    DonchianValue,
    Moments,
    RollingVolatility,
    SlottedBollingerBands,
    SlottedChannel,
    SlottedMoments,
    SlottedStochastic,
    Stochastic,
    StochasticValue,
    ZScore,
)
from strategies.indicators.slotted import Slotted
from strategies.indicators.wilder import ADX, ATR, RSI, ADXValue, SlottedADX, SlottedATR, SlottedRSI

__all__ = [
    "ADX",
    "ATR",
    "CANCELLATION_GUARD",
    "EMA",
    "RESYNC_FACTOR",
    "RSI",
    "SMA",
    "WMA",
    "ADXValue",
    "BollingerBands",
    "BollingerValue",
    "Channel",
    "Donchian",
    "DonchianValue",
    "Moments",
    "RollingVolatility",
    "Slotted",
    "SlottedADX",
    "SlottedATR",
    "SlottedBollingerBands",
    "SlottedChannel",
    "SlottedEMA",
    "SlottedMoments",
    "SlottedRSI",
    "SlottedStochastic",
    "Stochastic",
    "StochasticValue",
    "ZScore",
]
