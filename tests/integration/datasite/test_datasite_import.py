"""A factory's own CSV (real FD001 rows) through `pdmfed data import` into a real datasite process."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasite_helpers import ORCH_EMAIL
from federation.communication import PySyftCommunicationManager
from federation.datasite import verify_factory_result
from federation.datasite.job import feature_columns
from federation.datasite.launcher import free_port
from federation.ml.data import Partition
from federation.ml.fedstats import SensorStats, window_stats
from federation.ml.models import build_model

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PROJECT_ROOT = Path(__file__).resolve().parents[3]
FD001 = PROJECT_ROOT.parent / "shared" / "data" / "cmapss" / "FD001"
COLUMNS = ["unit", "cycle", "setting_1", "setting_2", "setting_3", *[f"s{i}" for i in range(1, 22)]]


def _fd001_csv(path: Path, units: int) -> Path:
    """The first `units` engines of train_FD001.txt as a CSV with a header, as a plant exports it."""
    lines = [",".join(COLUMNS)]
    for line in (FD001 / "train_FD001.txt").read_text().splitlines():
        fields = line.split()
        if fields and int(fields[0]) <= units:
            lines.append(",".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return path


def _csv_schema(path: Path) -> Path:
    """The shipped C-MAPSS schema, reading a CSV with a header instead of the NASA text file."""
    schema = yaml.safe_load((PROJECT_ROOT / "examples" / "cmapss.schema.yaml").read_text())
    schema["read"] = {"separator": ",", "header": True}
    path.write_text(yaml.safe_dump(schema))
    return path


def test_when_a_factory_imports_its_csv__a_datasite_serves_it_and_trains_on_it(tmp_path):
    if not (FD001 / "train_FD001.txt").is_file():
        pytest.skip(f"real C-MAPSS FD001 data not found at {FD001}")
    csv = _fd001_csv(tmp_path / "plant.csv", units=12)
    site = tmp_path / "site"
    imported = subprocess.run(
        [sys.executable, "-m", "federation.cli", "data", "import", "--data", str(csv),
         "--schema", str(_csv_schema(tmp_path / "schema.yaml")), "--out", str(site)],
        capture_output=True, text=True, timeout=120, check=False, cwd=PROJECT_ROOT,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    card = json.loads((site / "datacard.json").read_text())
    assert card["units"] == 12 and card["source"]["file"] == "plant.csv"

    ds, orch_pw = "plant_toulouse_line2", secrets.token_urlsafe(16)
    env = dict(
        os.environ,
        PDMFED_DATASITE_ADMIN_PASSWORD=secrets.token_urlsafe(16),
        PDMFED_DATASITE_ORCHESTRATOR_PASSWORD=orch_pw,
    )
    cmd = [sys.executable, "-m", "federation.cli", "datasite", "launch", "--name", ds,
           "--port", str(free_port()), "--data", str(site / "partition.npz"),
           "--keys-dir", str(tmp_path / "keys"), "--orchestrator-email", ORCH_EMAIL]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=PROJECT_ROOT)
    comm = PySyftCommunicationManager()
    try:
        info = next((json.loads(line) for line in proc.stdout if line.startswith("{")), None)
        assert info is not None, "the datasite never announced itself"
        creds = {"email": ORCH_EMAIL, "password": orch_pw, "datasite_id": ds}
        assert comm.connect_to_datasite(info["url"], creds)
        caps = comm.get_connected_datasites()[ds]["capabilities"]
        assert caps["num_samples"] == card["windows"]
        assert caps["n_features"] == len(card["features"]) and caps["regime_decimals"] == [0, 2, 0]
        # round 0 over the imported partition: per operating regime (FD001 runs in one)
        answer = comm.request_stats({"campaign_id": "import-it"}, ds)
        assert "error" not in answer, answer.get("error")
        stats = SensorStats.from_dict(answer["stats"])
        part = Partition.load(site / "partition.npz")
        columns = feature_columns(len(card["features"]))
        assert stats == window_stats(part.X, columns, part.settings, part.decimals)
        assert list(stats.regimes) == [(0.0, 0.0, 100.0)] and stats.decimals == [0, 2, 0]
        torch.manual_seed(0)
        model = build_model("cnn", len(card["features"]), card["window"])
        assert comm.send_model({k: v.detach().clone() for k, v in model.state_dict().items()}, ds)
        result = comm.request_training(
            {"epochs": 1, "round_number": 1, "max_batches": 2, "model_type": "cnn",
             "normalizer": stats.normalizer().to_dict()}, ds
        )  # fmt: skip
        assert "error" not in result, result.get("error")
        assert verify_factory_result(result, bytes.fromhex(info["public_key"]))
        assert result["num_samples"] == card["windows"] and result["rmse"] > 0
    finally:
        comm.cleanup_all_connections()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
