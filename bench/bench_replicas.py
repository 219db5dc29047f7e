"""Replicas: rounds per minute and round overhead with 1 and 2 processes of every service.

Run: ``.venv/bin/python -m bench.bench_replicas [--smoke | --item5 | --claim] [--out PATH]``.
Needs RabbitMQ and
PostgreSQL (``PDMFED_BENCH_POSTGRES_URL``, default the local server; a scratch database per
campaign). trainer-dispatch, security, aggregator and the connector (stand-in datasites that
sleep ``train_s`` and sign a fixed delta, bench/_standin_connector.py) each run as 1 or 2
processes (bench/_replicas.py), state in PostgreSQL; the same campaign alternately with 1 and
2 replicas. Round r's wall time is completed(r) - completed(r - 1) as the orchestrator sees it;
overhead = wall - ``train_s``; medians over the rounds after the first. ``--item5``: issue
#20 item 5's sizes (10M x 10, the hybrid model x 50 stand-in clients), 1 against 2 replicas;
``--claim``: 10M x 10 on one replica with updates in line against claim check
(``PDMFED_CLAIM_DIR``), alternately, each against the one-hop floor (bench_round).
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
#: Issue #20 item 5: 1 against 2 replicas at the issue's sizes.
ITEM5 = [
    {"model": "10M", "params": 10_000_000, "sites": 10, "rounds": 3, "train_s": 2.0, "repeats": 1},
    {"model": "hybrid", "kind": "hybrid", "params": 18_561, "sites": 50, "rounds": 4,
     "train_s": 1.0, "repeats": 1},
]  # fmt: skip
#: Issue #20 item 6: updates in line against claim check, one replica, PostgreSQL.
CLAIM = [
    {"model": "10M", "params": 10_000_000, "sites": 10, "rounds": 3, "train_s": 2.0, "repeats": 1,
     "vary": "claim_check"},
]  # fmt: skip
SMOKE = [
    {"model": "200k", "params": 200_000, "sites": 3, "rounds": 3, "train_s": 0.05, "repeats": 1}
]


def _campaign(conf: dict, replicas: int, claim_check: bool = False) -> dict[str, Any]:
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

    with (
        tempfile.TemporaryDirectory(prefix="pdmfed-bench-replicas-") as tmp,
        scratch_database(POSTGRES_URL, "bench") as url,
    ):
        root = Path(tmp)
        kind = conf.get("kind", "cnn")
        settings, env, prefix = prepare(
            root,
            url,
            ids,
            samples,
            conf["train_s"],
            conf["params"],
            max_message_bytes=settings_default_message_bytes(),
            kind=kind,
            claim_check=claim_check,
        )
        cluster = Cluster(root, env, count=replicas)
        cfg = campaign_config(f"{prefix}-c", ids, conf["rounds"], 600.0, conf["params"], kind)
        start = time.perf_counter()
        (record,) = asyncio.run(
            run_campaigns(settings, prefix, [cfg], cluster, False, 1800.0, 0, on_event=on_event)
        )
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


def _row(
    conf: dict, replicas: int, steady: list[float], claim_check: bool = False
) -> dict[str, Any]:
    overhead = [w - conf["train_s"] for w in steady]
    return {
        "model": conf["model"],
        "params": conf["params"],
        "sites": conf["sites"],
        "replicas": replicas,
        "claim_check": claim_check,
        "rounds": len(steady),
        "wall_s": statistics.median(steady),
        "overhead_s": {
            "median": statistics.median(overhead),
            "min": min(overhead),
            "max": max(overhead),
        },
        "rounds_per_min": 60.0 / statistics.median(steady),
    }


def _variants(conf: dict) -> list[tuple[int, bool]]:
    """(replicas, claim check) of the campaigns one configuration compares."""
    if conf.get("vary") == "claim_check":
        return [(1, False), (1, True)]
    return [(1, False), (2, False)]


def _one_hop_floor(conf: dict, overhead_s: float) -> dict[str, Any]:
    """The bare broker moving every update and the model once (bench_round's floor)."""
    from bench.bench_round import _raw_broker_rate

    model = conf["params"] * 4
    raw = asyncio.run(_raw_broker_rate(model, max(4, min(64, (32 * 1024**2) // model))))
    seconds = (conf["sites"] + 1) * model / raw["bytes_per_s"]
    return {
        "raw_broker_mb_per_s": raw["mb_per_s"],
        "one_hop_s": seconds,
        "overhead_over_one_hop": overhead_s / seconds,
    }


def run(smoke: bool, configs: list[dict] | None = None) -> dict[str, Any]:
    rows = []
    for conf in configs or (SMOKE if smoke else FULL):
        variants = _variants(conf)
        walls: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
        for _ in range(conf["repeats"]):
            for (
                replicas,
                claim,
            ) in variants:  # alternately: the machine's other load hits both alike
                walls[(replicas, claim)] += _campaign(conf, replicas, claim)["walls"][1:]
        for replicas, claim in variants:
            row = _row(conf, replicas, walls[(replicas, claim)], claim)
            if conf.get("vary") == "claim_check":
                row["floor"] = _one_hop_floor(conf, row["overhead_s"]["median"])
            rows.append(row)
            print(row, flush=True)
    return {
        "smoke": smoke,
        "method": "per configuration, campaigns alternately with 1 and 2 processes of each service"
        " (or, vary=claim_check, one process each with updates in line and by claim check)"
        " (state in PostgreSQL, stand-in datasites sleeping train_s); per-round wall from the"
        " orchestrator's round.completed times, first round (start-up) dropped; floor: the bare"
        " broker moving every update and the model once (bench_round's one-hop floor)",
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: [--smoke | --item5 | --claim] [--out FILE]."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    for flag, configs in (("--item5", ITEM5), ("--claim", CLAIM)):
        if flag in args:
            args.remove(flag)
            name = f"{NAME}_{flag[2:]}"
            return bench_main(name, lambda smoke, c=configs: run(smoke, c), __doc__, args)
    return bench_main(NAME, run, __doc__, args)


if __name__ == "__main__":
    raise SystemExit(main())
