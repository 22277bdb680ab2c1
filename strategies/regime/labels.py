"""Which market regime each HMM state stands for.

The rule reads the states' mean log return only: highest -> ``bull``, lowest -> ``bear``,
every state in between -> ``range``. Volatility is not part of the rule on purpose: a
high-volatility state with a positive drift (a squeeze up) is still a market to be long in,
and the MA vote the strategies fuse it with already reacts to direction. Training orders
the states by mean return, so the labels of K states are ``bear, range x (K-2), bull``.
"""

from __future__ import annotations

from collections.abc import Sequence


def label_states(mean_returns: Sequence[float]) -> tuple[str, ...]:
    """Labels in state order; ties go to the lower state index for ``bear``."""
    k = len(mean_returns)
    order = sorted(range(k), key=lambda s: (mean_returns[s], s))
    labels = ["range"] * k
    labels[order[0]] = "bear"
    labels[order[-1]] = "bull"
    return tuple(labels)
