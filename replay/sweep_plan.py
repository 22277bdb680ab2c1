"""What a sweep runs: its definition, the grid parsed and typed into combinations, and the
backtest spec of each combination.

A sweep is a base ``BacktestSpec`` (one strategy), a grid of that strategy's params and the
metric that ranks the runs. Grid values are given as text (``fast=5,10,20``) or as ranges
(``fast=5:50:5``: start inclusive, stop exclusive, like ``range``; ints or decimals) and are
converted by the strategy's params struct. A combination the struct refuses (``fast >= slow``)
is skipped and counted; a value no combination could use (``fast=abc``, an unknown key) is an
error.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Literal, get_args

import msgspec

from contracts.intervals import IntervalError, duration_ns
from eventstore.errors import KeelError
from replay.backtest import BacktestSpec
from services.config import StrategyConfig
from strategies.registry import REGISTRY, StrategyError

Metric = Literal["sharpe", "return_pct", "sortino", "max_drawdown_pct", "profit_factor"]
METRICS: tuple[str, ...] = get_args(Metric)
Scalar = str | int | float | bool

MAX_RANGE = 10_000
MAX_COMBINATIONS = 100_000

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"\s*({_NUMBER})\s*:\s*({_NUMBER})\s*:\s*({_NUMBER})\s*")


# --- definition ---------------------------------------------------------------------------------


class WalkForward(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    train: str
    test: str
    train_ns: int
    test_ns: int

    @classmethod
    def parse(cls, train: str, test: str) -> WalkForward:
        return cls(train, test, _window_ns(train, "--train"), _window_ns(test, "--test"))


class SweepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What ``sweep.json`` records: enough to run the same sweep again."""

    base: BacktestSpec
    grid: dict[str, list[Scalar]]
    sort: Metric = "sharpe"
    walk_forward: WalkForward | None = None


def _window_ns(text: str, what: str) -> int:
    """A walk-forward window's length (``7d``, ``12h``, ``1.5h``); it must be longer than zero."""
    try:
        ns = duration_ns(text, what)
    except IntervalError:
        raise KeelError(f"{what} {text!r}: use a number and a unit, e.g. 7d, 12h or 90m") from None
    if ns < 1:
        raise KeelError(f"{what} {text!r} must be > 0")
    return ns


class Plan(msgspec.Struct, frozen=True):
    """The valid combinations (full, typed params) and why the others were skipped."""

    params: list[dict[str, Scalar]]
    skipped: list[str]


# --- parsing ------------------------------------------------------------------------------------


def parse_grid(items: Sequence[str]) -> dict[str, list[Scalar]]:
    """``["fast=5,10", "slow=30:60:10"]`` -> ``{"fast": ["5", "10"], "slow": [30, 40, 50]}``."""
    grid: dict[str, list[Scalar]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise KeelError(f"grid {item!r} must look like key=v1,v2 or key=start:stop:step")
        if key in grid:
            raise KeelError(f"grid key {key!r} given twice")
        values: list[Scalar] = []
        for part in text.split(","):
            expanded = _range(key, part) if _RANGE.fullmatch(part) else [part.strip()]
            if expanded == [""]:
                raise KeelError(f"grid {key}: empty value in {text!r}")
            for value in expanded:
                if value not in values:
                    values.append(value)
        grid[key] = values
    if not grid:
        raise KeelError("empty grid: give at least one --grid key=v1,v2")
    return grid


def _range(key: str, text: str) -> list[Scalar]:
    match = _RANGE.fullmatch(text)
    assert match is not None
    try:
        start, stop, step = (Decimal(g) for g in match.groups())
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise KeelError(f"grid {key}={text}: not a range") from exc
    if step == 0:
        raise KeelError(f"grid {key}={text.strip()}: step must not be 0")
    count = max(0, math.ceil((stop - start) / step))
    if count == 0:
        raise KeelError(f"grid {key}={text.strip()}: the range is empty")
    if count > MAX_RANGE:
        raise KeelError(f"grid {key}={text.strip()}: {count:,} values (at most {MAX_RANGE:,})")
    integral = all("." not in g for g in match.groups())
    points = (start + i * step for i in range(count))
    return [int(p) if integral else float(p) for p in points]


# --- planning -----------------------------------------------------------------------------------


def swept_strategy(base: BacktestSpec) -> StrategyConfig:
    if len(base.config.strategies) != 1:
        raise KeelError(
            f"a sweep varies one strategy; the config has {len(base.config.strategies)}: "
            "pick one with --strategy"
        )
    return base.config.strategies[0]


def params_type(name: str) -> type[msgspec.Struct]:
    entry = REGISTRY.get(name)
    if entry is None:
        raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return entry.params


def plan_sweep(sweep: SweepSpec) -> Plan:
    """Every grid combination merged over the base params, typed; invalid ones skipped."""
    strategy = swept_strategy(sweep.base)
    kind = params_type(strategy.name)
    fields = {f.name: f.type for f in msgspec.structs.fields(kind)}

    def typed(key: str, value: Scalar, what: str) -> Scalar:
        if key not in fields:
            raise StrategyError(
                f"{what}: strategy {strategy.name} has no param {key!r}; "
                f"params: {', '.join(fields)}"
            )
        try:
            converted = msgspec.convert(value, fields[key], strict=False)
        except msgspec.ValidationError as exc:
            raise StrategyError(f"{what} {key}={value!r}: {exc}") from None
        return converted if isinstance(converted, str | int | float | bool) else value

    base = {k: typed(k, v, "param") for k, v in strategy.params.items()}
    if not sweep.grid:
        raise KeelError("empty grid: give at least one --grid key=v1,v2")
    axes = {  # typed, then deduplicated: "50" and 50 are one value of an int param
        k: list(dict.fromkeys(typed(k, v, "grid") for v in values))
        for k, values in sweep.grid.items()
    }
    total = math.prod(len(v) for v in axes.values())
    if total == 0:
        raise KeelError("empty grid: a grid key has no values")
    if total > MAX_COMBINATIONS:
        raise KeelError(f"the grid has {total:,} combinations (at most {MAX_COMBINATIONS:,})")
    valid: list[dict[str, Scalar]] = []
    skipped: list[str] = []
    for values in itertools.product(*axes.values()):
        params = {**base, **dict(zip(axes, values, strict=True))}
        try:
            msgspec.convert(params, kind, strict=False)
        except msgspec.ValidationError as exc:
            skipped.append(str(exc))
            continue
        valid.append(params)
    if not valid:
        raise StrategyError(
            f"no valid combination in the grid ({len(skipped)} tried): {skipped_summary(skipped)}"
        )
    return Plan(valid, skipped)


def skipped_summary(reasons: Sequence[str], limit: int = 3) -> str:
    distinct = list(dict.fromkeys(reasons))
    text = "; ".join(distinct[:limit])
    return text + (" ..." if len(distinct) > limit else "")


def spec_with(
    base: BacktestSpec,
    params: Mapping[str, Scalar],
    window: tuple[int | None, int | None] | None = None,
) -> BacktestSpec:
    """The base spec with the strategy's params replaced (and optionally another window)."""
    strategy = msgspec.structs.replace(swept_strategy(base), params=dict(params))
    config = msgspec.structs.replace(base.config, strategies=(strategy,))
    if window is None:
        return msgspec.structs.replace(base, config=config)
    return msgspec.structs.replace(base, config=config, start=window[0], end=window[1])
