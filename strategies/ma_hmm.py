"""MA + HMM ensemble: a moving-average vote fused with filtered regime probabilities.

Per series (venue, symbol, interval), on each closed bar once the averages and the regime
features are warm: the MA vote is +1 (fast above slow), -1 (below) or 0, and the regime
filter (``strategies/regime``) gives P(bull), P(bear), P(range) from bars up to this one.
With the symbol's calibration gain g, every confidence is ``min(1, g * P)``:

- long confidence = g * P(bull) when the vote is +1, else 0; short mirrors it with P(bear);
- long when the long confidence >= ``threshold``; short (``long_short``) when the short one
  is, flat instead in ``long_only``;
- a long goes flat when the vote turns -1 or g * P(bear) >= ``threshold`` (a short mirrors);
- after every signal, ``round(cooldown_bars * cooldown_scale)`` bars without a new one.

Target position = ``qty * quote_multiplier * side``. Signals carry the HMM model's
``name:tag`` as model tag. The class is pure: calibration arrives through ``calibrate``;
reading and re-reading the calibration file, and loading the model, happen in
``build_ma_hmm`` and ``CalibratedStrategy`` (the build path), never in ``MaHmm.on_bar``.
"""

from __future__ import annotations

import logging
import math
import os
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from contracts.events import Bar, Signal, TradingMode
from eventstore.model_store import fetch_model, parse_ref
from strategies.indicators import EMA, SMA
from strategies.regime.filter import FilterState, RegimeFilter
from strategies.regime.model import ModelError, RegimeModel, read_model_file

log = logging.getLogger(__name__)


class MaHmmParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str = ""
    model_file: str = ""
    kind: Literal["sma", "ema"] = "ema"
    fast: int = 10
    slow: int = 30
    threshold: float = 0.6
    cooldown_bars: int = 10
    mode: TradingMode = "long_only"
    qty: float = 1.0
    calibration: str = ""
    calibration_reload_s: float = 5.0

    def __post_init__(self) -> None:
        if bool(self.model) == bool(self.model_file):
            raise ValueError("give exactly one of model=NAME[:TAG] and model_file=PATH")
        if self.model:
            parse_ref(self.model)
        if self.fast < 1 or self.slow < 1:
            raise ValueError("fast and slow must be >= 1")
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        if not 0 < self.threshold <= 1:
            raise ValueError(f"threshold ({self.threshold}) must be within (0, 1]")
        if self.cooldown_bars < 0:
            raise ValueError(f"cooldown_bars ({self.cooldown_bars}) must be >= 0")
        if not (math.isfinite(self.qty) and self.qty > 0):
            raise ValueError("qty must be > 0")
        if not (math.isfinite(self.calibration_reload_s) and self.calibration_reload_s >= 0):
            raise ValueError("calibration_reload_s must be >= 0")


