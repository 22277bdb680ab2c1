"""The lifecycle of one model name: its versions, which is current and which the canary, the
rollback stack, and an append-only history of every retrain, promotion, rollback and prune
(who, when, why).

Pure transitions over a frozen record; ``eventstore/model_store.py`` keeps the record in the
KV bucket ``KEEL_MODEL_LIFECYCLE`` (key = model name) and updates it compare-and-set.
Times are given by the caller (RFC 3339 strings), never read here.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from strategies.regime.model import ModelError


class VersionEntry(msgspec.Struct, frozen=True):
    """One retrained version and its validation verdict (stored only when accepted)."""

    tag: str
    window_start: int
    window_end: int
    data_sha256: str
    seed: int
    holdout_loglik: float
    previous_loglik: float | None
    accepted: bool
    reason: str
    aligned_to: str = ""
    alignment_cost: float | None = None
    pruned: bool = False


class HistoryEntry(msgspec.Struct, frozen=True):
    at: str
    action: str
    """``retrain``, ``rejected``, ``promote``, ``rollback`` or ``prune``."""
    tag: str
    by: str
    reason: str
    previous: str = ""
    """The current version this action replaced (promote, rollback)."""


class Lifecycle(msgspec.Struct, frozen=True):
    name: str
    current: str = ""
    canary: str = ""
    rollback: tuple[str, ...] = ()
    """Former current versions, the most recent last: ``keel model rollback`` pops it."""
    versions: tuple[VersionEntry, ...] = ()
    history: tuple[HistoryEntry, ...] = ()

    def entry(self, tag: str) -> VersionEntry | None:
        return next((v for v in self.versions if v.tag == tag), None)

    @property
    def reference(self) -> str:
        """The version a retrain is aligned to and validated against."""
        return self.current or self.canary


def record_retrain(life: Lifecycle, version: VersionEntry, at: str, by: str) -> Lifecycle:
    """An accepted version becomes the canary; a rejected one is only recorded."""
    versions = (*(v for v in life.versions if v.tag != version.tag), version)
    action = "retrain" if version.accepted else "rejected"
    note = HistoryEntry(at=at, action=action, tag=version.tag, by=by, reason=version.reason)
    canary = version.tag if version.accepted and version.tag != life.current else life.canary
    return msgspec.structs.replace(
        life, canary=canary, versions=versions, history=(*life.history, note)
    )


def promote(life: Lifecycle, tag: str, at: str, by: str, reason: str) -> Lifecycle:
    """``tag`` becomes current; the old current goes on the rollback stack."""
    if tag == life.current:
        raise ModelError(f"{life.name}:{tag} is already the current version")
    stack = (*life.rollback, life.current) if life.current else life.rollback
    note = HistoryEntry(
        at=at, action="promote", tag=tag, by=by, reason=reason, previous=life.current
    )
    return msgspec.structs.replace(
        life,
        current=tag,
        canary="" if life.canary == tag else life.canary,
        rollback=stack,
        history=(*life.history, note),
    )


def rollback(life: Lifecycle, at: str, by: str, reason: str) -> Lifecycle:
    """Back to the previous current version (the top of the rollback stack)."""
    if not life.rollback:
        raise ModelError(f"model {life.name} has no earlier current version to roll back to")
    back = life.rollback[-1]
    note = HistoryEntry(
        at=at, action="rollback", tag=back, by=by, reason=reason, previous=life.current
    )
    return msgspec.structs.replace(
        life, current=back, rollback=life.rollback[:-1], history=(*life.history, note)
    )


def protected(life: Lifecycle) -> set[str]:
    """Never pruned: the current version, the canary and the one a rollback returns to."""
    return {t for t in (life.current, life.canary, *life.rollback[-1:]) if t}


def prune_plan(life: Lifecycle, stored_oldest_first: Iterable[str], keep: int) -> list[str]:
    """The stored tags to delete so at most ``keep`` remain (oldest first, never protected)."""
    if keep < 1:
        raise ModelError(f"keep ({keep}) must be >= 1")
    tags = list(dict.fromkeys(stored_oldest_first))
    guard = protected(life)
    extra = len(tags) - keep
    out = []
    for tag in tags:
        if extra <= 0:
            break
        if tag not in guard:
            out.append(tag)
            extra -= 1
    return out


def record_prune(life: Lifecycle, tags: list[str], at: str, by: str, keep: int) -> Lifecycle:
    if not tags:
        return life
    gone = set(tags)
    versions = tuple(
        msgspec.structs.replace(v, pruned=True) if v.tag in gone else v for v in life.versions
    )
    notes = tuple(
        HistoryEntry(at=at, action="prune", tag=t, by=by, reason=f"keep {keep}") for t in tags
    )
    return msgspec.structs.replace(
        life,
        versions=versions,
        rollback=tuple(t for t in life.rollback if t not in gone),
        history=(*life.history, *notes),
    )
