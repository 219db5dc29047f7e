"""`pdmfed demo` as a person sees it: one screen, live progress, quiet logs, a quick Ctrl-C."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from federation.ml.bundle import load_bundle
from federation.privacy.recipe import DEFAULT_EPSILON

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_helpers import run_in_pty, run_pdmfed  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(900)]

RUN = r"runs/\d{8}-\d{6}-[0-9a-f]{4}"
DATASITE = r"  datasite  {name:<26} 127\.0\.0\.1:\d+  {windows} windows"
ROUND_ROW = r" +{n} +\d+\.\d\d +\d\.\d\d +2/3 +aerospace_seattle_assembly: byzantine +\d+\.\ds"


def _header(rounds: int) -> list[str]:
    return [
        rf"pdmfed demo · run folder {RUN} \(logs: pdmfed\.log\)",
        r"  data      synthetic fleet: \d+ training windows, \d+ test engines",
        rf"  campaign  {rounds} rounds, model cnn, Byzantine screening \+ trimmed mean",
        # the private recipe's noise, calibrated to these factories to end at its default ε
        rf"  privacy   record-level DP-SGD z=\d\.\d+, ε budget {DEFAULT_EPSILON:g} per factory",
        r"  services  in this process: connector, trainer-dispatch, security, aggregator",
        r"  attack    aerospace_seattle_assembly \(scaling attack on its updates\)",
        r"  bus       in-memory \(this process only\)",
        DATASITE.format(name="automotive_detroit_main", windows=r"\d+"),
        DATASITE.format(name="chemical_houston_reactor", windows=r"\d+"),
        DATASITE.format(name="aerospace_seattle_assembly", windows=r"\d+"),
    ]


def _table(rounds: int) -> list[str]:
    return [
        rf"demo-\d{{8}}-\d{{6}}-[0-9a-f]{{4}}: all {rounds} rounds completed",
        r" *round +test RMSE +ε +kept +left out: why +time",
        r"─+",
        r" +0 +\d+\.\d\d +off +0/0 +- +-",  # round 0: statistics, the initial model
        *[ROUND_ROW.format(n=n) for n in range(1, rounds + 1)],
    ]


def _assert_lines(lines: list[str], patterns: list[str]) -> None:
    assert len(lines) == len(patterns), "\n".join(lines)
    for line, pattern in zip(lines, patterns, strict=True):
        assert re.fullmatch(pattern, line.rstrip()), (line, pattern)


def test_when_the_demo_runs_in_a_terminal__one_screen_shows_setup_live_rounds_table_and_report(
    tmp_path,
):
    run = run_in_pty("demo", "--rounds", "2", tmp_path=tmp_path, rows=24, cols=80)
    assert run.returncode == 0, "\n".join(run.screen)
    _assert_lines(run.screen, [*_header(2), *_table(2), rf"report: {RUN}/report\.html"])
    text = run.raw.decode("utf-8", "replace")
    # while a round ran, its live line named the factories training, then the screening
    words = " ".join(text.replace("\r", " ").replace("\n", " ").split())
    assert re.search(
        r"round 1/2 +\d+s training: aerospace_seattle_assembly, automotive_detroit_main, "
        r"chemical_houston_reactor",
        words,
    )
    assert re.search(r"round \d/2 +\d+s (training: [a-z_, ]+ · )?received: [a-z_]+", words)
    assert re.search(r"round \d/2 +\d+s screening and aggregating 3 updates", words)
    assert "INFO:" not in text and "Uploading" not in text and "SyftWarning" not in text
    (run_dir,) = (tmp_path / "runs").iterdir()
    log = (run_dir / "pdmfed.log").read_text()
    # PySyft's upload bars and the services' own logs went to the run folder's log
    assert "Uploading" in log and "INFO services.trainer_dispatch.handlers: round 1 of" in log
    assert {"report.html", "summary.json", "model.msgpack", "bundle.json"} <= {
        p.name for p in run_dir.iterdir()
    }
    # the bundle is usable on its own: the demo's model, its features and normalisation
    bundle = load_bundle(run_dir)
    assert bundle.manifest["campaign_id"] == f"demo-{run_dir.name}"
    assert len(bundle.manifest["features"]) == bundle.n_features == 14
    assert bundle.manifest["privacy"]["record_level"]["delta"] == 1e-5
    assert len(bundle.manifest["data_cards"]) == 3
    assert not (run_dir / "INCOMPLETE").exists()
    assert run.leftover_processes == [] and run.leftover_tmp == []


def test_when_the_demo_output_is_not_a_terminal__it_has_one_line_per_round_and_no_escape_codes(
    tmp_path,
):
    run = run_pdmfed("demo", "--rounds", "1", tmp_path=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "" and "\x1b" not in run.stderr
    lines = run.stderr.splitlines()
    round_line = (
        r"round 1/1  \d+\.\ds  test RMSE \d+\.\d\d  ε \d\.\d\d  kept 2/3  "
        r"left out: aerospace_seattle_assembly: byzantine"
    )
    _assert_lines(lines, [*_header(1), round_line, *_table(1), rf"report: {RUN}/report\.html"])
    assert run.leftover_processes == [] and run.leftover_tmp == []


def test_when_ctrl_c_is_typed_during_a_round__the_demo_stops_within_5s_and_marks_the_run_incomplete(
    tmp_path,
):
    run = run_in_pty("demo", "--rounds", "3", tmp_path=tmp_path, interrupt_when=b"training:")
    assert run.returncode == 130
    assert run.stop_seconds is not None and run.stop_seconds < 5.0, run.stop_seconds
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (
        run.screen[-1] == f"pdmfed: interrupted; run folder runs/{run_dir.name} marked incomplete"
    )
    assert "INFO:" not in run.raw.decode("utf-8", "replace")
    assert (run_dir / "INCOMPLETE").read_text().startswith("interrupted")
    assert not (run_dir / "summary.json").exists()
    assert run.leftover_processes == [] and run.leftover_tmp == []
