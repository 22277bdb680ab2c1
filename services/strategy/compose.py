"""A strategy composed for a role: its params parsed, and what they name outside it loaded.

Strategies are pure (``strategies/``): they read no file and open no connection. Here, once,
when a role is built, the regime model (a model file, or the Object Store by
``NAME[:TAG]``) and the starting calibrations (a calibration file) are loaded and handed to
the registry's build as values. Every place that builds roles (the fleet, ``keel run
strategy``, backtests, bus replays, the strategy bench) builds strategies here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import msgspec

from eventstore.model_store import fetch_model, read_model_file
from services.strategy.calibration_file import CalibrationError, read_calibrations
from services.strategy.variant_config import VariantConfig
from strategies.ma_hmm import Calibrations, MaHmmParams
from strategies.params import StrategyError
from strategies.regime.model import ModelError
from strategies.registry import Resolved, Strategy, build_strategy, strategy_params


def resolve(params: msgspec.Struct) -> Resolved:
    """Load what ``params`` name: ``ModelError`` or ``CalibrationError`` when it cannot be."""
    match params:
        case MaHmmParams(model_file=path, model=ref, calibration=calibration):
            model = read_model_file(path) if path else fetch_model(ref)
            calibrations = read_calibrations(Path(calibration)) if calibration else Calibrations()
            return Resolved(model=model, calibrations=calibrations)
        case _:
            return Resolved()


def compose_strategy(
    name: str, params: Mapping[str, object], instance: str | None = None
) -> Strategy:
    """The strategy ``name`` with ``params``; ``StrategyError`` (one line) when it cannot be."""
    parsed = strategy_params(name, params)
    try:
        resolved = resolve(parsed)
    except (ModelError, CalibrationError) as exc:
        raise StrategyError(f"strategy {instance or name}: {exc}") from None
    return build_strategy(name, parsed, instance, resolved)


def compose_variants(
    name: str,
    params: Mapping[str, object],
    instance: str,
    variants: Sequence[VariantConfig],
) -> tuple[tuple[str, Strategy], ...]:
    """One strategy per variant, each with the instance's params overridden by its own; a
    variant that cannot be built is one line naming it."""
    built = []
    for v in variants:
        try:
            built.append((v.tag, compose_strategy(name, {**params, **v.params}, instance)))
        except StrategyError as exc:
            raise StrategyError(f"strategy {instance}, variant {v.tag}: {exc}") from None
    return tuple(built)
