"""Renders BENCHMARKS.md from the JSON files in bench/results (no measuring here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "render", "write_report"]

#: benchmark name -> module under bench/ (run order of ``python -m bench``).
BENCHMARKS = {
    "envelope": "bench_envelope",
    "broker": "bench_broker",
    "aggregation": "bench_aggregation",
    "round": "bench_round",
    "scale": "bench_scale",
    "memory": "bench_memory",
    "quality_fd001": "quality_fd001",
    "store": "bench_store",
    "hostile": "bench_hostile",
}

#: Results rendered when present but not run by ``python -m bench`` (long: their commands are in
#: their sections).
EXTRA = (
    "synthetic_task",
    "dpsgd_quality",
    "dpsgd_curve",
    "robustness_5",
    "robustness_10",
    "replicas",
    "fednorm_fd001",
    "round_claim",
    "replicas_claim",
    "replicas_item5",
)

_NOTES = Path(__file__).resolve().parent / "NOTES.md"


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def _f(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _rate(row: dict[str, Any]) -> str:
    lo, hi = row["mb_per_s_min_max"]
    return f"{row['mb_per_s']:,.0f} ({lo:,.0f}–{hi:,.0f})"


def _ms(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    return (
        f"{row['median_s'] * 1e3:,.1f} ({row['min_s'] * 1e3:,.1f}–{row['max_s'] * 1e3:,.1f})"
        f" ×{row['runs']}"
    )


def _missing(title: str, name: str, doc: dict | None) -> list[str] | None:
    if doc is None:
        return [f"## {title}", "", f"Not run yet (`python -m bench --only {name}`).", ""]
    if doc.get("error"):
        return [f"## {title}", "", f"Not measured: {doc['error']}", ""]
    return None


def _envelope(doc: dict | None) -> list[str]:
    out = _missing("1. Envelope: seal + open throughput", "envelope", doc)
    if out:
        return out
    assert doc is not None
    t = doc["targets"]
    lines = [
        "## 1. Envelope: seal + open throughput",
        "",
        "MB/s of one seal+open round trip, median of ≥ 5 runs (min–max). Ceiling = AES-256-GCM"
        " encrypt + decrypt + SHA-256 at both ends of the same bytes. Flower = its own"
        " `ndarrays_to_parameters` + `parameters_to_ndarrays` (no encryption, no authentication).",
        "",
        "| size MB | seal+open | chunked (8 MiB) | ceiling | pickle+Fernet | Flower serde |"
        f" vs ceiling (≥ {t['ratio_vs_ceiling_min']}) | vs pickle+Fernet"
        f" (≥ {t['speedup_vs_pickle_fernet_min']}×) | vs Flower |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        fl = r.get("flower_serde")
        ratio, speed = r["ratio_seal_open_vs_ceiling"], r["speedup_vs_pickle_fernet"]
        lines.append(
            f"| {r['size_mb']:g} | {_rate(r['seal_open'])} | {_rate(r['seal_open_chunked_8MiB'])}"
            f" | {_rate(r['ceiling_aesgcm_sha256'])} | {_rate(r['pickle_fernet'])}"
            f" | {_rate(fl) if fl else '–'}"
            f" | {ratio:.2f} {_met(ratio >= t['ratio_vs_ceiling_min'])}"
            f" | {speed:.1f}× {_met(speed >= t['speedup_vs_pickle_fernet_min'])}"
            f" | {_f(r.get('ratio_seal_open_vs_flower'), 2)} |"
        )
    if doc.get("flower_error"):
        lines += ["", f"Flower not measured: {doc['flower_error']}"]
    elif doc.get("flower_versions"):
        v = doc["flower_versions"]
        lines += ["", f"Flower {v['flwr']} with numpy {v['numpy']} in `bench/.flwr-venv`."]
    return [*lines, ""]


def _broker(doc: dict | None) -> list[str]:
    out = _missing("2. Broker pipeline (RabbitMQ)", "broker", doc)
    if out:
        return out
    assert doc is not None
    target = doc["targets"]["ratio_sealed_vs_raw_min_for_1mb_plus"]
    lines = [
        "## 2. Broker pipeline (RabbitMQ)",
        "",
        "Sealed = SecureEndpoint publish (seal, chunk > 8 MiB, confirmed) → SecureEndpoint"
        " subscribe with every check (decode, signature, AEAD, checksum, replay, typed payload)."
        " Raw = aio-pika confirmed persistent publish of the same bytes → consumer ack. Same"
        " kind of quorum queue; both publish from the bench process and consume in one separate"
        " process (as connector and security do), concurrently; median of 5 runs (min–max).",
        "",
        "CPU ms per update: user + system time of publisher + consumer + RabbitMQ node over the"
        " timed runs. CPU-bound cap = raw's CPU per update / sealed's: the ratio a run would show"
        " if every core were busy (cores busy = CPU seconds per wall second, raw / sealed).",
        "",
        f"| size MB | updates/run | sealed MB/s | sealed updates/s | raw MB/s | raw updates/s |"
        f" sealed / raw (≥ {target} for ≥ 1 MB) | CPU ms/update raw → sealed | cores busy |"
        " CPU-bound cap |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rows"]:
        ok = r["ratio_sealed_vs_raw"] >= target if r["size_mb"] >= 1 else None
        cpu = r.get("cpu_ms_per_update")
        cpu_cells = (
            f" {cpu['raw']['total']:.1f} → {cpu['sealed']['total']:.1f}"
            f" | {cpu['raw']['cores_busy']:.1f} / {cpu['sealed']['cores_busy']:.1f}"
            f" | {r['cpu_bound_ratio']:.2f} |"
            if cpu
            else " – | – | – |"
        )
        lines.append(
            f"| {r['size_mb']:g} | {r['updates_per_run']} | {_rate(r['sealed'])}"
            f" | {r['sealed']['updates_per_s']:,.1f} | {_rate(r['raw'])}"
            f" | {r['raw']['updates_per_s']:,.1f} | {r['ratio_sealed_vs_raw']:.2f} {_met(ok)} |"
            + cpu_cells
        )
    lines += ["", f"Rejected messages during the run: {doc.get('rejected', 0):g}."]
    return [*lines, ""]


def _aggregation(doc: dict | None) -> list[str]:
    out = _missing("3. Aggregation vs Flower", "aggregation", doc)
    if out:
        return out
    assert doc is not None
    t = doc["targets"]
    lines = [
        "## 3. Aggregation vs Flower",
        "",
        "Milliseconds per call, median (min–max) ×runs; one warm-up call first, then at least 5"
        " calls and more (up to 200) until 0.2 s is sampled, fewer when one call is slow (×runs"
        " says how many), the same rule on both sides. Our warm-up call is never a measurement:"
        " it may compile a kernel for a new cohort size (once per machine; the largest such cost"
        f" here: {_first_call(doc)}); Flower's numpy compiles nothing, and its slow first"
        " call is reused as its measurement. Identical inputs on both sides (digest"
        f" compared). Ours with torch threads = {doc.get('torch_threads', '?')}; Flower's numpy"
        " code is single-threaded. Speed-up = Flower time / our time; target ≥"
        f" {t['speedup_vs_flower_min']}×. Trimmed mean / plain mean target ≤"
        f" {t['trimmed_over_mean_max']}×.",
        "",
        "| n | d | rule | ours ms | Flower ms | speed-up | target | same output |",
        "|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for c in doc["cells"]:
        for rule, row in c["ours"].items():
            theirs = (c.get("flower") or {}).get(rule)
            speed = (c.get("speedup_vs_flower") or {}).get(rule)
            agree = (c.get("outputs_agree") or {}).get(rule)
            lines.append(
                f"| {c['n']} | {c['d']:,} | {rule} | {_ms(row)} | {_ms(theirs)}"
                f" | {_f(speed, 2)}{'×' if speed else ''}"
                f" | {_met(None if speed is None else speed >= t['speedup_vs_flower_min'])}"
                f" | {'–' if agree is None else ('yes' if agree else 'no')} |"
            )
    lines += ["", "| n | d | trimmed mean / plain mean | target |", "|---:|---:|---:|---|"]
    for c in doc["cells"]:
        ratio = c["trimmed_over_mean"]
        lines.append(
            f"| {c['n']} | {c['d']:,} | {ratio:.1f}× |"
            f" {_met(ratio <= t['trimmed_over_mean_max'])} |"
        )
    if doc.get("skipped"):
        lines += [
            "",
            "Skipped: "
            + "; ".join(f"n={s['n']}, d={s['d']:,} ({s['reason']})" for s in doc["skipped"])
            + ".",
        ]
    if doc.get("flower_error"):
        lines += ["", f"Flower not measured: {doc['flower_error']}"]
    return [*lines, ""]


def _first_call(doc: dict) -> str:
    """The largest excess of a first (warm-up) call over its cell's median: a kernel compiled."""
    worst = max(
        (
            (row.get("first_call_s", 0.0) - row["median_s"], c["n"], c["d"], rule)
            for c in doc["cells"]
            for rule, row in c["ours"].items()
        ),
        default=None,
    )
    if worst is None or worst[0] <= 0.0:
        return "none recorded"
    return f"{worst[0]:.1f} s more than the median, {worst[3]} at n = {worst[1]}, d = {worst[2]:,}"


