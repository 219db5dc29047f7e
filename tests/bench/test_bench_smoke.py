"""Each benchmark in its --smoke configuration: it runs, and its JSON has the expected figures.

Benchmarks are not timed tests: nothing here asserts a speed, only that every figure exists,
is positive and is consistent with the others (so the benchmarks cannot rot).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

# No conftest.py here: a second module named ``conftest`` would shadow the one that
# tests/unit/services imports by name. ``bench`` is a top-level folder, not an installed package.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def rabbitmq() -> str:
    """The broker URL, or a skip naming the missing broker."""
    from bench._util import AMQP_URL, rabbit_available

    reason = asyncio.run(rabbit_available(AMQP_URL))
    if reason is not None:
        pytest.skip(reason)
    return AMQP_URL


def _positive(value) -> bool:
    return isinstance(value, int | float) and value > 0


def _run(module: str, tmp_path, *extra: str) -> dict:
    out = tmp_path / f"{module}.json"
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--smoke", "--out", str(out), *extra],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True
    assert {"benchmark", "machine", "method"} <= set(doc)
    return doc


def test_when_envelope_runs_in_smoke__every_size_has_positive_rates_and_ratios(tmp_path):
    doc = _run("bench_envelope", tmp_path)
    assert [r["size_mb"] for r in doc["results"]] == [0.25, 1.0]
    for row in doc["results"]:
        for key in (
            "seal_open",
            "seal_open_chunked_8MiB",
            "ceiling_aesgcm_sha256",
            "pickle_fernet",
        ):
            assert _positive(row[key]["mb_per_s"]) and row[key]["runs"] >= 5
            assert row[key]["min_s"] <= row[key]["median_s"] <= row[key]["max_s"]
        assert _positive(row["ratio_seal_open_vs_ceiling"])
        assert _positive(row["speedup_vs_pickle_fernet"])
    # Flower is either measured or its absence is explained, never silently missing
    assert doc["flower_error"] or all(
        _positive(r["ratio_seal_open_vs_flower"]) for r in doc["results"]
    )


def test_when_aggregation_runs_in_smoke__every_rule_is_timed_on_identical_inputs(tmp_path):
    doc = _run("bench_aggregation", tmp_path)
    (cell,) = doc["cells"]
    assert set(cell["ours"]) == {
        "fedavg",
        "trimmed_mean",
        "median",
        "multi_krum",
        "centered_clipping",
    }
    assert all(_positive(r["median_s"]) for r in cell["ours"].values())
    assert _positive(cell["trimmed_over_mean"])
    if doc["flower_error"] is None:
        assert cell["inputs_identical"] is True
        assert all(cell["outputs_agree"].values())
        assert all(_positive(v) for v in cell["speedup_vs_flower"].values())


@pytest.mark.integration
def test_when_broker_runs_in_smoke__sealed_and_raw_rates_are_measured(tmp_path, rabbitmq):
    doc = _run("bench_broker", tmp_path)
    (row,) = doc["rows"]
    for path in ("sealed", "raw"):
        assert _positive(row[path]["mb_per_s"]) and _positive(row[path]["updates_per_s"])
        assert row[path]["runs"] == 5
    assert _positive(row["ratio_sealed_vs_raw"])
    assert doc["rejected"] == 0
    if "cpu_ms_per_update" in row:  # RabbitMQ runs on this machine: its CPU is counted too
        for path in ("sealed", "raw"):
            cpu = row["cpu_ms_per_update"][path]
            assert _positive(cpu["total"]) and cpu["cores_busy"] >= 0
            assert cpu["total"] == pytest.approx(
                sum(cpu[r] for r in ("publisher", "consumer", "broker"))
            )
        assert _positive(row["cpu_bound_ratio"])


def _check_round_row(row: dict) -> None:
    assert row["rounds_counted"] == row["rounds"] - 1
    for r in row["per_round"]:
        assert r["participants"] == row["sites"]
        assert _positive(r["wall_s"]) and r["wall_s"] >= r["training_s"] > 0
    assert 0 < row["overhead_share"]["median"] < 1
    assert "broker_floor" in row


@pytest.mark.integration
def test_when_round_runs_in_smoke__overhead_is_wall_minus_training(tmp_path, rabbitmq):
    doc = _run("bench_round", tmp_path)
    rows = {r["layout"]: r for r in doc["results"]}
    assert set(rows) == {"one process", "service processes"}
    for row in rows.values():
        _check_round_row(row)
    row = rows["one process"]
    # every counted round moved at least each site's update and the model through the services
    model_bytes = row["params"] * 4
    for r in row["per_round"][1:]:
        assert r["service_bytes_in"] >= (row["sites"] + 1) * model_bytes
    floor = row["broker_floor"]
    assert _positive(floor["raw_broker"]["bytes_per_s"])
    assert floor["this_design"]["mb"] >= floor["one_hop_minimum"]["mb"] > 0
    assert 0 < floor["one_hop_minimum"]["share"] <= floor["this_design"]["share"] < 1


@pytest.mark.integration
def test_when_scale_runs_in_smoke__round_times_and_exponent_are_reported(tmp_path, rabbitmq):
    doc = _run("bench_scale", tmp_path)
    assert [r["clients"] for r in doc["results"]] == [3, 6]
    for r in doc["results"]:
        assert r["participants"] == r["clients"]
        assert _positive(r["round_s"]) and r["peak_rss_mb"] >= r["baseline_rss_mb"] > 0
    assert isinstance(doc["summary"]["round_time_exponent"], float)


@pytest.mark.integration
def test_when_memory_runs_in_smoke__consumer_peak_rss_covers_the_update(tmp_path, rabbitmq):
    doc = _run("bench_memory", tmp_path)
    (row,) = doc["results"]
    assert row["received_bytes"] == row["update_bytes"] == 16 * 1024 * 1024
    assert row["chunks"] >= 2  # 16 MiB is over the 8 MiB message limit
    assert row["peak_rss_bytes"] >= row["baseline_rss_bytes"] > 0
    assert _positive(row["peak_over_update"])


def test_when_the_runner_runs_two_benchmarks__it_writes_their_json_and_the_report(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--only",
            "envelope,aggregation",
            "--results-dir",
            str(tmp_path),
            "--report",
            str(report),
        ],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "envelope.json").is_file() and (tmp_path / "aggregation.json").is_file()
    text = report.read_text()
    assert "## 1. Envelope" in text and "## 3. Aggregation vs Flower" in text
    assert "Not run yet (`python -m bench --only broker`)" in text


def test_when_the_runner_is_asked_for_an_unknown_benchmark__it_refuses():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "nope"],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "unknown benchmark" in done.stderr


def test_when_round_time_grows_as_a_power_of_clients__the_fit_recovers_the_exponent():
    from bench._util import loglog_slope

    xs = [10, 25, 50, 100, 200]
    assert loglog_slope(xs, [0.3 * x**1.5 for x in xs]) == pytest.approx(1.5)
    assert loglog_slope(xs, [7.0 for _ in xs]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        loglog_slope([10], [1.0])


def test_when_the_first_call_is_slow__it_is_reported_apart_and_never_the_measurement():
    """A first call that compiles a kernel (numba) must not become a cell's only figure."""
    import time

    from bench._util import timed_adaptive

    calls = []

    def compiles_then_fast() -> int:
        calls.append(1)
        time.sleep(0.3 if len(calls) == 1 else 0.001)
        return len(calls)

    row, last = timed_adaptive(compiles_then_fast, runs=5, budget_s=0.1)
    assert row["first_call_s"] >= 0.3
    assert row["median_s"] < 0.1 and row["max_s"] < 0.3
    assert row["runs"] >= 5 and last == len(calls)

    slow, _ = timed_adaptive(lambda: time.sleep(0.05), runs=5, budget_s=0.01)
    assert slow["runs"] == 1 and slow["median_s"] >= 0.05 and slow["first_call_s"] >= 0.05


