"""Scoring a model on bars with its own forward filter: held-out log-likelihood and which
states the filter visits.

The score of bar t is the one-step predictive log density ``log p(x_t | x_1..x_{t-1})``:
the log of the forward recursion's normalising constant, so it uses bars up to t only, like
the live filter (``filter.py``). Densities are of the **raw** features (the model's
standardisation folded in, ``- sum(log scale)``), so two versions trained with different
standardisations score the same bars on the same scale. Each series is filtered from its
first usable bar; only the bars at or after ``first_bar`` count, so the bars before serve as
the filter's history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec
import numpy as np

from contracts.events import Bar
from strategies.regime import features as feat
from strategies.regime.model import ModelError, RegimeModel


class Score(msgspec.Struct, frozen=True):
    """A model's score on the bars from ``first_bar`` on."""

    bars: int
    loglik: float
    """Sum of the per-bar predictive log densities."""
    state_share: tuple[float, ...]
    """Per state, the share of scored bars where it was the most probable filtered state."""

    @property
    def per_bar(self) -> float:
        return self.loglik / self.bars if self.bars else -math.inf


def log_densities(model: RegimeModel, raw: np.ndarray) -> np.ndarray:
    """Rows x states log densities of raw feature rows under each state's Gaussian."""
    spec = model.features
    center, scale = np.array(spec.center), np.array(spec.scale)
    z = (raw - center) / scale
    d = z.shape[1]
    out = np.empty((len(z), model.n_states))
    for k, (mean, covar) in enumerate(zip(model.means, model.covars, strict=True)):
        try:
            lower = np.linalg.cholesky(np.array(covar))
        except np.linalg.LinAlgError:
            raise ModelError(f"model {model.key}: a covariance is not positive definite") from None
        solved = np.linalg.solve(lower, (z - np.array(mean)).T)
        out[:, k] = (
            -0.5 * (solved * solved).sum(axis=0)
            - 0.5 * d * math.log(2 * math.pi)
            - float(np.log(np.diag(lower)).sum())
        )
    return out - float(np.log(scale).sum())


def filter_series(model: RegimeModel, logdens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward filter over one series' rows: (predictive log density, filtered probs)."""
    start = np.array(model.startprob)
    trans = np.array(model.transmat)
    scores = np.empty(len(logdens))
    probs = np.empty_like(logdens)
    prior = start
    for t, row in enumerate(logdens):
        top = row.max()
        alpha = prior * np.exp(row - top)
        total = alpha.sum()
        if not total > 0:  # the prior ruled out every state the bar fits: as filter.py does
            alpha = np.exp(row - top)
            total = alpha.sum()
        scores[t] = math.log(total) + top
        probs[t] = alpha / total
        prior = probs[t] @ trans
    return scores, probs


def score(model: RegimeModel, bars: Sequence[Bar], first_bar: int) -> Score:
    """Filter every series of ``bars`` and score the bars opening at or after ``first_bar``."""
    grouped: dict[tuple[str, str, str], list[Bar]] = {}
    for bar in bars:
        grouped.setdefault((bar.venue, bar.symbol, bar.interval), []).append(bar)
    total, counted = 0.0, 0
    visits = np.zeros(model.n_states)
    for items in grouped.values():
        items = sorted(items, key=lambda b: b.open_time)
        arrays = [
            np.array([getattr(b, f) for b in items], dtype=float)
            for f in ("open", "high", "low", "close", "volume")
        ]
        raw = feat.batch(model.features, *arrays)
        usable = ~np.isnan(raw).any(axis=1)
        if not usable.any():
            continue
        scores, probs = filter_series(model, log_densities(model, raw[usable]))
        times = np.array([b.open_time for b in items])[usable]
        held = times >= first_bar
        total += float(scores[held].sum())
        counted += int(held.sum())
        visits += np.bincount(probs[held].argmax(axis=1), minlength=model.n_states)
    share = tuple((visits / counted).tolist()) if counted else (0.0,) * model.n_states
    return Score(bars=counted, loglik=total, state_share=share)
