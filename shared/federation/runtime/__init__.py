"""Service runtime: durable store, runner, wiring of settings, bus, sealer, metrics and health."""

__all__: list[str] = []
