"""Fixtures for the benchmark smoke tests: the repo root on sys.path and a RabbitMQ probe."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `bench` is a top-level folder, not an installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """The broker URL, or a skip naming the missing broker."""
    from bench._util import AMQP_URL, rabbit_available

    reason = asyncio.run(rabbit_available(AMQP_URL))
    if reason is not None:
        pytest.skip(reason)
    return AMQP_URL
