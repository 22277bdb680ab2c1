"""Online regime inference: the normalised forward recursion, one bar at a time.

    alpha_t(j) ∝ b_j(x_t) * sum_i alpha_{t-1}(i) * A(i, j),    alpha_1(j) ∝ pi(j) * b_j(x_1)

``alpha_t`` is P(state_t | x_1..x_t): the filtered probability, which uses bars up to t
only. Smoothed probabilities (hmmlearn's ``predict_proba``, Viterbi) also use bars after t,
which a live strategy does not have, so they would make a backtest look better than trading
could be. Emissions are scaled by their largest value before multiplying (only ratios
matter after normalising), so nothing underflows over any number of bars. O(K^2 + K d^2)
per bar: the Gaussian log densities of all states are one numpy matrix product (feature
standardisation and the covariances' inverse Cholesky factors are folded into that matrix up
front); the K-sized recursion runs on plain floats, since at K = 3 numpy's per-call overhead
costs more than the arithmetic. The state per series is a msgspec struct a worker snapshots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import msgspec
import numpy as np

from contracts.events import Bar
from strategies.regime import features as feat
from strategies.regime.features import FeatureState
from strategies.regime.model import LABELS, ModelError, RegimeModel


class Regime(msgspec.Struct, frozen=True):
    """Filtered label probabilities at one bar and the most probable label."""

    bull: float
    bear: float
    range: float
    label: str


class FilterState(msgspec.Struct):
    """One series' filter: its feature state and the last filtered state probabilities."""

    features: FeatureState = msgspec.field(default_factory=FeatureState)
    probs: list[float] = msgspec.field(default_factory=list)


class RegimeFilter:
    """Forward filter of one model; stateless itself, so one serves every series."""

    def __init__(self, model: RegimeModel) -> None:
        self.model = model
        spec = model.features
        k, d = model.n_states, len(spec.names)
        center = np.array(spec.center)
        scale = np.array(spec.scale)
        blocks, consts = [], []
        for mean, covar in zip(model.means, model.covars, strict=True):
            try:
                lower = np.linalg.cholesky(np.array(covar))
            except np.linalg.LinAlgError:
                raise ModelError(
                    f"model {model.key}: a covariance is not positive definite"
                ) from None
            inverse = np.linalg.inv(lower)
            # z = L^-1 ((x - center) / scale - mean), written as [A | b] @ [x, 1]
            offset = inverse @ (center / scale + np.array(mean))
            blocks.append(np.hstack([inverse / scale, -offset[:, None]]))
            consts.append(-0.5 * d * math.log(2 * math.pi) - float(np.log(np.diag(lower)).sum()))
        self._weights = np.vstack(blocks)
        self._halves = np.kron(np.eye(k), np.full((d, 1), 0.5))  # 0.5 * per-state sum of z^2
        self._consts = np.array(consts)
        self._start = list(model.startprob)
        self._columns = [tuple(col) for col in zip(*model.transmat, strict=True)]
        self._members = tuple(
            tuple(s for s, label in enumerate(model.labels) if label == name) for name in LABELS
        )

    def step(self, state: FilterState, bar: Bar) -> Regime | None:
        """Advance one bar of the state's series; None while the features warm up."""
        x = feat.update(self.model.features, state.features, bar)
        if x is None:
            return None
        x.append(1.0)
        z = self._weights @ x
        loglik = (self._consts - (z * z) @ self._halves).tolist()
        top = max(loglik)
        emission = [math.exp(v - top) for v in loglik]
        probs = state.probs
        prior = (
            [sum([p * a for p, a in zip(probs, col, strict=False)]) for col in self._columns]
            if probs
            else self._start
        )
        alpha = [p * e for p, e in zip(prior, emission, strict=False)]
        total = sum(alpha)
        if not total > 0:  # the observation ruled out every state the prior allowed
            alpha, total = emission, sum(emission)
        state.probs = [a / total for a in alpha]
        return self.reading(state.probs)

    def reading(self, probs: list[float]) -> Regime:
        """Label probabilities from state probabilities (states sharing a label add up)."""
        bull, bear, range_ = [sum([probs[s] for s in members]) for members in self._members]
        best = max(bull, bear, range_)
        label = "bull" if bull == best else "bear" if bear == best else "range"
        return Regime(bull=bull, bear=bear, range=range_, label=label)

    def run(self, bars: Iterable[Bar], state: FilterState | None = None) -> list[Regime | None]:
        """Filter one series' bars in order: the reading after each bar."""
        state = state or FilterState()
        return [self.step(state, bar) for bar in bars]
