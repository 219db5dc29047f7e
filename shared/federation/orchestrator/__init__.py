"""The orchestrator: starts campaigns, follows their events, runs the embedded demo."""

__all__: list[str] = []
