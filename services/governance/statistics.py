"""The statistics behind promotion: per-trade Sharpe and its moments, the probabilistic and
deflated Sharpe ratio, the minimum track record length, max drawdown and an always-valid
sequential test on paired differences.

Conventions (docs/governance.md): the Sharpe ratio is per trade, never annualised, with the
sample standard deviation (``ddof=1``); skewness ``g3`` and kurtosis ``g4`` (non-excess, 3 for a
normal) are the moment ratios of the sample itself (``ddof=0``, scipy's ``bias=True``), as in
Bailey & López de Prado's code. Everything here is a pure function of its arguments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np
from scipy.special import ndtr, ndtri

from contracts.model_events import SequentialTest

EULER_GAMMA = float(np.euler_gamma)

# A variance factor at or below this is a two-point sample: the Sharpe estimate has no spread.
_FACTOR_FLOOR = 1e-12
# Relative variance below this (spread under 1e-12 of the largest value) is rounding noise.
_SPREAD_FLOOR = 1e-24


class SampleMoments(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A return sample summarised; a sample without spread (or under two values) carries no
    evidence and reads as Sharpe 0, skew 0, kurtosis 3."""

    n: int
    mean: float
    std: float  # ddof=1
    sharpe: float  # mean / std, per trade
    skew: float  # g3, ddof=0
    kurtosis: float  # g4, non-excess, ddof=0


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` without BLAS: ``np.dot`` hands long vectors to OpenBLAS, which starts
    its thread pool (a 20,000-element dot took 30 ms on a loaded 2-core worker, 1.5 us at
    10,000); a worker wants one core and no surprise threads."""
    return float(np.multiply(a, b).sum())


def _array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def moments(returns: Sequence[float] | np.ndarray) -> SampleMoments:
    """Mean, sample std, per-trade Sharpe, skewness and kurtosis of per-trade returns."""
    x = _array(returns)
    n = int(x.size)
    mean = float(x.mean()) if n else 0.0
    scale = float(np.max(np.abs(x))) if n else 0.0
    if n < 2 or scale == 0.0:
        return SampleMoments(n=n, mean=mean, std=0.0, sharpe=0.0, skew=0.0, kurtosis=3.0)
    # the ratios are scale-free: computed on x / max|x| so tiny returns cannot underflow
    centred = x / scale - mean / scale
    m2 = _dot(centred, centred) / n
    if m2 <= _SPREAD_FLOOR:
        return SampleMoments(n=n, mean=mean, std=0.0, sharpe=0.0, skew=0.0, kurtosis=3.0)
    sq = centred * centred
    m3 = _dot(sq, centred) / n
    m4 = _dot(sq, sq) / n
    std_scaled = math.sqrt(m2 * n / (n - 1))
    return SampleMoments(
        n=n,
        mean=mean,
        std=std_scaled * scale,
        sharpe=mean / scale / std_scaled,
        skew=m3 / m2**1.5,
        kurtosis=m4 / (m2 * m2),
    )


def sharpe_ratio(returns: Sequence[float] | np.ndarray) -> float:
    """Per-trade Sharpe: mean over sample standard deviation (ddof=1), not annualised."""
    return moments(returns).sharpe


def sharpe_variance_factor(sharpe: float, skew: float, kurtosis: float) -> float:
    """``1 - g3*SR + (g4-1)/4*SR^2``: (n-1) times the variance of the Sharpe estimate for
    non-normal returns (Mertens 2002; Bailey & López de Prado 2012, eq. 4)."""
    factor = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe * sharpe
    return max(factor, _FACTOR_FLOOR)


def probabilistic_sharpe_ratio(
    sharpe: float, n: int, skew: float, kurtosis: float, benchmark: float = 0.0
) -> float:
    """PSR(SR*): the probability that the true Sharpe exceeds ``benchmark`` given ``n``
    observations, ``Phi((SR - SR*) sqrt(n-1) / sqrt(1 - g3 SR + (g4-1)/4 SR^2))``."""
    if n < 2:
        return 0.5
    z = (
        (sharpe - benchmark)
        * math.sqrt(n - 1)
        / math.sqrt(sharpe_variance_factor(sharpe, skew, kurtosis))
    )
    return float(ndtr(z))


def min_track_record_length(
    sharpe: float, skew: float, kurtosis: float, benchmark: float, confidence: float
) -> float | None:
    """MinTRL: the observations needed for PSR(SR*) to reach ``confidence``,
    ``1 + (1 - g3 SR + (g4-1)/4 SR^2) (Phi^-1(p) / (SR - SR*))^2``; None when SR <= SR*, or
    so close above it that the length overflows (no track record is long enough)."""
    if sharpe <= benchmark:
        return None
    ratio = float(ndtri(confidence)) / (sharpe - benchmark)
    needed = 1.0 + sharpe_variance_factor(sharpe, skew, kurtosis) * ratio * ratio
    return needed if math.isfinite(needed) else None


def expected_max_sharpe(trials: int, sharpe_variance: float) -> float:
    """SR0, the expected maximum Sharpe of ``trials`` independent zero-Sharpe trials:
    ``sqrt(V) ((1-gamma) Phi^-1(1-1/N) + gamma Phi^-1(1-1/(N e)))`` (Bailey & López de Prado
    2014, eq. 2); 0 for a single trial, which selects nothing."""
    if trials <= 1:
        return 0.0
    z = (1.0 - EULER_GAMMA) * float(ndtri(1.0 - 1.0 / trials)) + EULER_GAMMA * float(
        ndtri(1.0 - 1.0 / (trials * math.e))
    )
    return math.sqrt(max(sharpe_variance, 0.0)) * z


def deflated_sharpe_ratio(
    sharpe: float, n: int, skew: float, kurtosis: float, trials: int, sharpe_variance: float
) -> float:
    """DSR: PSR against the expected maximum Sharpe of the trials, PSR(SR0)."""
    return probabilistic_sharpe_ratio(
        sharpe, n, skew, kurtosis, expected_max_sharpe(trials, sharpe_variance)
    )


def max_drawdown(returns: Sequence[float] | np.ndarray) -> float:
    """The largest fall from a running peak of the cumulative (summed) return path, which
    starts at 0; 0 for a path that never falls."""
    x = _array(returns)
    if x.size == 0:
        return 0.0
    path = np.concatenate(([0.0], np.cumsum(x)))
    return float(np.max(np.maximum.accumulate(path) - path))


def msprt_log_ratio(n: int, mean: float, second_moment: float, mixture_scale: float) -> float:
    """log Lambda_n of the scale-invariant normal-mixture SPRT for "mean difference = 0".

    The standardised effect ``delta = mu / sigma`` gets Robbins' normal mixture N(0, k^2) and the
    unknown sigma is integrated out with the invariant prior ``d sigma / sigma`` (Lai 1976), so
    ``Lambda_n = (1 + n k^2)^(-1/2) (1 - n k^2 / (1 + n k^2) * mean^2 / sigma0^2)^(-n/2)``, with
    ``sigma0^2 = sum(d^2) / n``. It is a nonnegative martingale under the null, so by Ville's
    inequality it ever reaches 1/alpha with probability at most alpha, however often one looks.
    """
    if n < 1 or second_moment <= 0.0:
        return 0.0
    shrink = n * mixture_scale**2 / (1.0 + n * mixture_scale**2)
    ratio = min(mean * mean / second_moment, 1.0)
    return -0.5 * math.log1p(n * mixture_scale**2) - 0.5 * n * math.log1p(-shrink * ratio)


def msprt(
    differences: Sequence[float] | np.ndarray, mixture_scale: float, confidence: float
) -> SequentialTest:
    """The mixture SPRT on paired differences; ``crossed`` when Lambda_n >= 1/(1-confidence)."""
    d = _array(differences)
    n = int(d.size)
    mean = float(d.mean()) if n else 0.0
    second_moment = _dot(d, d) / n if n else 0.0
    scale = float(np.max(np.abs(d))) if n else 0.0
    # Lambda_n is scale-free: computed on d / max|d| so tiny differences cannot underflow
    log_ratio = (
        msprt_log_ratio(n, mean / scale, _dot(d / scale, d / scale) / n, mixture_scale)
        if scale > 0.0
        else 0.0
    )
    log_threshold = -math.log(1.0 - confidence)
    return SequentialTest(
        n=n,
        mean=mean,
        second_moment=second_moment,
        mixture_scale=mixture_scale,
        log_ratio=log_ratio,
        log_threshold=log_threshold,
        crossed=log_ratio >= log_threshold,
    )
