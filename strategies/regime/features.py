"""Regime features of a bar, defined once and computed two ways: in batch over arrays (for
training) and incrementally bar by bar (for online inference). A test holds the two equal.

Per bar, in this order (docs/regime.md says why each is there):

* ``ret``: close-to-close log return (needs the previous close, so the first bar has none);
* ``upper_wick``, ``lower_wick`` (``wicks``): square roots of ``log(high / max(open, close))``
  and ``log(min(open, close) / low)``; intrabar volatility, measured on the bar itself, so
  it reacts to a change of regime at once where a rolling window lags;
* ``rvol`` (``vol_window`` > 0): population standard deviation of the last ``vol_window``
  log returns, the classic rolling volatility;
* ``volume`` (``volume``): ``log(volume / volume_scale + 1e-3) - log1p(|ret| / move_scale)``,
  the volume a bar trades beyond what its own move explains.

``move_scale`` and ``volume_scale`` are fixed at training (typical absolute return, median
volume), like ``center`` and ``scale``, which standardise every feature. Raw features here;
the standardisation is folded into the model's filter.
"""

from __future__ import annotations

import math

import msgspec
import numpy as np

from contracts.events import Bar

VOLUME_FLOOR = 1e-3
"""Share of the median volume added before the log, so a bar without trades stays finite."""


class FeatureSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which features a model uses and the parameters fixed when it was trained."""

    wicks: bool = True
    vol_window: int = 0
    volume: bool = False
    move_scale: float = 1.0
    volume_scale: float = 1.0
    center: tuple[float, ...] = ()
    scale: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.vol_window < 0 or self.vol_window == 1:
            raise ValueError(f"vol_window ({self.vol_window}) must be 0 (off) or >= 2")
        if not (self.move_scale > 0 and self.volume_scale > 0):
            raise ValueError("move_scale and volume_scale must be > 0")
        width = len(self.names)
        if self.center or self.scale:
            if len(self.center) != width or len(self.scale) != width:
                raise ValueError(f"center and scale need {width} values (one per feature)")
            if not all(math.isfinite(c) for c in self.center):
                raise ValueError("center must be finite")
            if not all(math.isfinite(s) and s > 0 for s in self.scale):
                raise ValueError("scale must be finite and > 0")

    @property
    def names(self) -> tuple[str, ...]:
        names = ["ret"]
        if self.wicks:
            names += ["upper_wick", "lower_wick"]
        if self.vol_window:
            names.append(f"rvol{self.vol_window}")
        if self.volume:
            names.append("volume")
        return tuple(names)

    @property
    def warmup(self) -> int:
        """Bars of a series that give no feature vector (their returns fill the window)."""
        return max(1, self.vol_window)


class FeatureState(msgspec.Struct):
    """What a series needs from its past: the previous close and the last returns."""

    prev_close: float = 0.0
    returns: list[float] = msgspec.field(default_factory=list)
    pos: int = 0


def update(spec: FeatureSpec, state: FeatureState, bar: Bar) -> list[float] | None:
    """The raw feature vector of ``bar`` (None while warming up); O(vol_window)."""
    prev, state.prev_close = state.prev_close, bar.close
    if prev <= 0.0:
        return None
    ret = math.log(bar.close / prev)
    out = [ret]
    if spec.wicks:
        top = max(bar.open, bar.close)
        bottom = min(bar.open, bar.close)
        out.append(math.sqrt(max(math.log(bar.high / top), 0.0)))
        out.append(math.sqrt(max(math.log(bottom / bar.low), 0.0)))
    window = spec.vol_window
    if window:
        buf = state.returns
        if len(buf) < window:
            buf.append(ret)
        else:
            buf[state.pos] = ret
            state.pos = (state.pos + 1) % window
        if len(buf) < window:
            return None
        mean = math.fsum(buf) / window
        out.append(math.sqrt(math.fsum((r - mean) ** 2 for r in buf) / window))
    if spec.volume:
        out.append(
            math.log(bar.volume / spec.volume_scale + VOLUME_FLOOR)
            - math.log1p(abs(ret) / spec.move_scale)
        )
    return out


def batch(
    spec: FeatureSpec,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> np.ndarray:
    """Raw features of one series, one row per bar; warm-up rows are NaN."""
    n = len(close)
    ret = np.full(n, np.nan)
    ret[1:] = np.log(close[1:] / close[:-1])
    cols = [ret]
    if spec.wicks:
        cols.append(np.sqrt(np.maximum(np.log(high / np.maximum(open_, close)), 0.0)))
        cols.append(np.sqrt(np.maximum(np.log(np.minimum(open_, close) / low), 0.0)))
    window = spec.vol_window
    if window:
        rvol = np.full(n, np.nan)
        if n > window:
            windows = np.lib.stride_tricks.sliding_window_view(ret[1:], window)
            rvol[window:] = windows.std(axis=1)
        cols.append(rvol)
    if spec.volume:
        cols.append(
            np.log(volume / spec.volume_scale + VOLUME_FLOOR)
            - np.log1p(np.abs(ret) / spec.move_scale)
        )
    return np.column_stack(cols)
