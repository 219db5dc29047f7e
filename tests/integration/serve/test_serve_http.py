"""`pdmfed serve` as a user runs it: the real CLI in a subprocess on a free port, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from federation.data_cli import write_import
from federation.datasite.launcher import free_port
from federation.ml.bundle import load_bundle
from federation.ml.models import build_model
from federation.ml.predict import predict_units
from federation.ml.tabular import load_schema
from federation.orchestrator.summary import write_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CONFIG = {
    "training": {"model_type": "cnn", "n_features": 2, "window": 3},
    "record_privacy": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    "privacy": {"enabled": False, "delta": 1e-5},
}


def _rows(units: dict[str, int], bad: dict | None = None) -> list[dict]:
    rows = []
    for u, n in units.items():
        for c in range(1, n + 1):
            row = {
                "engine": u,
                "cycle": c,
                "load": 1,
                "temp": 500.0 + c * 0.5 + len(u),
                "vib": 0.1 * c,
            }
            row.update((bad or {}).get((u, c), {}))
            rows.append(row)
    return rows


def _csv(rows: list[dict]) -> str:
    cols = ["engine", "cycle", "load", "temp", "vib"]
    return "\n".join([",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]) + "\n"


def _bundle(tmp: Path, *, normalised: bool = True) -> Path:
    schema = tmp / "plant.yaml"
    schema.write_text(
        "unit: engine\ncycle: cycle\nsettings: {load: 0}\nsensors: [temp, vib]\nwindow: 3\n"
    )
    train = tmp / "train.csv"
    train.write_text(_csv(_rows({"A": 9, "B": 8})))
    card = write_import(tmp / "site", data=train, schema=schema)
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in build_model("cnn", 2, 3).state_dict().items()}
    summary = {"campaign_id": "plant-2026", "config": CONFIG, "rounds": [],
               "final": {"rmse": None, "epsilon": None, "rounds": 1, "reason": "max_rounds"}}  # fmt: skip
    extra = {"normalizer": card["normalizer"]} if normalised else {}
    write_run(tmp / "run", summary, state, bundle={
        "features": card["features"], "rul_cap": 125.0, "data_cards": [card],
        "schema": load_schema(schema).to_dict(), **extra,
    })  # fmt: skip
    return tmp / "run"


def _serve(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "federation.cli", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run = _bundle(tmp_path_factory.mktemp("serve"))
    port = free_port()
    proc = _serve("--bundle", str(run), "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "pdmfed serve did not answer /healthz in 120 s"
            time.sleep(0.3)
        yield url, run
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _post(url: str, body: str | bytes, content_type: str) -> requests.Response:
    return requests.post(
        f"{url}/predict", data=body, headers={"Content-Type": content_type}, timeout=60
    )


def test_healthz_names_the_bundles_campaign(server):
    url, _ = server
    assert requests.get(f"{url}/healthz", timeout=5).json() == {
        "status": "ok",
        "campaign_id": "plant-2026",
    }


def test_a_posted_csv_gets_the_rul_of_each_unit_as_pdmfed_predict_computes_it(server, tmp_path):
    url, run = server
    rows = _rows({"E1": 6, "E2": 4})
    answer = _post(url, _csv(rows), "text/csv")
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    (tmp_path / "engines.csv").write_text(_csv(rows))
    expected = predict_units(load_bundle(run), tmp_path / "engines.csv")
    assert doc["units"] == expected and [u["unit"] for u in doc["units"]] == ["E1", "E2"]
    assert (
        doc["campaign_id"] == "plant-2026"
        and doc["rul_unit"] == "cycles"
        and doc["rul_cap"] == 125.0
    )
    assert [u["last_cycle"] for u in doc["units"]] == [6, 4]
    as_json = _post(url, json.dumps({"rows": rows}), "application/json")
    assert as_json.status_code == 200, as_json.text
    assert as_json.json()["units"] == expected


@pytest.mark.parametrize(
    ("body", "content_type", "located"),
    [
        (_csv(_rows({"E1": 5}, {("E1", 4): {"vib": "x"}})), "text/csv",
         {"error": "body, row 4, unit E1, column 'vib': 'x' is not a number", "row": 4, "unit": "E1",
          "column": "vib"}),
        (json.dumps(_rows({"E1": 5}, {("E1", 2): {"temp": None}})), "application/json",
         {"error": "body, row 2, unit E1, column 'temp': empty/NaN value (1 in a row from here, 1 in the column)", "row": 2, "unit": "E1",
          "column": "temp"}),
        (_csv(_rows({"E1": 5, "E2": 2})), "text/csv", {"unit": "E2"}),
        (json.dumps([{k: v for k, v in r.items() if k != "vib"} for r in _rows({"E1": 4})]),
         "application/json", {}),
        ("engine;cycle\n", "application/xml", {}),
        ("{not json", "application/json", {}),
    ],
    ids=["non-numeric", "null", "short-unit", "missing-column", "content-type", "not-json"],
)  # fmt: skip
def test_bad_input_is_a_422_with_the_located_error(server, body, content_type, located):
    url, _ = server
    answer = _post(url, body, content_type)
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    for key, value in located.items():
        assert detail[key] == value
    assert detail["error"]
    assert "/tmp" not in detail["error"] and "pdmfed-serve" not in detail["error"]


def test_metrics_count_requests_by_outcome_and_the_units_predicted(server):
    url, _ = server
    before = _samples(url)
    assert _post(url, _csv(_rows({"Z": 3})), "text/csv").status_code == 200
    assert _post(url, "engine\n", "text/csv").status_code == 422
    after = _samples(url)
    assert (
        after['pdmfed_serve_requests_total{outcome="ok"}']
        == before['pdmfed_serve_requests_total{outcome="ok"}'] + 1
    )
    assert (
        after['pdmfed_serve_requests_total{outcome="invalid"}']
        == before['pdmfed_serve_requests_total{outcome="invalid"}'] + 1
    )
    assert (
        after["pdmfed_serve_units_predicted_total"]
        == before["pdmfed_serve_units_predicted_total"] + 1
    )
    assert after["pdmfed_serve_request_seconds_count"] >= 1


def _samples(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("pdmfed_serve") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_bundle_without_normalisation_statistics_is_refused_at_start_in_one_line(tmp_path):
    run = _bundle(tmp_path, normalised=False)
    proc = _serve("--bundle", str(run), "--port", str(free_port()))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert err.startswith("pdmfed: ") and "no normalisation statistics" in err
    assert len(err.strip().splitlines()) == 1
