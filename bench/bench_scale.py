"""Scale: one round with 10 to 200 stand-in clients through the real services; RSS vs model size.

Run: ``.venv/bin/python -m bench.bench_scale [--smoke] [--bus memory|rabbitmq] [--out PATH]``.
Each configuration runs in a fresh child process (so its peak RSS is its own): the four
services + orchestrator client in one process (EmbeddedFederation), stand-in datasites that
return a delta of the model's shape at once (no training time: the round time is all system).
Round time = round 2's wall time (round 1 includes start-up and the initial model build).
The exponent k in round_time ~ clients^k is a least-squares fit on log-log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from federation.runtime.allocator import keep_freed_buffers

from bench._common import write_result
from bench._util import AMQP_URL, bench_prefix, loglog_slope, rabbit_available, result_path

NAME = "scale"
MB = 1024 * 1024
FULL = {
    "clients": [10, 25, 50, 100, 200],
    "model": {"kind": "hybrid", "params": None},
    "rss_models": [{"kind": "cnn", "params": 250_000}],
    "rounds": 2,
}
SMOKE = {
    "clients": [3, 6],
    "model": {"kind": "hybrid", "params": None},
    "rss_models": [],
    "rounds": 2,
}
CHILD_TIMEOUT_S = 900.0


def _child(spec: dict) -> dict[str, Any]:
    from bench._standins import SleepingDatasites, cnn_features_for, model_template, run_campaign
    from bench._util import current_rss_bytes, peak_rss_bytes

    window = 30
    if spec["kind"] == "hybrid":
        n_features = 14
    else:
        n_features = cnn_features_for(spec["params"], window)
    template = model_template(spec["kind"], n_features, window)
    params = sum(v.numel() for v in template.values())
    ids = [f"client_{i:03d}" for i in range(spec["clients"])]
    comm = SleepingDatasites(template, ids, train_s=0.0)
    baseline = current_rss_bytes()
    out = run_campaign(
        comm,
        model_type=spec["kind"],
        n_features=n_features,
        window=window,
        ids=ids,
        rounds=spec["rounds"],
        amqp_url=spec["amqp_url"],
        prefix=spec["prefix"],
    )
    return {
        "clients": spec["clients"],
        "kind": spec["kind"],
        "params": params,
        "model_mb": params * 4 / MB,
        "round_s": out["rounds"][-1]["wall_s"],
        "first_round_s": out["rounds"][0]["wall_s"],
        "participants": out["rounds"][-1]["participants"],
        "baseline_rss_mb": baseline / MB,
        "peak_rss_mb": peak_rss_bytes() / MB,
    }


def _spawn(spec: dict) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale", "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    if done.returncode != 0:
        raise RuntimeError(f"scale child {spec['clients']} failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(smoke: bool, bus: str = "rabbitmq") -> dict[str, Any]:
    plan = SMOKE if smoke else FULL
    base = {
        "smoke": smoke,
        "bus": bus,
        "method": "each configuration in a fresh process: EmbeddedFederation with stand-in"
        " clients answering at once with a delta of the model's shape; round time = wall time of"
        " round 2 (completed(2) - completed(1)); peak RSS = ru_maxrss of that process (all four"
        " services, the orchestrator and the stand-ins' deltas); one campaign per point.",
    }
    amqp_url = None
    if bus == "rabbitmq":
        reason = asyncio.run(rabbit_available())
        if reason is not None:
            return {**base, "error": reason, "results": []}
        amqp_url = AMQP_URL
    rows = []
    for n in plan["clients"]:
        spec = {
            **plan["model"],
            "clients": n,
            "rounds": plan["rounds"],
            "amqp_url": amqp_url,
            "prefix": bench_prefix(NAME),
        }
        row = _spawn(spec)
        rows.append(row)
        print(
            f"{n:>4} clients  {row['kind']} {row['params']:>9} params  round"
            f" {row['round_s']:7.2f} s  peak RSS {row['peak_rss_mb']:6.0f} MB",
            flush=True,
        )
    rss_rows = [rows[-1]]
    for model in plan["rss_models"]:
        spec = {
            **model,
            "clients": plan["clients"][-1],
            "rounds": plan["rounds"],
            "amqp_url": amqp_url,
            "prefix": bench_prefix(NAME),
        }
        row = _spawn(spec)
        rss_rows.append(row)
        print(
            f"{row['clients']:>4} clients  {row['kind']} {row['params']:>9} params  round"
            f" {row['round_s']:7.2f} s  peak RSS {row['peak_rss_mb']:6.0f} MB",
            flush=True,
        )
    exponent = loglog_slope([r["clients"] for r in rows], [r["round_s"] for r in rows])
    for r in rss_rows:
        held = r["clients"] * r["model_mb"]
        r["updates_mb"] = held
        r["peak_above_baseline_over_updates"] = (r["peak_rss_mb"] - r["baseline_rss_mb"]) / held
    return {
        **base,
        "results": rows,
        "rss_vs_model": rss_rows,
        "summary": {
            "round_time_exponent": exponent,
            "max_clients": rows[-1]["clients"],
            "round_s_at_max": rows[-1]["round_s"],
            "all_participated": all(r["participants"] == r["clients"] for r in rows),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="3 and 6 clients, seconds")
    parser.add_argument("--bus", choices=["memory", "rabbitmq"], default="rabbitmq")
    parser.add_argument("--out", type=Path, default=None, help="result file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    keep_freed_buffers()  # as every service process does at start
    if args.child is not None:
        print(json.dumps(_child(json.loads(args.child))), flush=True)
        return 0
    data = run(args.smoke, args.bus)
    path = write_result(NAME, data, args.out or result_path(NAME, args.smoke))
    print(f"wrote {path}")
    return 0 if "error" not in data else 2


if __name__ == "__main__":
    sys.exit(main())