def test_when_the_round_timeline_runs_in_smoke__every_stage_of_the_last_round_is_spanned(
    tmp_path, rabbitmq
):
    out = tmp_path / "timeline.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.round_timeline", "--smoke", "--out", str(out)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    doc = json.loads(out.read_text())
    spans = {(s["service"], s["step"], s["msg_type"]): s for s in doc["spans"]}
    sites = doc["spec"]["sites"]
    assert spans[("connector", "publish", "update.raw")]["count"] == sites
    assert spans[("security", "handle", "update.raw")]["count"] == sites
    assert spans[("aggregator", "handle", "update.screened")]["count"] == sites
    assert spans[("aggregator", "publish", "round.completed")]["count"] == 1
    for s in doc["spans"]:
        assert 0 <= s["first_start_s"] <= s["last_end_s"] and s["busy_s"] >= 0
    assert (
        spans[("connector", "publish", "update.raw")]["first_start_s"]
        <= spans[("aggregator", "publish", "round.completed")]["first_start_s"]
    )


def test_when_the_store_bench_runs_in_smoke__both_backends_commit_store_big_values_and_run_rounds(
    tmp_path, rabbitmq
):
    import psycopg

    from bench.bench_store import POSTGRES_URL

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    doc = _run("bench_store", tmp_path)
    assert set(doc["commits"]) == {"sqlite", "postgresql"}
    for row in doc["commits"].values():
        m = row["ms_per_commit"]
        assert _positive(row["commits_per_s"]) and m["min"] <= m["median"] <= m["max"]
    assert set(doc["big_value"]) == {
        "sqlite (blob file)",
        "postgresql (blob file)",
        "postgresql large object",
        "postgresql bytea",
    }
    for row in doc["big_value"].values():
        assert _positive(row["write_commit_s"]["median"]) and _positive(row["read_s"]["median"])
    assert [r["backend"] for r in doc["rounds"]] == ["sqlite", "postgresql"]
    for r in doc["rounds"]:  # every round complete, with every site
        assert r["participants"] == [r["sites"]] * r["rounds"] and _positive(r["rounds_per_min"])
    assert all(_positive(v) for v in doc["summary"].values())


