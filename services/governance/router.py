"""The canary router: which variant of a strategy instance gets a trading opportunity.

Each opportunity is named by its cause id (the event id of the bar or event that caused the
signal). ``u = H(salt + ":" + cause_id)`` maps it to [0, 1); the variants split [0, 1) by
their normalised weights, canaries first (by tag), the current model last. So the same
opportunity goes to the same variant in live trading, in every replay and in every replica,
and raising a single canary's share only moves opportunities from the current model to it.

Why not Python's ``hash()``: string hashing is salted per process (``PYTHONHASHSEED``), so
two workers, or a replay of yesterday, would route the same opportunity differently.
BLAKE2b is specified, fast and stable across processes, machines and Python versions.

Normalisation: weights are relative. The canaries' share is ``s = sum(canary weights) /
sum(all weights)``, capped at ``max_canary``; the canaries split the capped share in
proportion to their weights and the current model gets the rest (all of it when every
weight is zero).
"""

from __future__ import annotations

import hashlib
import math
from typing import Annotated

import msgspec
from msgspec import Meta

from eventstore.errors import KeelError

Tag = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
Weight = Annotated[float, Meta(ge=0, le=1e9)]
Share = Annotated[float, Meta(ge=0, le=1)]
Salt = Annotated[str, Meta(max_length=256)]

_U_BITS = 53  # a float64 holds 53 bits exactly: u = k / 2**53 is exact and strictly < 1


class RoutingError(KeelError, ValueError):
    """A variant set that cannot route (none configured, no current model, bad weights).

    A ``ValueError`` too, so msgspec reports it with the config path while decoding."""


class Variant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One model of a strategy instance: the current model or a canary."""

    tag: Tag
    weight: Weight = 1.0  # relative; normalised by ``normalise``
    canary: bool = False


class VariantSet(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The variants of one strategy instance: exactly one current model, any canaries.

    ``salt`` defaults to the instance's name, so two instances with canaries do not send
    the same opportunities to their canaries in lock-step; change it to reshuffle."""

    variants: Annotated[tuple[Variant, ...], Meta(min_length=1, max_length=64)]
    salt: Salt = ""

    def __post_init__(self) -> None:
        if not self.variants:
            raise RoutingError("a variant set needs at least one variant: the current model")
        current = [v.tag for v in self.variants if not v.canary]
        if len(current) != 1:
            raise RoutingError(
                f"a variant set needs exactly one current model (canary = false), got "
                f"{len(current)}: {', '.join(current) or 'none'}"
            )
        tags = [v.tag for v in self.variants]
        if len(set(tags)) != len(tags):
            raise RoutingError(f"variant tags must be unique, got {', '.join(tags)}")
        for v in self.variants:
            if not (math.isfinite(v.weight) and v.weight >= 0):
                raise RoutingError(f"variant {v.tag}: weight must be finite and >= 0")


class RouterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[governance.router]``: the canary cap and each strategy instance's variants."""

    max_canary: Share = 0.1
    instances: dict[str, VariantSet] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0 <= self.max_canary <= 1):
            raise RoutingError(f"max_canary must be within [0, 1] (got {self.max_canary})")


class VariantWeight(msgspec.Struct, frozen=True):
    """A variant's normalised share of the opportunities and its slice [low, high) of u."""

    tag: str
    weight: float
    canary: bool
    low: float
    high: float


class Route(msgspec.Struct, frozen=True):
    """Which variant got one opportunity, with the numbers that decided it."""

    instance: str
    cause_id: str
    tag: str
    canary: bool
    u: float
    weights: tuple[VariantWeight, ...]
    canary_share: float  # configured share before the cap
    max_canary: float
    reason: str


def unit_hash(salt: str, cause_id: str) -> float:
    """``salt + ":" + cause_id`` -> u in [0, 1): the top 53 bits of BLAKE2b-64 / 2**53.

    Dividing all 64 bits by 2**64 would round the largest values up to exactly 1.0."""
    digest = hashlib.blake2b(f"{salt}:{cause_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> (64 - _U_BITS)) / (1 << _U_BITS)


def normalise(variants: VariantSet, max_canary: float) -> tuple[tuple[VariantWeight, ...], float]:
    """The variants' shares (summing to 1, canaries to at most ``max_canary``) and their
    slices of [0, 1), canaries first by tag; plus the configured canary share."""
    canaries = sorted((v for v in variants.variants if v.canary), key=lambda v: v.tag)
    current = next(v for v in variants.variants if not v.canary)
    canary_total = math.fsum(v.weight for v in canaries)
    total = canary_total + current.weight
    configured = canary_total / total if total > 0 else 0.0
    share = min(configured, max_canary)
    out: list[VariantWeight] = []
    low, running = 0.0, 0.0
    for i, v in enumerate(canaries):
        running += v.weight
        fraction = v.weight / (canary_total or 1.0)
        # The last canary ends exactly at the share, so rounding leaves no u unassigned.
        last = i == len(canaries) - 1
        high = share if last else min(share * (running / (canary_total or 1.0)), share)
        out.append(VariantWeight(v.tag, share * fraction, True, low, high))
        low = high
    out.append(VariantWeight(current.tag, 1.0 - share, False, share, 1.0))
    return tuple(out), configured


def pick(weights: tuple[VariantWeight, ...], u: float) -> VariantWeight:
    """The variant whose slice of [0, 1) holds ``u`` (the slices cover [0, 1) exactly)."""
    return next(w for w in weights if w.low <= u < w.high)


def route(config: RouterConfig, instance: str, cause_id: str) -> Route:
    """The variant of ``instance`` that gets the opportunity caused by ``cause_id``."""
    variants = config.instances.get(instance)
    if variants is None:
        known = ", ".join(sorted(config.instances)) or "none"
        raise RoutingError(
            f"no variants configured for strategy instance {instance!r} (configured: {known})"
        )
    weights, configured = normalise(variants, config.max_canary)
    salt = variants.salt or instance
    u = unit_hash(salt, cause_id)
    chosen = pick(weights, u)
    capped = (
        f"canaries configured at {configured:.6g}, capped to max_canary {config.max_canary:.6g}"
        if configured > config.max_canary
        else f"canaries at {configured:.6g} (max_canary {config.max_canary:.6g})"
    )
    role = "canary" if chosen.canary else "current model"
    reason = (
        f"u={u:.6f} (blake2b of salt {salt!r} and cause {cause_id!r}) falls in "
        f"[{chosen.low:.6g}, {chosen.high:.6g}): {role} {chosen.tag} with share "
        f"{chosen.weight:.6g}; {capped}"
    )
    return Route(
        instance=instance,
        cause_id=cause_id,
        tag=chosen.tag,
        canary=chosen.canary,
        u=u,
        weights=weights,
        canary_share=configured,
        max_canary=config.max_canary,
        reason=reason,
    )
