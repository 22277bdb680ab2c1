"""The HMM regime model: bar features, training, labels and the online forward filter.

Pure code: training and filtering read no file, clock or network (model files and the
Object Store are ``eventstore/model_store.py``). docs/regime.md describes the model, its
features and why inference only ever uses filtered probabilities.
"""

from strategies.regime.features import FeatureSpec, FeatureState
from strategies.regime.filter import FilterState, Regime, RegimeFilter
from strategies.regime.labels import label_states
from strategies.regime.model import (
    LABELS,
    Lineage,
    ModelError,
    RegimeModel,
    TrainingRange,
    decode_model,
    encode_model,
    parse_ref,
)

__all__ = [
    "LABELS",
    "FeatureSpec",
    "FeatureState",
    "FilterState",
    "Lineage",
    "ModelError",
    "Regime",
    "RegimeFilter",
    "RegimeModel",
    "TrainingRange",
    "decode_model",
    "encode_model",
    "label_states",
    "parse_ref",
]