def _round(doc: dict | None) -> list[str]:
    out = _missing("4. Round overhead over RabbitMQ", "round", doc)
    if out:
        return out
    assert doc is not None
    target = doc["targets"]["overhead_share_max_10M_10_sites"]
    lines = [
        "## 4. Round overhead over RabbitMQ",
        "",
        "Wall time of a round (consecutive round.completed events) minus the slowest datasite's"
        " own training time; median (min–max) over the counted rounds. Layout: all four services"
        " in one process (the embedded default) or dispatch, security and aggregator as their"
        " own `pdmfed service` processes (as deployed; the target is judged on this one). Bare"
        " broker: the round's bytes moved by plain aio-pika (persistent, confirmed, acked,"
        " quorum queue) at the rate measured right after the campaign — for the bytes this"
        " design moves, and for one hop (every update once, the model once), the least any"
        " design moves; its share is what the broker alone would take of such a round.",
        "",
        "| layout | model | params | sites | rounds | wall s | training s | overhead s |"
        " overhead share | target | bare broker: this design | bare broker: one hop |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    judged = (doc.get("summary") or {}).get("layout_judged")
    for r in doc["results"]:
        w, tr, oh, sh = r["wall_s"], r["training_s"], r["overhead_s"], r["overhead_share"]
        layout = r.get("layout", "one process")
        is_target = r["model"] == "10M" and r["sites"] == 10 and layout == judged
        floor = r.get("broker_floor")
        cells = ["–", "–"]
        if floor:
            cells = [
                f"{floor[k]['mb']:,.0f} MB, {floor[k]['broker_s']:.2f} s ({floor[k]['share']:.0%})"
                for k in ("this_design", "one_hop_minimum")
            ]
        lines.append(
            f"| {layout} | {r['model']} | {r['params']:,} | {r['sites']} | {r['rounds_counted']}"
            f" | {w['median']:.2f} ({w['min']:.2f}–{w['max']:.2f})"
            f" | {tr['median']:.2f} | {oh['median']:.2f} ({oh['min']:.2f}–{oh['max']:.2f})"
            f" | {sh['median']:.0%} | {_met(sh['median'] <= target) if is_target else '–'}"
            f" | {cells[0]} | {cells[1]} |"
        )
    for s in doc.get("skipped", []):
        lines.append(f"\nSkipped {s['model']} × {s['sites']}: {s['reason']}")
    return [*lines, ""]


def _round_claim(doc: dict | None, replicas: dict | None) -> list[str]:
    """Section 4b: updates in line against claim check, each over the one-hop floor."""
    title = "4b. Claim check: round overhead against the one-hop floor"
    if doc is None and replicas is None:
        return [
            f"## {title}",
            "",
            "Not measured yet: `.venv/bin/python -m bench.bench_round --claim`.",
            "",
        ]
    lines = [
        f"## {title}",
        "",
        "The same campaign alternately with every update and model in the messages (in line, as"
        " before) and by claim check (`PDMFED_CLAIM_DIR` with `PDMFED_CLAIM_MODELS`: updates and"
        " the global model sealed once into the claim store, the orchestrator mounting it too;"
        " docs/replicas.md#claim-check), same run. One hop = the bare broker moving every update"
        " once and the model once at the rate measured right after that campaign (by claim check"
        " none of those bytes cross the broker, so it can come in under 1×); the target (issue #20 item 6) is an overhead of at most"
        f" {CLAIM_TARGET}× one hop for 10M × 10, and no worse than in line for the hybrid model."
        " `.venv/bin/python -m bench.bench_round --claim` (SQLite, dispatch/security/aggregator as"
        " processes) and `.venv/bin/python -m bench.bench_replicas --claim` (PostgreSQL, one"
        " process of each service).",
        "",
        "| benchmark | model | sites | updates | rounds | overhead s | one hop s | overhead / one hop | target |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in (doc or {}).get("results", []):
        fl = r["broker_floor"]
        lines.append(_claim_row("bench_round", r, r["rounds_counted"],
                                fl["one_hop_minimum"]["broker_s"], fl["overhead_over_one_hop"]))  # fmt: skip
    for r in (replicas or {}).get("rows", []):
        fl = r["floor"]
        lines.append(_claim_row("bench_replicas", r, r["rounds"], fl["one_hop_s"],
                                fl["overhead_over_one_hop"]))  # fmt: skip
    return [*lines, ""]


def _claim_row(bench: str, r: dict, rounds: int, one_hop_s: float, ratio: float) -> str:
    """One row of the claim-check table; the target is judged on 10M x 10 by claim check."""
    oh = r["overhead_s"]
    mode = "claim check" if r.get("claim_check") else "in line"
    big = r["model"] == "10M" and r["sites"] == 10 and r.get("claim_check")
    return (
        f"| {bench} | {r['model']} | {r['sites']} | {mode} | {rounds}"
        f" | {oh['median']:.2f} ({oh['min']:.2f}–{oh['max']:.2f})"
        f" | {one_hop_s:.2f} | {ratio:.2f} | {_met(ratio <= CLAIM_TARGET) if big else '–'} |"
    )


#: Issue #20 item 6: the claim check's round overhead at most this many times the one-hop floor.
CLAIM_TARGET = 1.5


def _scale(doc: dict | None) -> list[str]:
    out = _missing("5. Scale: 10 → 200 clients", "scale", doc)
    if out:
        return out
    assert doc is not None
    s = doc["summary"]
    lines = [
        "## 5. Scale: 10 → 200 clients",
        "",
        f"Bus: **{doc['bus']}**. Stand-in clients answer at once, so the round time is all"
        " system (dispatch, connector, security screening, aggregation, persistence). One"
        " campaign per point, each in a fresh process.",
        "",
        "| clients | model params | round s | first round s | peak RSS MB |",
        "|---:|---:|---:|---:|---:|",
    ]
    for r in doc["results"]:
        lines.append(
            f"| {r['clients']} | {r['params']:,} | {r['round_s']:.2f}"
            f" | {r['first_round_s']:.2f} | {r['peak_rss_mb']:,.0f} |"
        )
    lines += [
        "",
        f"Fitted exponent (round time ∝ clients^k, log-log least squares):"
        f" **k = {s['round_time_exponent']:.2f}**.",
        "",
        "| clients | model params | model MB | clients × model MB | baseline RSS MB |"
        " peak RSS MB | (peak − baseline) / (clients × model) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["rss_vs_model"]:
        lines.append(
            f"| {r['clients']} | {r['params']:,} | {r['model_mb']:.2f}"
            f" | {r['updates_mb']:,.0f} | {r['baseline_rss_mb']:,.0f}"
            f" | {r['peak_rss_mb']:,.0f} | {r['peak_above_baseline_over_updates']:.2f} |"
        )
    return [*lines, ""]


def _memory(doc: dict | None) -> list[str]:
    out = _missing("6. Memory: consumer receiving a chunked update", "memory", doc)
    if out:
        return out
    assert doc is not None
    target = doc["targets"]["peak_over_update_max"]
    lines = [
        "## 6. Memory: consumer receiving a chunked update",
        "",
        "A fresh consumer process (RabbitBus + SecureEndpoint, every check) receives one update"
        " in 8 MiB sealed chunks. Peak RSS is a high-water mark (one measurement per size).",
        "",
        "| update MB | chunks | baseline RSS MB | peak RSS MB | peak / update |"
        f" target (≤ {target}×) | (peak − baseline) / update | receive s |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    mb = 1024 * 1024
    for r in doc["results"]:
        lines.append(
            f"| {r['size_mb']:g} | {r['chunks']} | {r['baseline_rss_bytes'] / mb:,.0f}"
            f" | {r['peak_rss_bytes'] / mb:,.0f} | {r['peak_over_update']:.2f}×"
            f" | {_met(r['peak_over_update'] <= target)}"
            f" | {r['peak_minus_baseline_over_update']:.2f}× | {r['receive_seconds']:.1f} |"
        )
    return [*lines, ""]


def _quality(doc: dict | None) -> list[str]:
    if doc is None or "summary" not in doc:
        return []
    s = doc["summary"]
    return [
        "## 7. Quality on C-MAPSS FD001 (bench/quality_fd001.py)",
        "",
        f"Centralised test RMSE {s['central_test_rmse']:.2f} (bar ≤ 18: {_met(s['central_bar_met'])});"
        f" federated (3 non-IID factories) {s['federated_profile_test_rmse']:.2f},"
        f" {s['federated_over_central']:.2f}× centralised (bar ≤ 1.15:"
        f" {_met(s['federated_bar_met'])}).",
        "",
    ]


def _store(doc: dict | None) -> list[str]:
    title = "8. State store: SQLite against PostgreSQL, one instance"
    out = _missing(title, "store", doc)
    if out:
        return out
    assert doc is not None
    mb = doc["big_value_bytes"] / 1e6
    lines = [
        f"## {title}",
        "",
        "Handler commit: the transaction a handler makes for one small message (inbox row, read"
        " and write a record, emit a message) plus the publisher's outbox claim and delete; ms per"
        " commit, median (min–max) over interleaved batches. SQLite: WAL, synchronous=FULL;"
        " PostgreSQL: its defaults (fsync, synchronous_commit on), a scratch database.",
        "",
        "| backend | ms per commit | commits/s |",
        "|---|---:|---:|",
    ]
    for name, r in doc["commits"].items():
        m = r["ms_per_commit"]
        lines.append(
            f"| {name} | {m['median']:.2f} ({m['min']:.2f}–{m['max']:.2f}) | {r['commits_per_s']:,.0f} |"
        )
    lines += [
        "",
        f"A {mb:.0f} MB value"
        + (" (one encoded 10M-parameter update)" if mb > 30 else "")
        + " committed and read back, median (min–max) seconds. Both stores keep it in a file of their blob directory; the PostgreSQL"
        " rows are the alternatives measured for keeping it inside the database.",
        "",
        "| where | write + commit s | read s |",
        "|---|---:|---:|",
    ]
    for name, r in doc["big_value"].items():
        w, rd = r["write_commit_s"], r["read_s"]
        lines.append(
            f"| {name} | {w['median']:.3f} ({w['min']:.3f}–{w['max']:.3f})"
            f" | {rd['median']:.3f} ({rd['min']:.3f}–{rd['max']:.3f}) |"
        )
    if doc.get("rounds"):
        lines += [
            "",
            "Rounds: dispatch, security and aggregator as `pdmfed service` processes, one instance"
            " each, state in SQLite files or in PostgreSQL (the same campaign alternately);"
            " overhead = wall − slowest site's training, median (min–max) over the rounds after"
            " the first.",
            "",
            "| model | sites | state | rounds | wall s | overhead s | rounds/min |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in doc["rounds"]:
            o = r["overhead_s"]
            lines.append(
                f"| {r['model']} | {r['sites']} | {r['backend']} | {r['rounds_counted']}"
                f" | {r['wall_s']['median']:.2f} | {o['median']:.2f} ({o['min']:.2f}–{o['max']:.2f})"
                f" | {r['rounds_per_min']:.1f} |"
            )
    elif doc.get("rounds_skipped"):
        lines += ["", f"Rounds not measured: {doc['rounds_skipped']}"]
    return [*lines, ""]


def _replicas(doc: dict | None, item5: dict | None = None) -> list[str]:
    title = "13. Replicas: 1 against 2 processes of every service (bench/bench_replicas.py)"
    if doc is None and item5 is None:
        return [
            f"## {title}",
            "",
            "Not measured yet: `.venv/bin/python -m bench.bench_replicas`.",
            "",
        ]
    lines = [
        f"## {title}",
        "",
        "`.venv/bin/python -m bench.bench_replicas` (2M and 10M × 4; `… --item5`: issue #20"
        " item 5's sizes, 10M × 10 and the hybrid model × 50,"
        + (" below" if item5 else " not measured yet")
        + "): trainer-dispatch, security, aggregator"
        " and the connector (stand-in datasites that sleep, then sign a fixed delta) as 1 or 2"
        " processes each, state in PostgreSQL, the same campaign alternately; 8 MiB messages"
        " (updates chunked). Wall = one round as the orchestrator sees it, overhead = wall −"
        " training sleep, median (min–max) over the rounds after the first.",
        "",
        "| model | sites | replicas | rounds | wall s | overhead s | rounds/min |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [*(doc or {}).get("rows", []), *(item5 or {}).get("rows", [])]
    for r in rows:
        o = r["overhead_s"]
        lines.append(
            f"| {r['model']} | {r['sites']} | {r['replicas']} | {r['rounds']} | {r['wall_s']:.2f}"
            f" | {o['median']:.2f} ({o['min']:.2f}–{o['max']:.2f}) | {r['rounds_per_min']:.1f} |"
        )
    by_model: dict[str, dict[int, float]] = {}
    for r in rows:
        by_model.setdefault(f"{r['model']} × {r['sites']}", {})[r["replicas"]] = r["rounds_per_min"]
    ratios = [f"{m} {v[2] / v[1]:.2f}×" for m, v in by_model.items() if 1 in v and 2 in v]
    machine = (doc or item5 or {}).get("machine", {})
    if ratios:
        lines += [
            "",
            "Rounds/min with 2 replicas against 1, same run: "
            + ", ".join(ratios)
            + f"; measured on"
            f" {machine.get('cpu_count', '?')} cores shared with other jobs, where a second"
            " process of each service adds no CPU: replicas give failover (any one may be killed,"
            " docs/replicas.md), more throughput needs more cores per replica set.",
        ]
    return [*lines, ""]


def _synthetic_task(doc: dict | None) -> list[str]:
    if doc is None or not doc.get("datasets"):
        return []
    lines = [
        "## 9. Does the synthetic fleet generalise like C-MAPSS? (bench/synthetic_task.py)",
        "",
        "Central CNN, RMSE after each epoch on training windows / windows of held-out training"
        " engines / test engines. `.venv/bin/python -m bench.synthetic_task`",
        "",
        "| data | "
        + " | ".join(f"epoch {r['epoch']}" for r in next(iter(doc["datasets"].values()))["history"])
        + " |",
        "|---|" + "---|" * len(next(iter(doc["datasets"].values()))["history"]),
    ]
    for name, d in doc["datasets"].items():
        cells = [
            f"{r['train_rmse']:.1f} / {r['held_out_rmse']:.1f} / {r['test_rmse']:.1f}"
            for r in d["history"]
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _dp_curve(curve: dict | None, quality: dict | None) -> list[str]:
    if curve is None or "fd001" not in curve.get("datasets", {}):
        return []
    runs = curve["datasets"]["fd001"]["runs"]
    ref = None
    if quality and "fd001" in quality.get("datasets", {}):
        ref = quality["datasets"]["fd001"]["runs"]["no_dp"]["test_rmse"]
    lines = [
        "## 10. Private training: accuracy against epsilon (bench/dpsgd_quality.py --curve)",
        "",
        "FD001, 3 non-IID factories, 5 rounds, the private recipe (public pre-training on the"
        " synthetic fleet, DP-SGD with iterate averaging, PLD accounting; see the module"
        " docstring), delta = 1e-5, epsilon per factory (record level)."
        + (
            f" Non-private federation: {ref:.2f}; the goal is within 15 % ({ref * 1.15:.2f})."
            if ref
            else ""
        ),
        " `.venv/bin/python -m bench.dpsgd_quality --datasets fd001 --curve`",
        "",
        "| target epsilon | epsilon spent (max factory) | noise multiplier | test RMSE | vs non-private |",
        "|---|---|---|---|---|",
    ]
    for r in runs.values():
        vs = f"{(r['test_rmse'] / ref - 1) * 100:+.0f} %" if ref else "-"
        lines.append(
            f"| {r['target_epsilon']:g} | {r['max_epsilon']:.2f} | {r['noise_multiplier']:.3f} |"
            f" {r['test_rmse']:.2f} | {vs} |"
        )
    lines += [
        "",
        "`pdmfed demo` trains with this recipe by default at its best point, epsilon = 2 per"
        " factory (`federation.privacy.recipe.DEFAULT_EPSILON`), its noise calibrated to the"
        " demo's own factories and rounds (public pre-training with `--data`; on the embedded"
        " synthetic fleet, the public fleet's own generator, it starts from a random model).",
    ]
    return [*lines, ""]


def _robustness(docs: dict[str, dict | None]) -> list[str]:
    from federation.robust.evaluation import format_table

    present = [(k, d) for k, d in docs.items() if d is not None]
    if not present:
        return []
    lines = [
        "## 11. Robustness at federation size (pdmfed eval robustness)",
        "",
        "FD001, 30 % Byzantine sites, 8 rounds; `secure_default` is a default campaign's defence"
        " (the services' own screening and rule). Goal: within 10 % of clean FedAvg for every attack.",
        "",
    ]
    for name, d in present:
        lines += [
            f"`pdmfed eval robustness --sites {d['n_sites']} --byzantine-fraction 0.3 --defences"
            f" {','.join(d['cells'])} --dp-noise '' --out bench/results/{name}.json`",
            "",
            format_table(d),
            "",
        ]
    return lines


def _fednorm(doc: dict | None) -> list[str]:
    if doc is None or not doc.get("per_seed"):
        return []
    s, plan = doc["summary"], doc["plan"]
    lines = [
        "## 14. Federated against central feature normalisation (bench/fednorm_fd001.py)",
        "",
        f"{doc['dataset']}, {plan['sites']} non-IID factories (profile split), FedAvg of the"
        f" {doc['model'].upper()}, {plan['rounds']} rounds, best validation round evaluated on"
        " the test engines; both arms share seeds, partitions and schedule and differ only in"
        " the z-scoring statistics: central = fitted on every training row before partitioning,"
        " federated = the factories' merged exact sums over the rows of their own raw windows (a campaign's"
        f" round 0). Bar: mean federated test RMSE within {100 * (s['bar'] - 1):.0f} % of"
        f" central: {_met(s['bar_met'])}. `.venv/bin/python -m bench.fednorm_fd001`",
        "",
        "| seed | central test RMSE | federated test RMSE | ratio | round 0 (initial model) |"
        " max mean shift (central σ) | max σ ratio − 1 |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["per_seed"]:
        c, f, g = r["central"], r["federated"], r["stats_gap"]
        lines.append(
            f"| {r['seed']} | {c['test_rmse']:.2f} | {f['test_rmse']:.2f} |"
            f" {f['test_rmse'] / c['test_rmse']:.3f} | {c['round0_test_rmse']:.1f} /"
            f" {f['round0_test_rmse']:.1f} | {g['max_mean_shift_in_central_std']:.3f} |"
            f" {g['max_std_ratio_minus_1']:.3f} |"
        )
    lines.append(
        f"| mean | {s['central_test_rmse_mean']:.2f} | {s['federated_test_rmse_mean']:.2f} |"
        f" **{s['federated_over_central']:.3f}** | | | |"
    )
    ratios = [r["federated"]["test_rmse"] / r["central"]["test_rmse"] for r in doc["per_seed"]]
    sigma = max(r["stats_gap"]["max_std_ratio_minus_1"] for r in doc["per_seed"])
    shift = max(r["stats_gap"]["max_mean_shift_in_central_std"] for r in doc["per_seed"])
    lines += [
        "",
        f"The statistics themselves differ from the central ones by at most {100 * sigma:.1f} % in"
        f" σ and {shift:.3f} σ in mean (the federation never sees the validation engines); the"
        f" per-seed ratios spread from {min(ratios):.3f} to {max(ratios):.3f}: the same small"
        " change of input scale sends training down another path, and with"
        f" {len(ratios)} seeds × {plan['rounds']} rounds that run-to-run spread is wider than the"
        " bar, so this run does not resolve a 2 % difference either way.",
    ]
    return [*lines, ""]


def _kib(n: float) -> str:
    return f"{n / 1024:,.0f} KiB" if n < 1024**2 else f"{n / 1024**2:,.1f} MiB"


def _hostile(doc: dict | None) -> list[str]:
    title = "12. Hostile input at the consumer"
    out = _missing(title, "hostile", doc)
    if out:
        return out
    assert doc is not None
    t = doc["targets"]
    lines = [
        f"## {title}",
        "",
        "Refusing a body an attacker made without any key, against opening a genuine body of the"
        " same size (every check, typed payload). Before = the envelope v1 decoder this project"
        " had, kept in `bench/_envelope_v1.py` for this comparison; after = `Sealer.open` on"
        " envelope v2. Worst of: a msgpack bomb (an array of empty maps), random bytes, a forged"
        " v2 header naming a trusted sender with a wrong (well-shaped) signature, a genuine body"
        " with one ciphertext byte flipped (the one refusal that must run AES-GCM) and, after"
        " only, the genuine body replayed. Time: median ms (×runs) against the lower of two"
        " genuine medians (timed before and after the refusals); memory: tracemalloc peak of one"
        " call, its worst cell may differ from the time's. Reproduce: `.venv/bin/python -m bench"
        " --only hostile`. Target: refusal ≤"
        f" {t['refusal_over_genuine_max']:g}× the genuine open in time and memory.",
        "",
        "| body | genuine open ms | genuine alloc | before: worst refusal ms | before: time × |"
        " before: memory × | after: worst refusal ms | after: time × | after: memory × | target |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["sizes"]:
        g, b, a = r["genuine_open"], r["before"], r["after"]
        bw, aw = b["refusals"][b["worst_time"]], a["refusals"][a["worst_time"]]
        lines.append(
            f"| {_kib(r['body_bytes'])} | {g['median_s'] * 1e3:,.2f} | {_kib(g['peak_alloc_bytes'])}"
            f" | {bw['median_s'] * 1e3:,.1f} ({b['worst_time']}, ×{bw['runs']})"
            f" | {b['time_ratio']:,.0f}× | {b['memory_ratio']:,.0f}×"
            f" | {aw['median_s'] * 1e3:,.3f} ({a['worst_time']})"
            f" | {a['time_ratio']:.2f}× | {a['memory_ratio']:.2f}× | {_met(a['target_met'])} |"
        )
    re = doc.get("reassembly")
    if re:
        lines += [
            "",
            f"Chunk reassembly under one sender's claims (a stolen key): then another sender's"
            f" genuine {_kib(re['honest_update_bytes'])} update in {_kib(re['chunk_bytes'])}"
            f" chunks. Before = the assembler this project had (`bench/_chunking_v1.py`); after"
            f" = per-sender budgets, with and without the campaign's update cap. Timeout set to"
            f" {re['timeout_s']:g} s; then no traffic for 3× that.",
            "",
            "| attack | assembler | attack bytes sent | bytes booked | other sender's update |"
            " pending after the attack | pending after 3× timeout, no traffic |",
            "|---|---|---:|---:|---|---:|---:|",
        ]
        for r in re["rows"]:
            got = "delivered" if r["honest_delivered"] else "**refused**"
            lines.append(
                f"| {r['attack']} | {r['side']} | {r['attack_bytes_on_wire']:,}"
                f" | {r['booked_bytes_after_attack']:,} | {got} | {r['pending_after_attack']}"
                f" | {r['pending_after_3x_timeout_no_traffic']} |"
            )
    st = doc.get("stall")
    if st:
        bodies = ", ".join(f"{n} × {k}" for k, n in st["hostile_bodies"].items())
        lines += [
            "",
            f"The event loop (real RabbitMQ): {bodies} queued ahead of one genuine 64 KiB"
            " update, then a SecureEndpoint subscribes; latency = subscribe to handler; stall ="
            " longest gap of a 1 ms timer (wall clock, so it includes time other processes had"
            " the shared cores: see the load); longest callback = CPU time of the loop's longest"
            " callback (what the consumer itself blocked the loop for). Target: no stall >"
            f" {t['stall_max_s'] * 1e3:.0f} ms, judged on the longest callback.",
            "",
            "| consumer | genuine latency ms | longest stall ms (wall) | longest callback ms CPU"
            " | in | load (1 min) | hostile refused | target |",
            "|---|---:|---:|---:|---|---:|---:|---|",
        ]
        for name in ("quiet", "before", "after"):
            r = st[name]
            ok = _met(r.get("target_met")) if name == "after" else "–"
            cpu = r.get("max_callback_cpu_s")
            lines.append(
                f"| {name} | {r['genuine_latency_s'] * 1e3:,.1f} | {r['max_stall_s'] * 1e3:,.1f}"
                f" | {'–' if cpu is None else f'{cpu * 1e3:,.1f}'}"
                f" | {('`' + r['longest_callback'] + '`') if r.get('longest_callback') else '–'}"
                f" | {r.get('load_avg_1m', float('nan')):.1f} | {r['rejected']:g} | {ok} |"
            )
    elif doc.get("stall_error"):
        lines += ["", f"Event loop not measured: {doc['stall_error']}"]
    return [*lines, ""]


def render(results: Path, *, smoke: bool = False) -> str:
    """The whole report as Markdown from the JSON files in ``results``."""
    docs = {name: _load(results, name) for name in BENCHMARKS}
    extra = {name: _load(results, name) for name in EXTRA}
    machine = next((d["machine"] for d in docs.values() if d and "machine" in d), {})
    when = sorted(d["machine"].get("when", "") for d in docs.values() if d and "machine" in d)
    lines = [
        "# Benchmarks" + (" (smoke configuration: NOT representative)" if smoke else ""),
        "",
        "Generated by `python -m bench` from `bench/results/*.json`; do not edit by hand"
        " (notes: `bench/NOTES.md`).",
        "",
        "Reproduce: `make bench` (= `.venv/bin/python -m bench`); one benchmark:"
        " `.venv/bin/python -m bench --only broker`; smoke configuration (seconds, used by"
        " `make test`): `.venv/bin/python -m bench --smoke`. RabbitMQ at"
        " `amqp://guest:guest@127.0.0.1:5672/`; Flower is installed on demand into"
        " `bench/.flwr-venv`.",
        "",
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cpu_count', '?')} cores,"
        f" {machine.get('memory_gb', '?')} GiB RAM, Python {machine.get('python', '?')},"
        f" {machine.get('platform', '?')}; shared with other jobs (figures are side-by-side"
        " ratios for that reason)." + (f" Measured {when[0]} – {when[-1]}." if when else ""),
        "",
    ]
    lines += _envelope(docs["envelope"])
    lines += _broker(docs["broker"])
    lines += _aggregation(docs["aggregation"])
    lines += _round(docs["round"])
    lines += _round_claim(extra["round_claim"], extra["replicas_claim"])
    lines += _scale(docs["scale"])
    lines += _memory(docs["memory"])
    lines += _quality(docs["quality_fd001"])
    lines += _store(docs["store"])
    lines += _synthetic_task(extra["synthetic_task"])
    lines += _dp_curve(extra["dpsgd_curve"], extra["dpsgd_quality"])
    lines += _robustness({k: extra[k] for k in ("robustness_5", "robustness_10")})
    lines += _hostile(docs["hostile"])
    lines += _replicas(extra["replicas"], extra["replicas_item5"])
    lines += _fednorm(extra["fednorm_fd001"])
    if _NOTES.is_file() and not smoke:
        lines += [_NOTES.read_text(encoding="utf-8").rstrip(), ""]
    return "\n".join(lines)


def write_report(results: Path, path: Path, *, smoke: bool = False) -> Path:
    """Render and write the report; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, smoke=smoke), encoding="utf-8")
    return path
