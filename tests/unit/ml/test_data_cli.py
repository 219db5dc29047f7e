"""`pdmfed data partition`: one private partition per factory, arguments checked first."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from federation.cli import main
from federation.data_cli import PARTITION_FILE


class _Result:
    def __init__(self, exit_code: int, stdout: str, stderr: str) -> None:
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


@pytest.fixture
def invoke(capsys):
    def _invoke(*args: str) -> _Result:
        code = main(["data", "partition", *args])
        captured = capsys.readouterr()
        return _Result(code, captured.out, captured.err)

    return _invoke


def test_when_run_through_pdmfed__each_factory_gets_a_disjoint_private_partition(tmp_path):
    out = tmp_path / "data"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "federation.cli",
            "data",
            "partition",
            "--out",
            str(out),
            "--seed",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["factories"]) == ["factory-1", "factory-2", "factory-3"]
    engines = [set(info["engines"]) for info in manifest["factories"].values()]
    assert not (engines[0] & engines[1] or engines[0] & engines[2] or engines[1] & engines[2])
    for name, info in manifest["factories"].items():
        path = out / name / PARTITION_FILE
        with np.load(path, allow_pickle=False) as npz:
            assert npz["X"].shape == (
                info["windows"],
                manifest["window"],
                len(manifest["features"]),
            )
            assert npz["y"].shape == (info["windows"],)
            assert set(np.unique(npz["engine_ids"]).tolist()) == set(info["engines"])
            # each window row's operating settings, with the regime rounding they are named by
            assert npz["settings"].shape == (*npz["X"].shape[:2], 3)
            assert npz["decimals"].tolist() == manifest["regime_decimals"] == [0, 2, 0]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert f"{name}: {info['windows']} windows" in result.stdout


def test_max_windows_keeps_evenly_spaced_windows_of_every_engine(tmp_path, invoke):
    assert invoke("--out", str(tmp_path / "full")).exit_code == 0
    assert invoke("--out", str(tmp_path / "cut"), "--max-windows", "50").exit_code == 0
    full = json.loads((tmp_path / "full" / "manifest.json").read_text())["factories"]
    cut = json.loads((tmp_path / "cut" / "manifest.json").read_text())["factories"]
    for name in full:
        assert cut[name]["windows"] == 50
        assert cut[name]["engines"] == full[name]["engines"]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--sites", "0"], "'--sites': 0 is not in the range x>=1"),
        (["--sites", "2", "--names", "a,b,c"], "--names lists 3 factories but --sites is 2"),
        (["--names", "a,a,b"], "--names repeats a factory"),
        (["--names", "a,b,c d"], "factory name 'c d' is not usable"),
        (["--mode", "zigzag"], "'zigzag' is not one of 'profile', 'engine'"),
        (["--max-windows", "0"], "'--max-windows': 0 is not in the range x>=1"),
        (["--data", "/nonexistent/FD001"], "'/nonexistent/FD001' does not exist"),
        (["--owner", "pdmfed"], "--owner must be UID or UID:GID"),
    ],
)
def test_a_bad_argument_fails_with_one_line_and_writes_nothing(tmp_path, invoke, args, reason):
    result = invoke("--out", str(tmp_path / "data"), *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("pdmfed: ") and reason in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data").exists()


def test_existing_partitions_are_kept_unless_forced(tmp_path, invoke):
    out = tmp_path / "data"
    assert invoke("--out", str(out), "--seed", "1").exit_code == 0
    before = (out / "manifest.json").read_text()
    result = invoke("--out", str(out), "--seed", "2")
    assert result.exit_code == 2 and "--force replaces them" in result.stderr
    assert (out / "manifest.json").read_text() == before
    assert invoke("--out", str(out), "--seed", "2", "--force").exit_code == 0
    assert (out / "manifest.json").read_text() != before


@pytest.mark.parametrize("campaign", ["synthetic.yaml"])
def test_the_shipped_campaign_matches_the_partitions_it_names(tmp_path, invoke, campaign):
    import yaml

    root = Path(__file__).resolve().parents[3]
    assert invoke("--out", str(tmp_path / "data"), "--max-windows", "5").exit_code == 0
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    cfg = yaml.safe_load((root / "deploy" / "campaigns" / campaign).read_text())
    assert cfg["training"]["n_features"] == len(manifest["features"])
    assert cfg["training"]["window"] == manifest["window"]
    assert cfg["datasites"] == list(manifest["factories"])
