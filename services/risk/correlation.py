"""Bar returns per market and the correlation between two markets' returns: what the
correlation cap and ``vol_target`` sizing read.

Returns are close-to-close, one series per market, of one bar interval (the configured one,
else the first seen), the last ``keep`` kept. A correlation is cached until either series
moves, so one tracker serves one window (the correlation rail's); each series' own sums
are shared by all its pairs.
"""

from __future__ import annotations

import math
import operator

from contracts.events import Bar
from contracts.keys import InstrumentId
from services.risk.state import ReturnSeries

Sums = tuple[list[int], list[float], int, float, float]


class Correlations:
    def __init__(
        self,
        series: dict[InstrumentId, ReturnSeries],
        keep: int,
        interval: str = "",
    ) -> None:
        self.series = series
        self.keep = keep
        self.interval = interval
        self._pairs: dict[tuple[InstrumentId, InstrumentId], tuple[int, int, float | None]] = {}
        self._sums: dict[InstrumentId, tuple[int, Sums]] = {}

    def record(self, market: InstrumentId, bar: Bar) -> None:
        """A bar of ``market``: one more return if it is of the series' interval."""
        series = self.series.get(market)
        if series is None:
            if not self.interval or self.interval == bar.interval:
                self.series[market] = ReturnSeries(bar.interval, bar.close)
            return
        if series.interval != bar.interval:
            return
        series.ts.append(bar.ts)
        series.rets.append(bar.close / series.close - 1.0)
        series.close = bar.close
        if len(series.ts) > self.keep:
            del series.ts[0]
            del series.rets[0]

    def between(self, a: InstrumentId, b: InstrumentId, window: int, least: int) -> float | None:
        """Pearson correlation of the two markets' returns over their last ``window``
        common bars (None below ``least`` of them). Markets whose bars share their times
        (the usual case) skip the alignment."""
        sa, sb = self.series.get(a), self.series.get(b)
        if sa is None or sb is None or not sa.ts or not sb.ts:
            return None
        stamp = (sa.ts[-1], sb.ts[-1])
        cached = self._pairs.get((a, b))
        if cached is not None and cached[:2] == stamp:
            return cached[2]
        ta, xa, na, sxa, sqa = self._series_sums(a, sa, window)
        tb, xb, _, sxb, sqb = self._series_sums(b, sb, window)
        if ta == tb:
            n = na
            sxy = sum(map(operator.mul, xa, xb))
            varx, vary = n * sqa - sxa * sxa, n * sqb - sxb * sxb
            cov = n * sxy - sxa * sxb
        else:  # align on the bar times both have
            other = dict(zip(sb.ts, sb.rets, strict=True))
            xs: list[float] = []
            ys: list[float] = []
            for ts, r in zip(sa.ts, sa.rets, strict=True):
                y = other.get(ts)
                if y is not None:
                    xs.append(r)
                    ys.append(y)
            xs, ys = xs[-window:], ys[-window:]
            n = len(xs)
            sx, sy = sum(xs), sum(ys)
            varx = n * sum(map(operator.mul, xs, xs)) - sx * sx
            vary = n * sum(map(operator.mul, ys, ys)) - sy * sy
            cov = n * sum(map(operator.mul, xs, ys)) - sx * sy
        value: float | None = None
        if n >= least and varx > 0 and vary > 0:
            value = max(-1.0, min(1.0, cov / math.sqrt(varx * vary)))
        self._pairs[(a, b)] = (stamp[0], stamp[1], value)
        return value

    def _series_sums(self, market: InstrumentId, series: ReturnSeries, window: int) -> Sums:
        """The last ``window`` times and returns of a series, their count, sum and sum of
        squares; cached until the series moves."""
        cached = self._sums.get(market)
        if cached is not None and cached[0] == series.ts[-1]:
            return cached[1]
        ts, xs = series.ts[-window:], series.rets[-window:]
        sums = (ts, xs, len(xs), sum(xs), sum(map(operator.mul, xs, xs)))
        self._sums[market] = (series.ts[-1], sums)
        return sums
