"""Fit a regime model to bars with hmmlearn's GaussianHMM; seeded, so reproducible.

Initialisation matters more than anything else here: fitted from hmmlearn's default start
(k-means on single bars), EM splits bars by the size and sign of their move into short-lived
states and never finds the regimes. So the start is k-means on features smoothed over
``SMOOTH`` bars, where bars of one regime cluster, with a sticky transition matrix; EM then
refines on the per-bar features. States are finally put in order of mean return and
labelled (``labels.py``). Without ``tag`` the tag is a hash of the model's content.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence

import msgspec
import numpy as np
from hmmlearn.hmm import GaussianHMM
from sklearn.cluster import KMeans

from contracts.events import Bar
from strategies.regime import features as feat
from strategies.regime.features import FeatureSpec
from strategies.regime.labels import label_states
from strategies.regime.model import (
    CovarianceType,
    ModelError,
    RegimeModel,
    TrainingRange,
    check_token,
    content_tag,
)

SMOOTH = 20
"""Bars averaged for the initial clustering (regimes last tens of bars)."""
STICKY = 0.95
"""Initial probability of staying in a state."""
MIN_COVAR = 1e-3
"""Floor on variances (features are standardised, so this is 0.1% of the overall one)."""
MIN_ROWS_PER_STATE = 50
MIN_ROWS = 200


def train(
    bars: Sequence[Bar],
    *,
    states: int,
    name: str = "regime",
    tag: str = "",
    seed: int = 0,
    features: FeatureSpec | None = None,
    covariance_type: CovarianceType = "full",
    n_iter: int = 100,
) -> RegimeModel:
    """A model of ``states`` regimes from bars of one or more series (venue, symbol, interval)."""
    check_token(name, "model name")
    if tag:
        check_token(tag, "model tag")
    if states < 2:
        raise ModelError(f"states ({states}) must be >= 2")
    if covariance_type not in ("full", "diag"):
        raise ModelError(f"covariance type must be full or diag, not {covariance_type!r}")
    if n_iter < 1:
        raise ModelError(f"n_iter ({n_iter}) must be >= 1")
    series = _series(bars)
    spec = _scales(features or FeatureSpec(), series)
    blocks = [
        rows[~np.isnan(rows).any(axis=1)]
        for rows in (feat.batch(spec, *arrays) for arrays in series.values())
    ]
    lengths = [len(block) for block in blocks if len(block)]
    needed = max(MIN_ROWS, MIN_ROWS_PER_STATE * states)
    if sum(lengths) < needed:
        raise ModelError(
            f"too few bars: {sum(lengths)} usable after warm-up, {states} states need {needed}"
        )
    raw = np.concatenate([block for block in blocks if len(block)])
    center, scale = raw.mean(axis=0), raw.std(axis=0)
    for column, spread in zip(spec.names, scale.tolist(), strict=True):
        if not spread > 1e-12:
            raise ModelError(f"feature {column} does not vary in the training data")
    spec = msgspec.structs.replace(spec, center=tuple(center.tolist()), scale=tuple(scale.tolist()))
    z = (raw - center) / scale
    hmm = _fit(z, lengths, states, covariance_type, seed, n_iter)
    order = np.argsort(hmm.means_[:, 0], kind="stable")
    means = hmm.means_[order]
    model = RegimeModel(
        name=name,
        tag=tag,
        features=spec,
        n_states=states,
        covariance_type=covariance_type,
        startprob=tuple(hmm.startprob_[order].tolist()),
        transmat=tuple(tuple(row) for row in hmm.transmat_[np.ix_(order, order)].tolist()),
        means=tuple(tuple(row) for row in means.tolist()),
        covars=tuple(tuple(tuple(row) for row in matrix) for matrix in hmm.covars_[order].tolist()),
        labels=label_states(means[:, 0].tolist()),
        training=_range(bars, series),
        log_likelihood=float(hmm.score(z, lengths)),
        seed=seed,
        n_iter=int(hmm.monitor_.iter),
        converged=bool(hmm.monitor_.converged),
    )
    if not tag:
        model = msgspec.structs.replace(model, tag=content_tag(model))
    return model


_Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _series(bars: Sequence[Bar]) -> dict[tuple[str, str, str], _Arrays]:
    """OHLCV arrays per series, each in open-time order."""
    grouped: dict[tuple[str, str, str], list[Bar]] = {}
    for bar in bars:
        grouped.setdefault((bar.venue, bar.symbol, bar.interval), []).append(bar)
    if not grouped:
        raise ModelError("no bars to train on")
    out = {}
    for key, items in grouped.items():
        items.sort(key=lambda b: b.open_time)
        out[key] = tuple(
            np.array([getattr(b, field) for b in items], dtype=float)
            for field in ("open", "high", "low", "close", "volume")
        )
    return out


def _scales(spec: FeatureSpec, series: dict[tuple[str, str, str], _Arrays]) -> FeatureSpec:
    """Typical absolute return (median / 0.6745, a robust sigma) and median volume."""
    moves = np.concatenate([np.abs(np.diff(np.log(arrays[3]))) for arrays in series.values()])
    volumes = np.concatenate([arrays[4] for arrays in series.values()])
    move = float(np.median(moves)) / 0.6745 if len(moves) else 0.0
    if not move > 0:
        move = float(moves.mean()) if len(moves) else 0.0
    volume = float(np.median(volumes))
    if not volume > 0:
        volume = float(volumes.mean())
    return msgspec.structs.replace(
        spec,
        move_scale=move if move > 0 else 1.0,
        volume_scale=volume if volume > 0 else 1.0,
        center=(),
        scale=(),
    )


def _initial(
    z: np.ndarray, lengths: list[int], states: int, seed: int, diag: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Means and covariances of the clusters of smoothed features."""
    smoothed, rows, start = [], [], 0
    for length in lengths:
        window = min(SMOOTH, length)
        sums = np.cumsum(np.vstack([np.zeros(z.shape[1]), z[start : start + length]]), axis=0)
        smoothed.append((sums[window:] - sums[:-window]) / window)
        rows.append(np.arange(start + window - 1, start + length))
        start += length
    points, index = np.concatenate(smoothed), np.concatenate(rows)
    if len(np.unique(points, axis=0)) < states:
        raise ModelError(f"the data has fewer than {states} distinct feature patterns")
    clusters = KMeans(n_clusters=states, n_init=4, random_state=seed).fit_predict(points)
    overall = np.cov(z.T).reshape(z.shape[1], z.shape[1])
    means, covars = [], []
    for k in range(states):
        members = z[index[clusters == k]]
        means.append(members.mean(axis=0))
        cov = (
            np.cov(members.T).reshape(z.shape[1], z.shape[1])
            if len(members) > z.shape[1]
            else overall
        )
        cov = cov + MIN_COVAR * np.eye(z.shape[1])
        covars.append(np.diag(cov) if diag else cov)
    return np.array(means), np.array(covars)