class Calibration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-symbol tuning: confidence gain, position-size factor, cooldown factor."""

    confidence_gain: float = 1.0
    quote_multiplier: float = 1.0
    cooldown_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("confidence_gain", "quote_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} ({value}) must be > 0")
        if not (math.isfinite(self.cooldown_scale) and self.cooldown_scale >= 0):
            raise ValueError(f"cooldown_scale ({self.cooldown_scale}) must be >= 0")


class Calibrations(msgspec.Struct, frozen=True):
    """The calibration of every symbol: its own entry, else the ``*`` entry, else neutral."""

    default: Calibration = Calibration()
    symbols: dict[str, Calibration] = msgspec.field(default_factory=dict)

    def of(self, symbol: str) -> Calibration:
        return self.symbols.get(symbol, self.default)


class _Series(msgspec.Struct):
    fast: SMA | EMA
    slow: SMA | EMA
    regime: FilterState
    side: int = 0
    cooldown: int = 0


class MaHmmState(msgspec.Struct):
    model: str = ""
    series: dict[str, _Series] = msgspec.field(default_factory=dict)


class MaHmm:
    def __init__(self, name: str, params: MaHmmParams, model: RegimeModel) -> None:
        self.name = name
        self.params = params
        self.model = model
        self.model_tag = model.key
        self.filter = RegimeFilter(model)
        self.calibrations = Calibrations()
        self.state = MaHmmState(model=model.key)
        self._keys: dict[tuple[str, str, str], str] = {}

    def calibrate(self, calibrations: Calibrations) -> None:
        """Use these calibrations from the next bar on."""
        self.calibrations = calibrations

    def _series(self, bar: Bar) -> _Series:
        ids = (bar.venue, bar.symbol, bar.interval)
        key = self._keys.get(ids)
        if key is None:
            key = self._keys[ids] = "|".join(ids)
        series = self.state.series.get(key)
        if series is None:
            make = SMA if self.params.kind == "sma" else EMA
            series = _Series(make(self.params.fast), make(self.params.slow), FilterState())
            self.state.series[key] = series
        return series

    def on_bar(self, bar: Bar) -> list[Signal]:
        series = self._series(bar)
        fast = series.fast.update(bar.close)
        slow = series.slow.update(bar.close)
        regime = self.filter.step(series.regime, bar)
        cooling = series.cooldown > 0
        if cooling:
            series.cooldown -= 1
        if fast is None or slow is None or regime is None:
            return []
        p = self.params
        calibration = self.calibrations.of(bar.symbol)
        gain = calibration.confidence_gain
        bull = min(1.0, gain * regime.bull)
        bear = min(1.0, gain * regime.bear)
        vote = 1 if fast > slow else -1 if fast < slow else 0
        side = series.side
        if vote > 0 and bull >= p.threshold:
            target, confidence = 1, bull
        elif vote < 0 and bear >= p.threshold:
            target, confidence = (-1 if p.mode == "long_short" else 0), bear
        elif side > 0 and (vote < 0 or bear >= p.threshold):
            target, confidence = 0, min(1.0, gain * (1.0 - regime.bull))
        elif side < 0 and (vote > 0 or bull >= p.threshold):
            target, confidence = 0, min(1.0, gain * (1.0 - regime.bear))
        else:
            return []
        if target == side or cooling:
            return []
        series.side = target
        series.cooldown = round(p.cooldown_bars * calibration.cooldown_scale)
        direction = "up" if vote > 0 else "down" if vote < 0 else "level"
        return [
            Signal(
                ts=bar.close_time,
                strategy=self.name,
                venue=bar.venue,
                symbol=bar.symbol,
                model_tag=self.model_tag,
                target_position=p.qty * calibration.quote_multiplier * target,
                confidence=confidence,
                reason=(
                    f"{p.kind} {p.fast}/{p.slow} {direction}, P(bull)={regime.bull:.3f}"
                    f" P(bear)={regime.bear:.3f}, gain {gain:g}"
                ),
            )
        ]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        """A snapshot taken under another model keeps the averages and positions but starts
        the regime filters afresh (their features and states belong to that model)."""
        state = msgspec.msgpack.decode(data, type=MaHmmState)
        if state.model != self.model_tag:
            for series in state.series.values():
                series.regime = FilterState()
            state.model = self.model_tag
        self.state = state


# The build path: model loading and calibration-file watching (I/O, outside the decisions).


class CalibrationError(ValueError):
    """A calibration file that cannot be used; one line naming the file."""


def load_calibrations(path: Path) -> Calibrations:
    """A TOML or JSON table of symbol -> {confidence_gain, quote_multiplier, cooldown_scale};
    the ``*`` entry applies to symbols without their own."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CalibrationError(f"calibration {path}: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            table = msgspec.json.decode(data, type=dict[str, Calibration])
        else:
            table = msgspec.convert(tomllib.loads(data.decode()), dict[str, Calibration])
    except (msgspec.DecodeError, msgspec.ValidationError, tomllib.TOMLDecodeError) as exc:
        raise CalibrationError(f"calibration {path}: {exc}") from None
    except UnicodeDecodeError:
        raise CalibrationError(f"calibration {path}: not UTF-8 text") from None
    default = table.pop("*", Calibration())
    return Calibrations(default=default, symbols=table)


class CalibrationWatcher:
    """Re-reads a calibration file when its modification time or size changed, at most
    every ``every_s`` seconds (by ``clock``). A file that turns bad or goes missing keeps
    the calibrations in force and logs a warning: a typo must not stop a running worker."""

    def __init__(
        self, path: Path, every_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.every_s = every_s
        self.clock = clock
        self._due = 0.0
        self._stamp: tuple[int, int] | None = None

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = os.stat(self.path)
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def load(self) -> Calibrations:
        """First read, at build time; a bad file raises ``CalibrationError``."""
        stamp = self._stat()
        calibrations = load_calibrations(self.path)
        self._stamp = stamp
        self._due = self.clock() + self.every_s
        return calibrations

    def poll(self) -> Calibrations | None:
        """New calibrations when the file changed since the last read, else None."""
        now = self.clock()
        if now < self._due:
            return None
        self._due = now + self.every_s
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        self._stamp = stamp
        if stamp is None:
            log.warning("calibration %s is gone; keeping the calibrations in force", self.path)
            return None
        try:
            return load_calibrations(self.path)
        except CalibrationError as exc:
            log.warning("%s; keeping the calibrations in force", exc)
            return None


class CalibratedStrategy:
    """A strategy plus the watcher that recalibrates it between bars."""

    def __init__(self, strategy: MaHmm, watcher: CalibrationWatcher) -> None:
        self.strategy = strategy
        self.watcher = watcher
        self.name = strategy.name
        self.model_tag = strategy.model_tag

    def on_bar(self, bar: Bar) -> list[Signal]:
        calibrations = self.watcher.poll()
        if calibrations is not None:
            self.strategy.calibrate(calibrations)
        return self.strategy.on_bar(bar)

    def snapshot(self) -> bytes:
        return self.strategy.snapshot()

    def restore(self, data: bytes) -> None:
        self.strategy.restore(data)


def load_model(params: MaHmmParams) -> RegimeModel:
    """From ``model_file``, else from the Object Store (``model=NAME[:TAG]``)."""
    if params.model_file:
        return read_model_file(params.model_file)
    return fetch_model(params.model)


def build_ma_hmm(name: str, params: MaHmmParams) -> MaHmm | CalibratedStrategy:
    """The registry's build callable: load the model and calibration, then the strategy."""
    from strategies.registry import StrategyError  # the registry imports this module

    try:
        strategy = MaHmm(name, params, load_model(params))
        if not params.calibration:
            return strategy
        watcher = CalibrationWatcher(Path(params.calibration), params.calibration_reload_s)
        strategy.calibrate(watcher.load())
    except (ModelError, CalibrationError) as exc:
        raise StrategyError(f"strategy {name}: {exc}") from None
    return CalibratedStrategy(strategy, watcher)
