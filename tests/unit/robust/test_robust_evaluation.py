"""The robustness evaluation command runs end to end on a tiny grid and writes its table."""

import json
from pathlib import Path

import pytest
from federation.robust.evaluation import default_data_dir, format_table, robustness_main

FD001 = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "cmapss" / "FD001"


@pytest.mark.skipif(not FD001.exists(), reason=f"C-MAPSS FD001 not found at {FD001}")
def test_when_the_eval_runs_a_tiny_grid__it_writes_rmse_per_cell_and_epsilon_per_dp_row(
    tmp_path, capsys
):
    out = tmp_path / "robustness.json"
    code = robustness_main(
        [
            "--data-dir",
            str(FD001),
            "--sites",
            "3",
            "--rounds",
            "1",
            "--attacks",
            "none,scaling",
            "--defences",
            "fedavg,secure_default",
            "--dp-noise",
            "1.0",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["data"] == str(FD001) and result["byzantine_sites"] == 1
    assert set(result["cells"]) == {"fedavg", "secure_default"}
    assert all(
        result["cells"][d][a]["rmse"] > 0 for d in result["cells"] for a in ("none", "scaling")
    )
    assert [r["noise_multiplier"] for r in result["dp"]["rows"]] == [0.0, 1.0]
    assert result["dp"]["rows"][0]["epsilon"] is None and result["dp"]["rows"][1]["epsilon"] > 0
    assert "| secure_default |" in format_table(result)
    assert default_data_dir() == FD001


def test_when_the_eval_gets_an_unknown_attack__it_exits_2_with_a_message(tmp_path, capsys):
    code = robustness_main(["--attacks", "backdoor", "--out", str(tmp_path / "x.json")])
    assert code == 2 and "unknown attacks" in capsys.readouterr().err
    assert robustness_main(["--dp-noise", "lots"]) == 2
