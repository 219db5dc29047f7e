"""security service: factory signatures, Byzantine screening, reputation and local DP."""

__all__: list[str] = []
