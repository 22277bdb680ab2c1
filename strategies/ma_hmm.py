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
``name:tag`` as model tag. The class is pure: the composition root
(``services/strategy/compose.py``) loads the model and the starting calibrations named by
``model``/``model_file`` and ``calibration``; a calibration change reaches the strategy as a
``ParamsTuned`` event on ``gov.tune.<instance>.<symbol>`` (the ``*`` entry as symbol ``*``),
so a replay of the log reproduces it. The calibrations in force are part of the snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.events import Bar, Event, ParamsTuned, Signal, TradingMode
from strategies.indicators import EMA, SMA
from strategies.params import StrategyError, require_finite
from strategies.regime.filter import FilterState, RegimeFilter
from strategies.regime.model import RegimeModel, parse_ref

DEFAULT_ENTRY = "*"
"""The calibration entry of every symbol without its own (also the symbol of its events)."""

TUNABLE = ("confidence_gain", "quote_multiplier", "cooldown_scale")
"""The calibration values a ``ParamsTuned`` event may set."""


class MaHmmParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str = ""
    model_file: str = ""
    kind: Literal["sma", "ema"] = "ema"
    fast: Annotated[int, Meta(ge=1)] = 10
    slow: Annotated[int, Meta(ge=1)] = 30
    threshold: Annotated[float, Meta(gt=0, le=1)] = 0.6
    cooldown_bars: Annotated[int, Meta(ge=0)] = 10
    mode: TradingMode = "long_only"
    qty: Annotated[float, Meta(gt=0)] = 1.0
    calibration: str = ""

    def __post_init__(self) -> None:
        require_finite(self)
        if bool(self.model) == bool(self.model_file):
            raise ValueError("give exactly one of model=NAME[:TAG] and model_file=PATH")
        if self.model:
            parse_ref(self.model)
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")


class Calibration(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-symbol tuning: confidence gain, position-size factor, cooldown factor."""

    confidence_gain: Annotated[float, Meta(gt=0)] = 1.0
    quote_multiplier: Annotated[float, Meta(gt=0)] = 1.0
    cooldown_scale: Annotated[float, Meta(ge=0)] = 1.0

    def __post_init__(self) -> None:
        require_finite(self)


class Calibrations(msgspec.Struct, frozen=True):
    """The calibration of every symbol: its own entry, else the ``*`` entry, else neutral."""

    default: Calibration = Calibration()
    symbols: dict[str, Calibration] = msgspec.field(default_factory=dict)

    @classmethod
    def of_table(cls, table: dict[str, Calibration]) -> Calibrations:
        """From a calibration file's table of symbol (or ``*``) -> calibration."""
        symbols = {s: c for s, c in table.items() if s != DEFAULT_ENTRY}
        return cls(default=table.get(DEFAULT_ENTRY, Calibration()), symbols=symbols)

    def of(self, symbol: str) -> Calibration:
        return self.symbols.get(symbol, self.default)

    def tuned(self, symbol: str, param: str, value: float) -> Calibrations:
        """One value moved: ``*`` moves the default entry, a symbol its own entry (started
        from what the symbol had in force). A value out of range is a ``ValueError``."""
        if param not in TUNABLE:
            raise ValueError(f"ma_hmm tunes {', '.join(TUNABLE)}, not {param!r}")
        base = self.default if symbol == DEFAULT_ENTRY else self.of(symbol)
        entry = msgspec.convert({**msgspec.structs.asdict(base), param: value}, Calibration)
        if symbol == DEFAULT_ENTRY:
            return msgspec.structs.replace(self, default=entry)
        return msgspec.structs.replace(self, symbols={**self.symbols, symbol: entry})


class _Series(msgspec.Struct):
    fast: SMA | EMA
    slow: SMA | EMA
    regime: FilterState
    side: int = 0
    cooldown: int = 0


class MaHmmState(msgspec.Struct):
    model: str = ""
    series: dict[str, _Series] = msgspec.field(default_factory=dict)
    calibrations: Calibrations = Calibrations()


class MaHmm:
    external: tuple[str, ...] = ()
    tunable = True

    def __init__(
        self,
        name: str,
        params: MaHmmParams,
        model: RegimeModel,
        calibrations: Calibrations | None = None,
    ) -> None:
        self.name = name
        self.params = params
        self.model = model
        self.model_tag = model.key
        self.filter = RegimeFilter(model)
        self.state = MaHmmState(
            model=model.key,
            calibrations=calibrations if calibrations is not None else Calibrations(),
        )
        self._keys: dict[tuple[str, str, str], str] = {}

    def on_event(self, event: Event) -> Sequence[Event]:
        """A ``ParamsTuned`` addressed to this instance sets one calibration value from the
        next bar on."""
        match event:
            case ParamsTuned(symbol=symbol, param=param, new=value):
                self.state.calibrations = self.state.calibrations.tuned(symbol, param, value)
        return ()

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
        calibration = self.state.calibrations.of(bar.symbol)
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


def build_ma_hmm(
    name: str, params: MaHmmParams, model: RegimeModel | None, calibrations: Calibrations
) -> MaHmm:
    """The registry's build: the model and calibrations come loaded (pure values)."""
    if model is None:
        raise StrategyError(
            f"strategy {name}: no regime model given (services/strategy/compose.py loads it)"
        )
    return MaHmm(name, params, model, calibrations)
