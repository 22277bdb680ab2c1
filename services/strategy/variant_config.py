"""``[[strategies.variants]]``: the models one strategy instance runs side by side.

Each variant is the instance's strategy built with the instance's params overridden by the
variant's own (another regime model for ma_hmm, another parameter set), under its own tag.
Exactly one is the current model; the others are canaries (docs/governance.md, "Variants").
"""

from __future__ import annotations

import msgspec

from services.governance.router import Tag, Variant, VariantSet, Weight

ParamValue = str | int | float | bool


class VariantConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tag: Tag
    weight: Weight = 1.0  # relative routing weight; canaries' share is capped by max_canary
    canary: bool = False
    params: dict[str, ParamValue] = msgspec.field(default_factory=dict)  # overrides

    def variant(self) -> Variant:
        return Variant(tag=self.tag, weight=self.weight, canary=self.canary)


def variant_set(variants: tuple[VariantConfig, ...], salt: str) -> VariantSet | None:
    """The router's view of configured variants (None: the instance has none); a set
    without exactly one current model is a ``RoutingError`` naming what is wrong."""
    if not variants:
        return None
    return VariantSet(variants=tuple(v.variant() for v in variants), salt=salt)
