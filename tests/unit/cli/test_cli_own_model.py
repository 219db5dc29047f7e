"""The command line of own models: the job hash a factory approves, and refusals in one line."""

from __future__ import annotations

from pathlib import Path

from federation.cli import main
from federation.datasite.policy import approved_job_hashes, training_request

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tcn_rul"


def test_job_hash_prints_the_request_hash_an_allow_list_approves(capsys, monkeypatch):
    assert main(["datasite", "job-hash"]) == 0
    assert capsys.readouterr().out.strip() in approved_job_hashes()
    monkeypatch.syspath_prepend(str(EXAMPLE))
    assert main(["datasite", "job-hash", "--model", "tcn_rul.model:build"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == training_request(model="tcn_rul.model:build").digest()
    assert printed in approved_job_hashes(["tcn_rul.model:build"]) - approved_job_hashes()


def test_a_model_that_is_not_installed_is_refused_in_one_line(capsys, tmp_path):
    assert main(["datasite", "job-hash", "--model", "absent_pkg.model:build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pdmfed: model 'absent_pkg.model:build': its package is not installed")
    assert len(err.strip().splitlines()) == 1
    out = tmp_path / "runs"
    assert main(["demo", "--model", "absent_pkg.model:build", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pdmfed: campaign refused: model 'absent_pkg.model:build'")
    assert not out.exists()  # refused before anything started
