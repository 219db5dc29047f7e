"""trainer-dispatch service: the round state machine (cohort, deadlines, stragglers, retries, stop rules)."""

__all__: list[str] = []
