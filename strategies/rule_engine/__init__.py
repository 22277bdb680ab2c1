"""Rule engine strategy: regimes, a weighted rule table, bias aggregation."""

from strategies.rule_engine.engine import (
    Decision,
    Holding,
    RuleEngine,
    RuleEngineParams,
    RuleEngineState,
    aggregate,
    decide,
    replay_decisions,
)
from strategies.rule_engine.features import Features, FeatureTracker, FeatureView, LiveFeatures
from strategies.rule_engine.regime import RegimeDetector, vol_regime
from strategies.rule_engine.rules import RULES, Rule

__all__ = [
    "RULES",
    "Decision",
    "FeatureTracker",
    "FeatureView",
    "Features",
    "Holding",
    "LiveFeatures",
    "RegimeDetector",
    "Rule",
    "RuleEngine",
    "RuleEngineParams",
    "RuleEngineState",
    "aggregate",
    "decide",
    "replay_decisions",
    "vol_regime",
]