def test_when_hostile_runs_in_smoke__every_hostile_body_is_refused_typed_and_figures_exist(
    tmp_path, rabbitmq
):
    doc = _run("bench_hostile", tmp_path)
    assert len(doc["sizes"]) == 2
    for row in doc["sizes"]:
        assert _positive(row["genuine_open"]["median_s"]) and row["body_bytes"] > 0
        assert set(row["before"]["refusals"]) == {"bomb_v1", "random"}
        after = row["after"]["refusals"]
        assert set(after) == {"bomb_v1", "random", "forged_v2", "tampered_v2", "replayed_v2"}
        assert after["tampered_v2"]["refused_as"] == "integrity"  # reached AES-GCM
        assert after["replayed_v2"]["refused_as"] == "replay"
        for side in ("before", "after"):
            cells = row[side]["refusals"].values()
            assert all(
                c["refused_as"] in ("malformed", "auth", "integrity", "replay") for c in cells
            )
            assert _positive(row[side]["time_ratio"]) and _positive(row[side]["memory_ratio"])
    rows = doc["reassembly"]["rows"]
    assert {(r["attack"], r["side"]) for r in rows} == {
        (a, s)
        for a in ("one 2 GiB claim", "16 tiny claims")
        for s in ("before", "after", "after, campaign cap")
    }
    for name in ("quiet", "before", "after"):
        stall = doc["stall"][name]
        assert _positive(stall["genuine_latency_s"]) and stall["max_stall_s"] >= 0
        assert 0 < stall["max_callback_cpu_s"] and stall["longest_callback"]
    assert doc["stall"]["after"]["rejected"] == doc["stall"]["before"]["rejected"] == 3


def test_when_replicas_runs_in_smoke__one_and_two_replicas_complete_every_round(tmp_path, rabbitmq):
    import psycopg

    from bench.bench_replicas import POSTGRES_URL

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}")
    doc = _run("bench_replicas", tmp_path)
    assert [r["replicas"] for r in doc["rows"]] == [1, 2]
    for r in doc["rows"]:
        o = r["overhead_s"]
        assert (
            r["rounds"] == 2
            and _positive(r["rounds_per_min"])
            and o["min"] <= o["median"] <= o["max"]
        )
