"""Byzantine robustness: robust aggregators, update screening, client reputation and an attack library for evaluation."""

from federation.robust.aggregators import (
    AGGREGATORS,
    Aggregator,
    CenteredClipping,
    CoordinateMedian,
    FedAvg,
    Krum,
    TrimmedMean,
    get_aggregator,
)
from federation.robust.detectors import Verdict, Verdicts, screen
from federation.robust.pipeline import DefenceResult, defended_aggregate
from federation.robust.reputation import ReputationBook

__all__ = [
    "AGGREGATORS",
    "Aggregator",
    "CenteredClipping",
    "CoordinateMedian",
    "DefenceResult",
    "FedAvg",
    "Krum",
    "ReputationBook",
    "TrimmedMean",
    "Verdict",
    "Verdicts",
    "defended_aggregate",
    "get_aggregator",
    "screen",
]
