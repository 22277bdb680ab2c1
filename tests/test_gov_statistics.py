"""The promotion statistics against closed-form values computed by hand here, a published
worked example, a numerical integral and properties."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate
from scipy.stats import kurtosis as scipy_kurtosis
from scipy.stats import norm
from scipy.stats import skew as scipy_skew

from services.governance.statistics import (
    EULER_GAMMA,
    deflated_sharpe_ratio,
    expected_max_sharpe,
    max_drawdown,
    min_track_record_length,
    moments,
    msprt,
    msprt_log_ratio,
    probabilistic_sharpe_ratio,
    sharpe_ratio,
    sharpe_variance_factor,
)

PHI = NormalDist()
returns_lists = st.lists(
    st.floats(min_value=-1.0, max_value=1.0, allow_nan=False, allow_infinity=False),
    min_size=3,
    max_size=60,
)


def _spread(xs: list[float]) -> bool:
    return float(np.std(xs)) > 1e-6


def test_moments_of_a_small_sample_by_hand() -> None:
    # x = 1, 2, 3, 6: mean 3, deviations -2, -1, 0, 3.
    # sample variance (ddof=1) = 14/3; m2 = 14/4; m3 = 18/4; m4 = 98/4.
    m = moments([1.0, 2.0, 3.0, 6.0])
    assert m.n == 4
    assert m.mean == pytest.approx(3.0)
    assert m.std == pytest.approx(math.sqrt(14 / 3))
    assert m.sharpe == pytest.approx(3 / math.sqrt(14 / 3))
    assert m.skew == pytest.approx(4.5 / 3.5**1.5)
    assert m.kurtosis == pytest.approx(2.0)
    assert sharpe_ratio([1.0, 2.0, 3.0, 6.0]) == m.sharpe


@settings(max_examples=60, deadline=None)
@given(returns_lists.filter(_spread))
def test_moments_match_scipy_biased_moment_ratios(xs: list[float]) -> None:
    m = moments(xs)
    assert m.skew == pytest.approx(float(scipy_skew(xs)), rel=1e-6, abs=1e-6)
    assert m.kurtosis == pytest.approx(float(scipy_kurtosis(xs, fisher=False)), rel=1e-6)
    assert m.std == pytest.approx(float(np.std(xs, ddof=1)), rel=1e-9)


def test_a_sample_without_spread_carries_no_evidence() -> None:
    for xs in ([], [0.5], [0.01, 0.01, 0.01]):
        m = moments(xs)
        assert (m.sharpe, m.skew, m.kurtosis) == (0.0, 0.0, 3.0)
        assert m.n == len(xs)


@settings(max_examples=60, deadline=None)
@given(returns_lists.filter(_spread), st.floats(min_value=0.01, max_value=100.0))
def test_sharpe_is_scale_free_and_flips_with_the_sign(xs: list[float], c: float) -> None:
    m = moments(xs)
    scaled = moments([c * x for x in xs])
    flipped = moments([-x for x in xs])
    assert scaled.sharpe == pytest.approx(m.sharpe, rel=1e-6, abs=1e-9)
    assert flipped.sharpe == pytest.approx(-m.sharpe, rel=1e-9, abs=1e-12)
    assert flipped.skew == pytest.approx(-m.skew, rel=1e-6, abs=1e-9)


@settings(max_examples=80, deadline=None)
@given(returns_lists.filter(_spread))
def test_the_variance_factor_of_a_sample_is_never_negative(xs: list[float]) -> None:
    # 1 - g3 SR + (g4-1)/4 SR^2 = (1 - g3 SR/2)^2 + (g4 - 1 - g3^2)/4 SR^2 and g4 >= 1 + g3^2
    # for any distribution (Pearson's inequality), so the raw factor is >= 0.
    m = moments(xs)
    raw = 1 - m.skew * m.sharpe + (m.kurtosis - 1) / 4 * m.sharpe**2
    assert raw >= -1e-9
    assert sharpe_variance_factor(m.sharpe, m.skew, m.kurtosis) > 0


def test_psr_by_hand() -> None:
    # Bailey & López de Prado 2012 (The Sharpe Ratio Efficient Frontier, J. of Risk 15(2)):
    # PSR(SR*) = Phi((SR - SR*) sqrt(n-1) / sqrt(1 - g3 SR + (g4-1)/4 SR^2)).
    # SR = 0.1, n = 101, normal (g3 0, g4 3): factor 1.005, z = 0.1 * 10 / sqrt(1.005).
    z = 1.0 / math.sqrt(1.005)
    assert probabilistic_sharpe_ratio(0.1, 101, 0.0, 3.0, 0.0) == pytest.approx(PHI.cdf(z))
    # negative skew and fat tails widen the Sharpe estimate: SR 0.1, n 101, g3 -2, g4 9,
    # SR* 0.05: factor 1 + 0.2 + 2 * 0.01 = 1.22, z = 0.05 * 10 / sqrt(1.22).
    got = probabilistic_sharpe_ratio(0.1, 101, -2.0, 9.0, 0.05)
    assert got == pytest.approx(PHI.cdf(0.5 / math.sqrt(1.22)))
    assert got < probabilistic_sharpe_ratio(0.1, 101, 0.0, 3.0, 0.05)


def test_min_track_record_length_by_hand() -> None:
    # MinTRL = 1 + (1 - g3 SR + (g4-1)/4 SR^2) (Phi^-1(p) / (SR - SR*))^2 (Bailey & López de
    # Prado 2012, eq. 11). SR 0.2, g3 -1, g4 6, SR* 0, p 0.95: factor 1 + 0.2 + 1.25*0.04
    # = 1.25, Phi^-1(0.95) = 1.6448536269514722 (table value).
    want = 1 + 1.25 * (1.6448536269514722 / 0.2) ** 2
    assert min_track_record_length(0.2, -1.0, 6.0, 0.0, 0.95) == pytest.approx(want)
    assert want == pytest.approx(85.5476, abs=1e-3)
    assert min_track_record_length(0.05, 0.0, 3.0, 0.05, 0.95) is None
    assert min_track_record_length(0.01, 0.0, 3.0, 0.05, 0.95) is None
    assert min_track_record_length(1e-200, 0.0, 3.0, 0.0, 0.95) is None  # would overflow


@settings(max_examples=80, deadline=None)
@given(
    st.floats(min_value=0.02, max_value=1.0),
    st.floats(min_value=-2.0, max_value=2.0),
    st.floats(min_value=0.0, max_value=20.0),
    st.floats(min_value=0.6, max_value=0.99),
)
def test_min_trl_is_where_psr_reaches_the_confidence(
    sr: float, g3: float, excess: float, p: float
) -> None:
    g4 = 1.0 + g3 * g3 + excess  # any valid pair: g4 >= 1 + g3^2
    needed = min_track_record_length(sr, g3, g4, 0.0, p)
    assert needed is not None and needed >= 1.0
    n = max(math.ceil(needed), 2)
    assert probabilistic_sharpe_ratio(sr, n, g3, g4, 0.0) >= p - 1e-9
    if n - 1 >= 2 and n - 1 < needed - 1e-9:
        assert probabilistic_sharpe_ratio(sr, n - 1, g3, g4, 0.0) < p


@settings(max_examples=80, deadline=None)
@given(
    st.floats(min_value=-1.0, max_value=1.0),
    st.floats(min_value=-1.0, max_value=1.0),
    st.integers(min_value=2, max_value=10_000),
)
def test_psr_is_a_probability_monotone_in_the_sharpe(a: float, b: float, n: int) -> None:
    lo, hi = sorted((a, b))
    p_lo = probabilistic_sharpe_ratio(lo, n, 0.0, 3.0, 0.0)
    p_hi = probabilistic_sharpe_ratio(hi, n, 0.0, 3.0, 0.0)
    assert 0.0 <= p_lo <= p_hi <= 1.0
    assert probabilistic_sharpe_ratio(a, n, -1.0, 5.0, a) == pytest.approx(0.5)


def test_deflated_sharpe_reproduces_the_published_example() -> None:
    # Bailey & López de Prado 2014, "The Deflated Sharpe Ratio" (J. Portfolio Management
    # 40(5)), numerical example: N = 100 trials, annualised V[SR] = 1/2, 250 days a year, so
    # V = 0.5/250 per day; T = 1250 daily returns, annualised SR 2.5 (2.5/sqrt(250) a day),
    # skew -3, kurtosis 10. The paper reports E[max SR] = 0.1132 (daily) and DSR = 0.9004.
    v = 0.5 / 250
    assert expected_max_sharpe(100, v) == pytest.approx(0.1132, abs=5e-5)
    dsr = deflated_sharpe_ratio(2.5 / math.sqrt(250), 1250, -3.0, 10.0, 100, v)
    assert dsr == pytest.approx(0.9004, abs=5e-5)


def test_expected_max_sharpe_by_hand() -> None:
    # SR0 = sqrt(V) ((1-g) Phi^-1(1-1/N) + g Phi^-1(1-1/(N e))), g = Euler-Mascheroni.
    assert math.isclose(EULER_GAMMA, 0.5772156649015329)
    g = 0.5772156649015329
    for n_trials, v in ((2, 0.01), (10, 0.04), (1000, 1.0)):
        want = math.sqrt(v) * (
            (1 - g) * PHI.inv_cdf(1 - 1 / n_trials) + g * PHI.inv_cdf(1 - 1 / (n_trials * math.e))
        )
        assert expected_max_sharpe(n_trials, v) == pytest.approx(want, rel=1e-9)
    assert expected_max_sharpe(1, 0.04) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=2, max_value=100_000), st.floats(min_value=1e-6, max_value=4.0))
def test_expected_max_sharpe_grows_with_trials_and_scales_with_sd(n: int, v: float) -> None:
    one = expected_max_sharpe(n, v)
    assert 0.0 < one < expected_max_sharpe(n + 1, v)
    assert expected_max_sharpe(n, 4 * v) == pytest.approx(2 * one, rel=1e-9)


def test_max_drawdown_by_hand() -> None:
    # path 0, 1, -1, 0, -3, 2, 1: running peak 0, 1, 1, 1, 1, 2, 2: deepest fall 1 - (-3) = 4
    assert max_drawdown([1.0, -2.0, 1.0, -3.0, 5.0, -1.0]) == pytest.approx(4.0)
    assert max_drawdown([-0.5]) == pytest.approx(0.5)
    assert max_drawdown([0.1, 0.0, 0.2]) == 0.0
    assert max_drawdown([]) == 0.0


@settings(max_examples=80, deadline=None)
@given(returns_lists)
def test_max_drawdown_bounds(xs: list[float]) -> None:
    dd = max_drawdown(xs)
    assert 0.0 <= dd <= sum(-x for x in xs if x < 0) + 1e-9
    assert max_drawdown([abs(x) for x in xs]) == 0.0


def test_msprt_by_hand() -> None:
    # Lambda_n = (1 + n k^2)^(-1/2) (1 - n k^2/(1 + n k^2) mean^2/sigma0^2)^(-n/2).
    # d = 1, 1, -1, 1 and k = 0.5: n k^2 = 1, mean 0.5, sigma0^2 = 1, so
    # log Lambda = -ln(2)/2 - 2 ln(1 - 0.125).
    want = -0.5 * math.log(2) - 2 * math.log(0.875)
    got = msprt([1.0, 1.0, -1.0, 1.0], 0.5, 0.95)
    assert got.log_ratio == pytest.approx(want)
    assert got.log_threshold == pytest.approx(math.log(20))
    assert (got.n, got.mean, got.second_moment, got.crossed) == (4, 0.5, 1.0, False)
    # one difference says nothing about its own scale: Lambda_1 = 1
    assert msprt_log_ratio(1, 3.0, 9.0, 0.5) == pytest.approx(0.0, abs=1e-12)
    assert msprt([], 0.3, 0.95).log_ratio == 0.0
    assert msprt([0.0, 0.0], 0.3, 0.95).log_ratio == 0.0


def test_msprt_equals_the_mixture_integral() -> None:
    # The ratio of the two integrals it stands for (sigma integrated with d sigma / sigma,
    # written with u = 1/sigma; delta = mu/sigma ~ N(0, k^2)), computed numerically.
    d = np.array([0.3, -0.1, 0.5, 0.2, 0.05, 0.4])
    k = 0.5

    def alternative(delta: float, u: float) -> float:
        return float(np.prod(norm.pdf((d - delta / u) * u) * u) * norm.pdf(delta, 0, k) / u)

    def null(u: float) -> float:
        return float(np.prod(norm.pdf(d * u) * u) / u)

    top = integrate.dblquad(alternative, 0, 50, -10, 10)[0]
    bottom = integrate.quad(null, 0, 50)[0]
    got = msprt_log_ratio(d.size, float(d.mean()), float(d @ d) / d.size, k)
    assert got == pytest.approx(math.log(top / bottom), rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    returns_lists.filter(_spread),
    st.floats(min_value=0.001, max_value=1000.0),
    st.floats(min_value=0.05, max_value=2.0),
)
def test_msprt_is_scale_free_sign_symmetric_and_deterministic(
    xs: list[float], c: float, k: float
) -> None:
    base = msprt(xs, k, 0.95)
    assert msprt([c * x for x in xs], k, 0.95).log_ratio == pytest.approx(
        base.log_ratio, rel=1e-6, abs=1e-9
    )
    assert msprt([-x for x in xs], k, 0.95).log_ratio == pytest.approx(base.log_ratio)
    assert msprt(list(xs), k, 0.95) == base


def _crossing_share(paths: np.ndarray, k: float, alpha: float) -> float:
    """The share of paths whose Lambda_n ever reaches 1/alpha, looking after every step."""
    threshold = math.log(1 / alpha)
    crossed = 0
    for path in paths:
        sums = np.cumsum(path)
        squares = np.cumsum(path * path)
        for n in range(1, path.size + 1):
            if msprt_log_ratio(n, sums[n - 1] / n, squares[n - 1] / n, k) >= threshold:
                crossed += 1
                break
    return crossed / len(paths)


def test_msprt_stays_valid_under_continuous_monitoring() -> None:
    # Ville's inequality: under "no difference" the ratio ever reaches 1/alpha with
    # probability <= alpha, looking after every one of 300 observations; fat tails
    # (Student t, 3 degrees of freedom) too. A planted effect of 0.4 sd is found.
    rng = np.random.default_rng(17)
    normal = rng.standard_normal((300, 300))
    fat = rng.standard_t(3, (300, 300))
    assert _crossing_share(normal, 0.3, 0.05) <= 0.05
    assert _crossing_share(fat, 0.3, 0.05) <= 0.05
    assert _crossing_share(normal[:100] + 0.4, 0.3, 0.05) >= 0.9
