"""aggregator service: robust aggregation, central DP, privacy ledgers and model versions."""

__all__: list[str] = []
