"""`pdmfed demo --model tcn_rul.model:build`: an own model through the four services and three
real PySyft datasites that approved it, under DP-SGD and an attack, to a bundle that loads it."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from federation.datasite.policy import training_request
from federation.ml.bundle import load_bundle
from federation.ml.own_model import source_digest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import clean_env, run_pdmfed  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(1500)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "tcn_rul"
TCN = "tcn_rul.model:build"
SITES = ("automotive_detroit_main", "chemical_houston_reactor", "aerospace_seattle_assembly")


def test_the_demo_federates_an_own_model_its_factories_approved(tmp_path, monkeypatch):
    pythonpath = os.pathsep.join([str(EXAMPLE), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    run = run_pdmfed(
        "demo", "--model", TCN, "--rounds", "1",
        tmp_path=tmp_path, env=clean_env(PYTHONPATH=pythonpath), timeout=1400,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert f"  campaign  1 rounds, model {TCN}, Byzantine screening + trimmed mean" in lines
    assert any(
        re.fullmatch(
            r"round 1/1 +\d+\.\ds +test RMSE \d+\.\d\d +ε \d\.\d\d +kept 2/3 +"
            r"left out: aerospace_seattle_assembly: byzantine",
            line,
        )  # fmt: skip
        for line in lines
    ), run.stderr
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    log = (run_dir / "pdmfed.log").read_text()
    for ds in SITES:  # each factory's watcher approved the model's job, none left it pending
        assert re.search(rf"{ds} approved \S+ \(pdmfed_train_r1_", log), ds
    assert "left request" not in log
    monkeypatch.syspath_prepend(str(EXAMPLE))
    bundle = load_bundle(run_dir)
    arch = bundle.manifest["architecture"]
    assert arch["model_type"] == TCN and arch["source_sha256"] == source_digest(TCN)
    assert type(bundle.model).__name__ == "TemporalConvNet"
    assert bundle.manifest["privacy"]["record_level"]["delta"] == 1e-5
    assert training_request(model=TCN).digest() != training_request().digest()
    assert run.leftover_processes == [] and run.leftover_tmp == []
