"""The base of every event: its event time, and the rule that float fields are finite.

A module of its own so the families of events (``events.py``, ``external_events.py``) can
share it without importing each other.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable
from typing import Annotated, get_args

import msgspec
from msgspec import UNSET, UnsetType

_isfinite = math.isfinite

Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An integer that fits the log's exports (Parquet, DuckDB): JSON carries any integer, and
one beyond 64 bits would be stored and then fail whatever reads it back."""

NAME = re.compile(r"[A-Za-z0-9_-]+")
"""What a name used verbatim as a subject token may hold (``contracts/subjects.py``)."""


class Event(msgspec.Struct, frozen=True, tag=True, tag_field="type", kw_only=True):
    """Base of every event; ``ts`` is the event time the producer's clock assigned.

    Float fields must be finite: JSON cannot carry NaN or infinity, so such an event could
    be stored but never read back.
    """

    ts: Int64

    def __post_init__(self) -> None:
        required, optional = _float_fields(type(self))
        values = required(self) if required else ()
        try:
            finite = math.isfinite(math.fsum(values))
        except OverflowError:
            finite = False
        if not finite or (optional and not _all_finite(optional(self))):
            for field in self.__struct_fields__:
                value = getattr(self, field)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{field} must be finite")


_FloatGetter = Callable[[Event], tuple[float | None, ...]]
_FLOAT_FIELDS: dict[type, tuple[_FloatGetter | None, _FloatGetter | None]] = {}


def _getter(names: list[str]) -> _FloatGetter | None:
    if not names:
        return None
    get = operator.attrgetter(*names)
    return get if len(names) > 1 else lambda event: (get(event),)


def _float_fields(cls: type) -> tuple[_FloatGetter | None, _FloatGetter | None]:
    """Getters of a class's float fields (required, optional): the finite check runs on every
    event built, so it is done with one ``fsum`` over the values, not a loop per field."""
    cached = _FLOAT_FIELDS.get(cls)
    if cached is None:
        fields = msgspec.structs.fields(cls)
        required = [f.name for f in fields if f.type is float]
        optional = [f.name for f in fields if f.type is not float and float in get_args(f.type)]
        cached = _FLOAT_FIELDS[cls] = (_getter(required), _getter(optional))
    return cached


def _all_finite(values: tuple[float | UnsetType | None, ...]) -> bool:
    return all(v is None or v is UNSET or _isfinite(v) for v in values)


def require(condition: bool, message: str) -> None:
    """A check of an event's fields, raised as the ``ValueError`` msgspec reports on decode."""
    if not condition:
        raise ValueError(message)


@functools.lru_cache(maxsize=4096)
def is_token(name: str) -> bool:
    """Whether ``name`` can stand as a subject token (cached: it runs for every fill)."""
    return NAME.fullmatch(name) is not None


def require_order_prices(order_type: str, limit: float | None, stop: float | None) -> None:
    """The prices an order of ``order_type`` needs, each > 0 when given (an order command
    and the venue leg made from it obey the same rules)."""
    require(limit is None or limit > 0, "limit_price must be > 0")
    require(stop is None or stop > 0, "stop_price must be > 0")
    require(order_type != "limit" or limit is not None, "limit needs price")
    require(order_type != "stop" or stop is not None, "stop needs stop_price")
    require(
        order_type != "stop_limit" or (stop is not None and limit is not None),
        "stop_limit needs both stop_price and limit_price",
    )
