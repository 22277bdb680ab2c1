"""The trained regime model as one frozen record, and its bytes (JSON).

Everything the online filter needs is in the record (no hmmlearn object is kept), so a model
file or an Object Store entry is all a worker needs, and the same data and seed give the same
bytes. States are stored in order of mean return, lowest first. Reading and writing those
files and the Object Store is the composition root's job (``eventstore/model_store.py``).
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Literal

import msgspec

from strategies.regime.features import FeatureSpec

LABELS = ("bull", "bear", "range")
CovarianceType = Literal["full", "diag"]
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ModelError(ValueError):
    """A model that cannot be trained, read or found; one line for the user."""


def check_token(value: str, what: str) -> str:
    """Model names and tags become Object Store keys and model tags: keep them plain."""
    if not _TOKEN.fullmatch(value):
        raise ModelError(f"{what} {value!r}: use 1 to 64 of A-Z a-z 0-9 _ -")
    return value


def parse_ref(ref: str) -> tuple[str, str]:
    """``NAME`` or ``NAME:TAG`` -> (name, tag or "")."""
    name, _, tag = ref.partition(":")
    check_token(name, "model name")
    if tag:
        check_token(tag, "model tag")
    return name, tag


class TrainingRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The data a model was fitted on; times are bar open times in ns since the epoch."""

    venue: str
    symbols: tuple[str, ...]
    interval: str
    first_bar: int
    last_bar: int
    bars: int


class Lineage(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where a retrained version came from and how it scored (``keel model retrain``).

    ``window_start``/``window_end`` bound the bars read from the log (open time, ns, end
    exclusive); ``data_sha256`` hashes their stored bytes in stored order. The last
    ``holdout`` fraction of the window (from ``holdout_first_bar``) was not trained on:
    ``holdout_loglik`` is its log-likelihood per bar under the model's own forward filter
    (one-step predictive, in raw feature units so versions with other standardisations
    compare). ``aligned_to`` is the version whose state numbering this one follows.
    """

    data_sha256: str
    window_start: int
    window_end: int
    holdout: float
    holdout_first_bar: int
    holdout_bars: int
    holdout_loglik: float
    scorer: str = "forward-filter"
    aligned_to: str = ""
    alignment_cost: float = 0.0


class RegimeModel(msgspec.Struct, frozen=True):
    """A Gaussian HMM over standardised bar features.

    ``covars`` holds full matrices whatever ``covariance_type`` was fitted (a diagonal one
    has zeros off the diagonal), so the filter has one code path.
    """

    name: str
    tag: str
    features: FeatureSpec
    n_states: int
    covariance_type: CovarianceType
    startprob: tuple[float, ...]
    transmat: tuple[tuple[float, ...], ...]
    means: tuple[tuple[float, ...], ...]
    covars: tuple[tuple[tuple[float, ...], ...], ...]
    labels: tuple[str, ...]
    training: TrainingRange
    log_likelihood: float
    seed: int
    n_iter: int = 0
    converged: bool = True
    lineage: Lineage | None = None
    """Set by retraining; a model without it encodes to the bytes it always had."""

    def __post_init__(self) -> None:
        k, d = self.n_states, len(self.features.names)
        if k < 2:
            raise ValueError(f"n_states ({k}) must be >= 2")
        if not self.features.center:
            raise ValueError("features carry no standardisation (center, scale)")
        _check_distribution(self.startprob, k, "startprob")
        if len(self.transmat) != k:
            raise ValueError(f"transmat needs {k} rows")
        for row in self.transmat:
            _check_distribution(row, k, "a transmat row")
        if len(self.means) != k or any(len(m) != d for m in self.means):
            raise ValueError(f"means must be {k} x {d}")
        if len(self.covars) != k or any(
            len(c) != d or any(len(row) != d for row in c) for c in self.covars
        ):
            raise ValueError(f"covars must be {k} x {d} x {d}")
        if not all(math.isfinite(x) for m in self.means for x in m):
            raise ValueError("means must be finite")
        if len(self.labels) != k or not set(self.labels) <= set(LABELS):
            raise ValueError(f"labels must be {k} of {', '.join(LABELS)}")

    @property
    def key(self) -> str:
        """``name:tag``: how a model is referred to, and the model tag on signals."""
        return f"{self.name}:{self.tag}"


def _check_distribution(values: tuple[float, ...], size: int, what: str) -> None:
    if len(values) != size:
        raise ValueError(f"{what} needs {size} values")
    if not all(math.isfinite(p) and p >= 0 for p in values) or abs(math.fsum(values) - 1) > 1e-6:
        raise ValueError(f"{what} must be probabilities summing to 1")


def encode_model(model: RegimeModel) -> bytes:
    """The model's JSON; without lineage the field is left out, so models trained before
    lineage existed keep their bytes and their content-hash tags."""
    if model.lineage is not None:
        return msgspec.json.encode(model)
    fields = dict(zip(model.__struct_fields__, msgspec.structs.astuple(model), strict=True))
    del fields["lineage"]
    return msgspec.json.encode(fields)


def content_tag(model: RegimeModel) -> str:
    """The default tag: 12 hex digits of the SHA-256 of the model's JSON with an empty tag."""
    blank = msgspec.structs.replace(model, tag="")
    return hashlib.sha256(encode_model(blank)).hexdigest()[:12]


def decode_model(data: bytes, source: str) -> RegimeModel:
    try:
        return msgspec.json.decode(data, type=RegimeModel)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelError(f"{source}: not a regime model: {exc}") from None