def _fit(
    z: np.ndarray,
    lengths: list[int],
    states: int,
    covariance_type: CovarianceType,
    seed: int,
    n_iter: int,
) -> GaussianHMM:
    means, covars = _initial(z, lengths, states, seed, covariance_type == "diag")
    hmm = GaussianHMM(
        n_components=states,
        covariance_type=covariance_type,
        min_covar=MIN_COVAR,
        n_iter=n_iter,
        random_state=seed,
        init_params="",
        params="stmc",
    )
    hmm.startprob_ = np.full(states, 1.0 / states)
    transmat = np.full((states, states), (1.0 - STICKY) / (states - 1))
    np.fill_diagonal(transmat, STICKY)
    hmm.transmat_ = transmat
    hmm.means_ = means
    hmm.covars_ = covars
    with _quiet():
        hmm.fit(z, lengths)
    return hmm


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """hmmlearn logs each EM step that does not improve; the model records convergence."""
    logger = logging.getLogger("hmmlearn")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _range(bars: Sequence[Bar], series: dict[tuple[str, str, str], _Arrays]) -> TrainingRange:
    keys = list(series)
    return TrainingRange(
        venue=",".join(sorted({k[0] for k in keys})),
        symbols=tuple(sorted({k[1] for k in keys})),
        interval=",".join(sorted({k[2] for k in keys})),
        first_bar=min(b.open_time for b in bars),
        last_bar=max(b.open_time for b in bars),
        bars=len(bars),
    )
