"""Byzantine robustness: robust aggregators, update screening, client reputation and an attack library for evaluation."""

from federation.robust.aggregators import (
    AGGREGATORS,
    Aggregator,
    CenteredClipping,
    CoordinateMedian,
    FedAvg,
    Krum,
    MultiKrum,
    TrimmedMean,
    build_rule,
    get_aggregator,
    rule_spec,
)
from federation.robust.detectors import Verdict, Verdicts, screen
from federation.robust.pipeline import (
    Defence,
    DefenceResult,
    Screening,
    ScreeningPolicy,
    aggregation_rule,
    defended_aggregate,
    screen_cohort,
)
from federation.robust.reputation import ReputationBook

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "CenteredClipping",
    "CoordinateMedian",
    "Defence",
    "DefenceResult",
    "FedAvg",
    "Krum",
    "MultiKrum",
    "ReputationBook",
    "Screening",
    "ScreeningPolicy",
    "TrimmedMean",
    "Verdict",
    "Verdicts",
    "aggregation_rule",
    "build_rule",
    "defended_aggregate",
    "get_aggregator",
    "rule_spec",
    "screen",
    "screen_cohort",
]
