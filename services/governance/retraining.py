"""Retraining the regime model from the log's bars: the window, the fit with a held-out tail,
label alignment to the reference version, and validation. Pure: the bars (with their stored
bytes), the reference model and the time come in; a ``Candidate`` with its ``Verdict`` goes
out. ``retrain_job.py`` reads the log and stores the result.

Validation accepts a version only if (1) its held-out log-likelihood per bar is not worse than
the reference version's on the **same** held-out bars by more than ``ll_margin`` nats, (2)
every state is the most probable one on at least ``min_state_share`` of the held-out bars
(no dead state), and (3) an alignment to the reference was found with a mean distance per
state of at most ``max_alignment_cost`` (standard deviations). Without a reference version
(the first retrain) only (2) applies.

An aligned version keeps the reference's labels state for state, so a retrain never flips
what a state means to the strategies; where the mean-return rule (``labels.py``) would
label the new states otherwise, the verdict's reason says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import msgspec

from contracts.events import Bar
from contracts.intervals import IntervalError, duration_ns
from strategies.regime.alignment import Alignment, align, permute
from strategies.regime.features import FeatureSpec
from strategies.regime.lifecycle import VersionEntry
from strategies.regime.model import Lineage, ModelError, RegimeModel, content_tag
from strategies.regime.scoring import score
from strategies.regime.training import train


class RetrainConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    symbol: str
    window: str = "30d"
    every: str = "1d"
    holdout: float = 0.2
    keep: int = 5
    seed: int = 0
    states: int = 3
    iterations: int = 100
    ll_margin: float = 0.05
    min_state_share: float = 0.01
    max_alignment_cost: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.holdout < 1.0:
            raise ValueError(f"holdout ({self.holdout}) must be between 0 and 1")
        if self.keep < 1:
            raise ValueError(f"keep ({self.keep}) must be >= 1")
        if self.ll_margin < 0 or self.min_state_share < 0 or self.max_alignment_cost < 0:
            raise ValueError("ll_margin, min_state_share and max_alignment_cost must be >= 0")
        for what, text in (("window", self.window), ("every", self.every)):
            try:
                if duration_ns(text, what) <= 0:
                    raise ValueError(f"{what} ({text}) must be > 0")
            except IntervalError as exc:
                raise ValueError(str(exc)) from None


class WindowData(msgspec.Struct, frozen=True):
    """The bars of the window in stored order and the SHA-256 of their stored bytes."""

    start: int
    end: int
    bars: tuple[Bar, ...]
    sha256: str


def window_of(latest_close: int, window: str, end: int | None = None) -> tuple[int, int]:
    """``[end - window, end)`` by bar open time; ``end`` defaults to the newest bar's close,
    so a run is a function of the log, not of the clock."""
    stop = latest_close if end is None else end
    return stop - duration_ns(window, "window"), stop


def window_data(stored: Iterable[tuple[Bar, bytes]], start: int, end: int) -> WindowData:
    digest = hashlib.sha256()
    kept = []
    for bar, payload in stored:
        if start <= bar.open_time < end:
            kept.append(bar)
            digest.update(payload)
    return WindowData(start=start, end=end, bars=tuple(kept), sha256=digest.hexdigest())


def is_due(last_window_end: int | None, latest_close: int, every: str) -> bool:
    """A scheduled run retrains once the log holds ``every`` more data than the last run."""
    return last_window_end is None or latest_close - last_window_end >= duration_ns(every)


class Verdict(msgspec.Struct, frozen=True):
    accepted: bool
    reason: str
    holdout_bars: int
    holdout_loglik: float
    previous_loglik: float | None
    ll_margin: float
    state_share: tuple[float, ...]
    min_state_share: float
    alignment_cost: float | None
    max_alignment_cost: float


class Candidate(msgspec.Struct, frozen=True):
    model: RegimeModel
    verdict: Verdict

    def entry(self) -> VersionEntry:
        lineage = self.model.lineage
        assert lineage is not None
        v = self.verdict
        return VersionEntry(
            tag=self.model.tag,
            window_start=lineage.window_start,
            window_end=lineage.window_end,
            data_sha256=lineage.data_sha256,
            seed=self.model.seed,
            holdout_loglik=v.holdout_loglik,
            previous_loglik=v.previous_loglik,
            accepted=v.accepted,
            reason=v.reason,
            aligned_to=lineage.aligned_to,
            alignment_cost=v.alignment_cost,
        )


def holdout_start(bars: Sequence[Bar], holdout: float) -> int:
    """The open time from which the last ``holdout`` share of the window's bars lie."""
    times = sorted(b.open_time for b in bars)
    return times[min(len(times) - 1, int(len(times) * (1.0 - holdout)))]


