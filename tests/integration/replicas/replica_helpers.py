"""What the replica tests check beyond the harness (bench/_replicas.py): broker up, rounds."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from bench._replicas import AMQP_URL


def rabbit_unavailable() -> str | None:
    """None when the broker answers; otherwise why not (the skip reason)."""
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2.0):
            return None
    except OSError as exc:
        return f"RabbitMQ is not reachable at {parts.hostname}:{parts.port or 5672}: {exc}"


def rounds_by_number(record: Any) -> dict[int, dict]:
    """The campaign's round.completed records by round; a round republished (its publisher was
    killed between the broker's confirm and forgetting the row) must be the same every time."""
    out: dict[int, dict] = {}
    for rec in record.rounds:
        rnd = int(rec["round_num"])
        if rnd in out:
            assert (out[rnd]["participants"], out[rnd]["metrics"]["num_samples"]) == (
                rec["participants"],
                rec["metrics"]["num_samples"],
            ), (out[rnd], rec)
        out.setdefault(rnd, rec)
    return out
