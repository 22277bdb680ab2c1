"""Trend follower: multi-timeframe SMA trend, RSI filter, ATR stop and target, cooldown.

Long-only. Per (venue, symbol, interval) series, on each closed bar (once every indicator is
warm), a small state machine FLAT -> LONG -> COOLDOWN -> FLAT:

- FLAT: fast SMA > slow SMA, close > the higher-timeframe SMA (an SMA of ``htf_period``
  values over every ``htf_factor``-th close) and ``rsi_min`` <= RSI <= ``rsi_max`` -> LONG,
  with stop = close - stop_mult * ATR and target = close + target_mult * ATR;
- LONG, first match wins: bar low <= stop; bar high >= target; RSI > ``rsi_exit``; fast SMA
  < slow SMA -> flat, then COOLDOWN for ``cooldown_bars`` bars (no entries), then FLAT;
- COOLDOWN: counts down; the bar that ends it does not enter yet.

Auto-tune (``auto_tune=true``): each closed trade is a win when its exit price (the stop or
target level when one of those was hit, else the exit close) is above its entry close. Every
``tune_window`` trades the win rate of those trades moves this series' stop multiplier,
target multiplier and RSI window by one step within their bounds: below ``win_low`` it widens
the stop, brings the target in and lengthens the RSI window; above ``win_high`` it does the
opposite. Every value that actually changes is reported as a ``ParamsTuned`` event. A new RSI
window rebuilds the RSI from the last ``2 * rsi_period_max + 1`` closes.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.events import Bar, Event, ParamsTuned, Signal
from strategies.indicators import ATR, RSI, SMA
from strategies.params import require_finite
from strategies.series import series_for


class TrendFollowerParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fast: Annotated[int, Meta(ge=1)] = 20
    slow: Annotated[int, Meta(ge=1)] = 50
    htf_factor: Annotated[int, Meta(ge=1)] = 4
    htf_period: Annotated[int, Meta(ge=1)] = 20
    rsi_period: Annotated[int, Meta(ge=1)] = 14
    rsi_min: Annotated[float, Meta(ge=0)] = 50.0
    rsi_max: float = 70.0
    rsi_exit: Annotated[float, Meta(le=100)] = 80.0
    atr_period: Annotated[int, Meta(ge=1)] = 14
    atr_stop_mult: Annotated[float, Meta(gt=0)] = 2.0
    atr_target_mult: Annotated[float, Meta(gt=0)] = 3.0
    cooldown_bars: Annotated[int, Meta(ge=0)] = 5
    qty: Annotated[float, Meta(gt=0)] = 1.0
    auto_tune: bool = False
    tune_window: Annotated[int, Meta(ge=1)] = 10
    win_low: Annotated[float, Meta(ge=0)] = 0.4
    win_high: Annotated[float, Meta(le=1)] = 0.6
    stop_mult_step: Annotated[float, Meta(gt=0)] = 0.25
    stop_mult_min: Annotated[float, Meta(gt=0)] = 1.0
    stop_mult_max: float = 4.0
    target_mult_step: Annotated[float, Meta(gt=0)] = 0.25
    target_mult_min: Annotated[float, Meta(gt=0)] = 1.5
    target_mult_max: float = 6.0
    rsi_period_step: Annotated[int, Meta(gt=0)] = 2
    rsi_period_min: Annotated[int, Meta(gt=0)] = 7
    rsi_period_max: int = 28

    def __post_init__(self) -> None:
        require_finite(self)
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")
        if not self.rsi_min <= self.rsi_max < self.rsi_exit:
            raise ValueError(
                f"need rsi_min ({self.rsi_min:g}) <= rsi_max ({self.rsi_max:g})"
                f" < rsi_exit ({self.rsi_exit:g})"
            )
        if self.auto_tune:
            self._check_tuning()

    def _check_tuning(self) -> None:
        if not self.win_low < self.win_high:
            raise ValueError(f"need win_low ({self.win_low:g}) < win_high ({self.win_high:g})")
        bounds = (
            ("stop_mult", self.atr_stop_mult, "atr_stop_mult"),
            ("target_mult", self.atr_target_mult, "atr_target_mult"),
            ("rsi_period", self.rsi_period, "rsi_period"),
        )
        for prefix, value, name in bounds:
            low, high = getattr(self, f"{prefix}_min"), getattr(self, f"{prefix}_max")
            if not low <= value <= high:
                raise ValueError(
                    f"need {prefix}_min ({low:g}) <= {name} ({value:g}) <= {prefix}_max ({high:g})"
                )


Phase = Literal["flat", "long", "cooldown"]


class _Series(msgspec.Struct):
    fast: SMA
    slow: SMA
    htf: SMA
    rsi: RSI
    atr: ATR
    stop_mult: float
    target_mult: float
    rsi_period: int
    phase: Phase = "flat"
    bars: int = 0
    htf_value: float | None = None
    cooldown_left: int = 0
    entry: float = 0.0
    stop: float = 0.0
    target: float = 0.0
    # auto-tune: outcomes (1 win, 0 loss) of the trades since the last tuning step, and the
    # recent closes a new RSI window is rebuilt from (a ring, oldest at ``history_pos``)
    outcomes: list[int] = msgspec.field(default_factory=list)
    history: list[float] = msgspec.field(default_factory=list)
    history_pos: int = 0


class TrendFollowerState(msgspec.Struct):
    series: dict[str, _Series] = msgspec.field(default_factory=dict)


class TrendFollower:
    def __init__(self, name: str, params: TrendFollowerParams) -> None:
        self.name = name
        self.params = params
        self.state = TrendFollowerState()
        # series by (venue, symbol, interval), so a bar needs no key string; reset on restore
        self._series: dict[tuple[str, str, str], _Series] = {}
        p = params
        self.model_tag = (
            f"trend_follower-sma{p.fast}x{p.slow}-htf{p.htf_factor}x{p.htf_period}"
            f"-rsi{p.rsi_period}-atr{p.atr_period}x{p.atr_stop_mult:g}x{p.atr_target_mult:g}"
        )
        if p.auto_tune:
            self.model_tag += "-autotune"
        self._history_len = 2 * p.rsi_period_max + 1 if p.auto_tune else 0

    def _fresh_series(self) -> _Series:
        p = self.params
        return _Series(
            fast=SMA(p.fast),
            slow=SMA(p.slow),
            htf=SMA(p.htf_period),
            rsi=RSI(p.rsi_period),
            atr=ATR(p.atr_period),
            stop_mult=p.atr_stop_mult,
            target_mult=p.atr_target_mult,
            rsi_period=p.rsi_period,
        )

    def on_bar(self, bar: Bar) -> list[Event]:
        ident = (bar.venue, bar.symbol, bar.interval)
        s = self._series.get(ident)
        if s is None:
            s = series_for(self.state.series, self._series, ident, self._fresh_series)
        p = self.params
        close = bar.close
        fast = s.fast.update(close)
        slow = s.slow.update(close)
        rsi = s.rsi.update(close)
        atr = s.atr.update(bar.high, bar.low, close)
        bars = s.bars = s.bars + 1
        if bars % p.htf_factor == 0:
            s.htf_value = s.htf.update(close)
        if self._history_len:
            if len(s.history) < self._history_len:
                s.history.append(close)
            else:
                s.history[s.history_pos] = close
                s.history_pos = (s.history_pos + 1) % self._history_len
        htf = s.htf_value
        if fast is None or slow is None or rsi is None or atr is None or htf is None:
            return []
        phase = s.phase
        if phase == "long":
            return self._manage(bar, s, fast, slow, rsi, atr)
        if phase == "cooldown":
            s.cooldown_left -= 1
            if s.cooldown_left <= 0:
                s.phase = "flat"
            return []
        if fast > slow and close > htf and p.rsi_min <= rsi <= p.rsi_max:
            s.phase = "long"
            s.entry = close
            s.stop = close - s.stop_mult * atr
            s.target = close + s.target_mult * atr
            return [
                self._signal(
                    bar,
                    p.qty,
                    f"trend up: sma{p.fast} {fast:g} > sma{p.slow} {slow:g}, close > htf sma"
                    f" {htf:g}, RSI {rsi:.1f} in [{p.rsi_min:g}, {p.rsi_max:g}]",
                    atr,
                    stop=s.stop,
                    target=s.target,
                )
            ]
        return []

    def _manage(
        self, bar: Bar, s: _Series, fast: float, slow: float, rsi: float, atr: float
    ) -> list[Event]:
        p = self.params
        if bar.low <= s.stop:
            price, reason = s.stop, f"stop hit: low {bar.low:g} <= stop {s.stop:g}"
        elif bar.high >= s.target:
            price, reason = s.target, f"target hit: high {bar.high:g} >= target {s.target:g}"
        elif rsi > p.rsi_exit:
            price, reason = bar.close, f"RSI {rsi:.1f} > exit {p.rsi_exit:g}"
        elif fast < slow:
            price, reason = (
                bar.close,
                f"trend reversal: sma{p.fast} {fast:g} < sma{p.slow} {slow:g}",
            )
        else:
            return []
        s.phase = "cooldown" if p.cooldown_bars > 0 else "flat"
        s.cooldown_left = p.cooldown_bars
        out: list[Event] = [self._signal(bar, 0.0, reason, atr)]
        if p.auto_tune:
            s.outcomes.append(1 if price > s.entry else 0)
            if len(s.outcomes) >= p.tune_window:
                out.extend(self._tune(bar, s))
        return out

    def _tune(self, bar: Bar, s: _Series) -> list[Event]:
        p = self.params
        wins = sum(s.outcomes)
        trades = len(s.outcomes)
        s.outcomes = []
        rate = wins / trades
        if rate < p.win_low:
            direction, why = 1, f"win rate {rate:.2f} ({wins}/{trades}) < {p.win_low:g}: loosen"
        elif rate > p.win_high:
            direction, why = -1, f"win rate {rate:.2f} ({wins}/{trades}) > {p.win_high:g}: tighten"
        else:
            return []
        out: list[Event] = []

        def moved(param: str, old: float, new: float) -> None:
            if new != old:
                out.append(
                    ParamsTuned(
                        ts=bar.close_time,
                        strategy=self.name,
                        symbol=bar.symbol,
                        param=param,
                        old=float(old),
                        new=float(new),
                        reason=why,
                    )
                )

        old = s.stop_mult
        s.stop_mult = _clamp(old + direction * p.stop_mult_step, p.stop_mult_min, p.stop_mult_max)
        moved("atr_stop_mult", old, s.stop_mult)
        old = s.target_mult
        s.target_mult = _clamp(
            old - direction * p.target_mult_step, p.target_mult_min, p.target_mult_max
        )
        moved("atr_target_mult", old, s.target_mult)
        period = s.rsi_period
        s.rsi_period = int(
            _clamp(period + direction * p.rsi_period_step, p.rsi_period_min, p.rsi_period_max)
        )
        if s.rsi_period != period:
            s.rsi = RSI(s.rsi_period)
            for value in s.history[s.history_pos :] + s.history[: s.history_pos]:
                s.rsi.update(value)
            moved("rsi_period", period, s.rsi_period)
        return out

    def _signal(
        self,
        bar: Bar,
        target_position: float,
        reason: str,
        atr: float,
        stop: float | None = None,
        target: float | None = None,
    ) -> Signal:
        return Signal(
            ts=bar.close_time,
            strategy=self.name,
            venue=bar.venue,
            symbol=bar.symbol,
            model_tag=self.model_tag,
            target_position=target_position,
            stop=stop,
            target=target,
            atr=atr,
            reason=reason,
        )

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=TrendFollowerState)
        self._series.clear()


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)
