"""The HMM regime model: bar features, training, labels and the online forward filter.

Pure code (training reads no files or clock; ``train_model_file`` and the model file helpers
are the only I/O). docs/regime.md describes the model, its features and why inference only
ever uses filtered probabilities.
"""

from strategies.regime.features import FeatureSpec, FeatureState
from strategies.regime.filter import FilterState, Regime, RegimeFilter
from strategies.regime.labels import label_states
from strategies.regime.model import (
    LABELS,
    ModelError,
    RegimeModel,
    TrainingRange,
    decode_model,
    encode_model,
    read_model_file,
    write_model_file,
)

__all__ = [
    "LABELS",
    "FeatureSpec",
    "FeatureState",
    "FilterState",
    "ModelError",
    "Regime",
    "RegimeFilter",
    "RegimeModel",
    "TrainingRange",
    "decode_model",
    "encode_model",
    "label_states",
    "read_model_file",
    "write_model_file",
]
