"""Stable state numbering across versions: a retrained HMM can number its states differently
(hmmlearn #140, #271), so a new version's states are matched to the previous version's.

The match is the permutation minimising the summed distance between state means
(Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``). Both versions' means are
put in the **previous** version's standardised units first (each model standardises with
its own training data's center and scale), so the distance is in standard deviations of the
previous training data. The cost reported is the mean distance per state; validation
bounds it. The permutation is applied to every per-state parameter and to the labels.
"""

from __future__ import annotations

import msgspec
import numpy as np
from scipy.optimize import linear_sum_assignment

from strategies.regime.model import RegimeModel


class Alignment(msgspec.Struct, frozen=True):
    """``order[i]`` is the new state that becomes state i (the previous version's state i);
    ``cost`` the mean distance between matched means; ``reason`` why none was found."""

    order: tuple[int, ...]
    cost: float
    distances: tuple[float, ...]
    reason: str = ""

    @property
    def found(self) -> bool:
        return not self.reason


def _raw_means(model: RegimeModel) -> np.ndarray:
    spec = model.features
    return np.array(spec.center) + np.array(spec.scale) * np.array(model.means)


def align(new: RegimeModel, previous: RegimeModel) -> Alignment:
    """The permutation of ``new``'s states that best matches ``previous``'s."""
    if new.n_states != previous.n_states:
        reason = f"{new.n_states} states against {previous.n_states} in {previous.key}"
        return Alignment(order=(), cost=float("inf"), distances=(), reason=reason)
    if new.features.names != previous.features.names:
        reason = f"features {','.join(new.features.names)} differ from {previous.key}'s"
        return Alignment(order=(), cost=float("inf"), distances=(), reason=reason)
    scale = np.array(previous.features.scale)
    old = _raw_means(previous) / scale
    fresh = _raw_means(new) / scale
    cost = np.linalg.norm(old[:, None, :] - fresh[None, :, :], axis=2)
    rows, cols = linear_sum_assignment(cost)
    order = tuple(int(c) for _, c in sorted(zip(rows.tolist(), cols.tolist(), strict=True)))
    distances = tuple(float(cost[i, order[i]]) for i in range(len(order)))
    return Alignment(order=order, cost=float(np.mean(distances)), distances=distances)


def permute(model: RegimeModel, order: tuple[int, ...]) -> RegimeModel:
    """The same model with state i being the old state ``order[i]``: the filter's readings
    (label probabilities) are unchanged, only the numbering moves."""
    if sorted(order) != list(range(model.n_states)):
        raise ValueError(f"{order} is not a permutation of {model.n_states} states")
    trans = np.array(model.transmat)[np.ix_(order, order)]
    return msgspec.structs.replace(
        model,
        startprob=tuple(model.startprob[i] for i in order),
        transmat=tuple(tuple(row) for row in trans.tolist()),
        means=tuple(model.means[i] for i in order),
        covars=tuple(model.covars[i] for i in order),
        labels=tuple(model.labels[i] for i in order),
    )
