"""Replicas: rounds per minute and round overhead with 1 and 2 processes of every service.

Run: ``.venv/bin/python -m bench.bench_replicas [--smoke] [--out PATH]``. Needs RabbitMQ and
PostgreSQL (``PDMFED_BENCH_POSTGRES_URL``, default the local server; a scratch database per
campaign). trainer-dispatch, security, aggregator and the connector (stand-in datasites that
sleep ``train_s`` and sign a fixed delta, bench/_standin_connector.py) each run as 1 or 2
processes (bench/_replicas.py), state in PostgreSQL; the same campaign alternately with 1 and
2 replicas. Round r's wall time is completed(r) - completed(r - 1) as the orchestrator sees it;
overhead = wall - ``train_s``; medians over the rounds after the first.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._util import bench_main

NAME = "replicas"
POSTGRES_URL = os.environ.get(
    "PDMFED_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
FULL = [
    {"model": "2M", "params": 2_000_000, "sites": 4, "rounds": 5, "train_s": 1.0, "repeats": 2},
    {"model": "10M", "params": 10_000_000, "sites": 4, "rounds": 3, "train_s": 2.0, "repeats": 1},
]
SMOKE = [{"model": "200k", "params": 200_000, "sites": 3, "rounds": 3, "train_s": 0.05, "repeats": 1}]


def _campaign(conf: dict, replicas: int) -> dict[str, Any]:
    """One campaign through ``replicas`` processes of each service; per-round wall times (the
    first round includes the processes' start-up: callers drop it)."""
    from federation.runtime.store_postgres import scratch_database

    from bench._replicas import Cluster, campaign_config, prepare, run_campaigns

    ids = [f"f{i}" for i in range(1, conf["sites"] + 1)]
    samples = {ds: 100 for ds in ids}
    done: dict[int, float] = {}

    def on_event(kind: str, payload: dict, record: Any) -> None:
        if kind == "round.completed":
            done.setdefault(int(payload["round_num"]), time.perf_counter())

    with tempfile.TemporaryDirectory(prefix="pdmfed-bench-replicas-") as tmp, scratch_database(
        POSTGRES_URL, "bench"
    ) as url:
        root = Path(tmp)
        settings, env, prefix = prepare(root, url, ids, samples, conf["train_s"], conf["params"],
                                        max_message_bytes=settings_default_message_bytes())
        cluster = Cluster(root, env, count=replicas)
        cfg = campaign_config(f"{prefix}-c", ids, conf["rounds"], 600.0, conf["params"])
        start = time.perf_counter()
        (record,) = asyncio.run(run_campaigns(settings, prefix, [cfg], cluster, False, 1800.0, 0,
                                              on_event=on_event))
    if record.completed is None or len(done) < conf["rounds"]:
        raise RuntimeError(f"campaign ended early: {record.completed}, rounds {sorted(done)}")
    walls, previous = [], start
    for r in range(1, conf["rounds"] + 1):
        walls.append(done[r] - previous)
        previous = done[r]
    return {"walls": walls}


def settings_default_message_bytes() -> int:
    """The deployed message limit (8 MiB): a 10M-parameter update is 5 chunks."""
    from federation.config import Settings

    return int(Settings.model_fields["max_message_bytes"].default)


def _row(conf: dict, replicas: int, steady: list[float]) -> dict[str, Any]:
    overhead = [w - conf["train_s"] for w in steady]
    return {
        "model": conf["model"], "params": conf["params"], "sites": conf["sites"],
        "replicas": replicas, "rounds": len(steady),
        "wall_s": statistics.median(steady),
        "overhead_s": {"median": statistics.median(overhead), "min": min(overhead),
                       "max": max(overhead)},
        "rounds_per_min": 60.0 / statistics.median(steady),
    }


def run(smoke: bool) -> dict[str, Any]:
    rows = []
    for conf in SMOKE if smoke else FULL:
        walls: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(conf["repeats"]):
            for replicas in (1, 2):  # alternately: the machine's other load hits both alike
                walls[replicas] += _campaign(conf, replicas)["walls"][1:]
        for replicas in (1, 2):
            rows.append(_row(conf, replicas, walls[replicas]))
    return {
        "smoke": smoke,
        "method": "per configuration, campaigns alternately with 1 and 2 processes of each service"
        " (state in PostgreSQL, stand-in datasites sleeping train_s); per-round wall from the"
        " orchestrator's round.completed times, first round (start-up) dropped",
        "rows": rows,
    }


if __name__ == "__main__":
    raise SystemExit(bench_main(NAME, run, __doc__))
