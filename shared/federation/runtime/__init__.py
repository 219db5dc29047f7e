"""Service runtime: durable store, runner, wiring of settings, bus, sealer, metrics and health."""
