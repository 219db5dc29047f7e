"""The envelope benchmark runs end to end in its smoke configuration and writes its result."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_when_bench_runs_with_smoke__it_writes_rates_and_ratios(tmp_path):
    out = tmp_path / "envelope.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_envelope", "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["smoke"] is True and doc["machine"]["cpu_count"] >= 1
    for row in doc["results"]:
        for key in (
            "seal_open",
            "ceiling_aesgcm_sha256",
            "pickle_fernet",
            "seal_open_chunked_8MiB",
        ):
            assert row[key]["runs"] >= 5 and row[key]["mb_per_s"] > 0
            assert row[key]["min_s"] <= row[key]["median_s"] <= row[key]["max_s"]
        assert row["ratio_seal_open_vs_ceiling"] > 0