def retrain(data: WindowData, config: RetrainConfig, reference: RegimeModel | None) -> Candidate:
    """Fit on the window's first part, align to ``reference``, score and validate."""
    if not data.bars:
        raise ModelError(f"no {config.symbol} bars in the window")
    split = holdout_start(data.bars, config.holdout)
    spec = reference.features if reference is not None else FeatureSpec()
    states = reference.n_states if reference is not None else config.states
    fitted = train(
        [b for b in data.bars if b.open_time < split],
        states=states,
        name=config.name,
        seed=config.seed,
        features=spec,
        covariance_type=reference.covariance_type if reference is not None else "full",
        n_iter=config.iterations,
    )
    alignment = align(fitted, reference) if reference is not None else None
    note = ""
    if reference is not None and alignment is not None and alignment.found:
        fitted = permute(fitted, alignment.order)
        if fitted.labels != reference.labels:
            note = (
                f"; labels kept from {reference.key} ({','.join(reference.labels)}), "
                f"by mean return they would be {','.join(fitted.labels)}"
            )
            fitted = msgspec.structs.replace(fitted, labels=reference.labels)
    verdict = validate(fitted, reference, alignment, data.bars, split, config)
    if note:
        verdict = msgspec.structs.replace(verdict, reason=verdict.reason + note)
    lineage = Lineage(
        data_sha256=data.sha256,
        window_start=data.start,
        window_end=data.end,
        holdout=config.holdout,
        holdout_first_bar=split,
        holdout_bars=verdict.holdout_bars,
        holdout_loglik=verdict.holdout_loglik,
        aligned_to=reference.key if alignment is not None and alignment.found else "",
        alignment_cost=alignment.cost if alignment is not None and alignment.found else 0.0,
    )
    model = msgspec.structs.replace(fitted, lineage=lineage)
    return Candidate(model=msgspec.structs.replace(model, tag=content_tag(model)), verdict=verdict)


def validate(
    model: RegimeModel,
    reference: RegimeModel | None,
    alignment: Alignment | None,
    bars: Sequence[Bar],
    split: int,
    config: RetrainConfig,
) -> Verdict:
    """Both versions scored on the same held-out bars (open time >= ``split``)."""
    held = score(model, bars, split)
    loglik, count, share = held.per_bar, held.bars, held.state_share
    prev_ll = score(reference, bars, split).per_bar if reference is not None else None
    cost = alignment.cost if alignment is not None and alignment.found else None
    reasons = []
    dead = [f"state {k} ({s:.1%})" for k, s in enumerate(share) if s < config.min_state_share]
    if dead:
        reasons.append(
            f"dead state: {', '.join(dead)} most probable on less than "
            f"{config.min_state_share:.1%} of {count} held-out bars"
        )
    if prev_ll is not None and loglik < prev_ll - config.ll_margin:
        reasons.append(
            f"held-out log-likelihood {loglik:.4f}/bar is worse than the reference's "
            f"{prev_ll:.4f}/bar by more than {config.ll_margin}"
        )
    if alignment is not None and not alignment.found:
        reasons.append(f"no label alignment: {alignment.reason}")
    elif cost is not None and cost > config.max_alignment_cost:
        reasons.append(
            f"no label alignment: mean state distance {cost:.3f} > {config.max_alignment_cost}"
        )
    if reasons:
        reason = "; ".join(reasons)
    elif prev_ll is None:
        reason = f"first version: held-out {loglik:.4f}/bar over {count} bars, every state visited"
    else:
        reason = (
            f"held-out {loglik:.4f}/bar vs reference {prev_ll:.4f}/bar (margin "
            f"{config.ll_margin}), every state visited, aligned at cost {cost:.3f}"
        )
    return Verdict(
        accepted=not reasons,
        reason=reason,
        holdout_bars=count,
        holdout_loglik=loglik,
        previous_loglik=prev_ll,
        ll_margin=config.ll_margin,
        state_share=share,
        min_state_share=config.min_state_share,
        alignment_cost=cost,
        max_alignment_cost=config.max_alignment_cost,
    )
