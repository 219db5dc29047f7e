"""connector service: owns the PySyft sessions and turns train.request into training at the datasites."""

__all__: list[str] = []
