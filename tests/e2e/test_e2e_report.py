"""The demo's run folder end to end: a real 2-round campaign, then its report page and plots."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

PDMFED = Path(sys.executable).parent / "pdmfed"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One real demo: 3 PySyft factories (one compromised), the 4 services in-process, 2 rounds."""
    from federation.orchestrator.demo import DemoOptions, run_demo

    out = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        # run_demo puts a random datasite admin password into os.environ; keep it to this run
        mp.delenv("PDMFED_DATASITE_ADMIN_PASSWORD", raising=False)
        opts = DemoOptions(rounds=2, out=str(out), model="cnn", json=True, max_batches=4)
        summary = asyncio.run(run_demo(opts))
    (run_dir,) = [p.parent for p in out.glob("*/summary.json")]
    return summary, run_dir


def _pngs(page: str) -> dict[str, bytes]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    return {html.unescape(alt): base64.b64decode(b64) for alt, b64 in found}


def test_when_the_demo_finishes__its_run_folder_holds_the_report_and_the_summary(demo_run):
    summary, run_dir = demo_run
    assert (run_dir / "report.html").stat().st_size > 0
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["campaign_id"] == summary["campaign_id"]
    # round 0: the initial model's held-out RMSE, once the factories' statistics were summed
    assert [r["round_num"] for r in on_disk["rounds"]] == [0, 1, 2]
    # on the synthetic fleet the demo starts from a random model: the federation improves on it
    assert on_disk["rounds"][0]["test_rmse"] > on_disk["rounds"][-1]["test_rmse"]


def test_when_the_report_is_opened__every_plot_is_an_embedded_png_image(demo_run):
    from federation.monitoring.report import EVALUATION_PLOT_TITLES, PLOT_TITLES

    _, run_dir = demo_run
    pngs = _pngs((run_dir / "report.html").read_text())
    assert list(pngs) == [*EVALUATION_PLOT_TITLES, *PLOT_TITLES]
    for title, png in pngs.items():
        assert png.startswith(PNG_MAGIC), title
        width, height = struct.unpack(">II", png[16:24])  # IHDR
        assert width >= 300 and height >= 150, (title, width, height)
    assert len(set(pngs.values())) == len(pngs)  # five different pictures, not one repeated


def test_when_the_report_is_read__it_shows_the_run_s_rmse_epsilon_and_factories(demo_run):
    summary, run_dir = demo_run
    page = (run_dir / "report.html").read_text()
    assert html.escape(summary["campaign_id"]) in page
    for r in summary["rounds"]:
        assert r["test_rmse"] is not None and f"{r['test_rmse']:.2f}" in page
        if r["round_num"] == 0:  # the initial model: nothing trained, nothing spent yet
            assert r["train_rmse"] is None and r["epsilon"] is None
            continue
        assert r["train_rmse"] is not None and f"{r['train_rmse']:.2f}" in page
        assert r["epsilon"] is not None and f"{r['epsilon']:.3f}" in page
        assert all(html.escape(ds) in page for ds in r["participants"])
    compromised = summary["data"]["compromised"]
    assert compromised and compromised in page
    assert any(compromised in r["byzantine"] for r in summary["rounds"])
    assert f"{summary['final']['epsilon']:.3f}" in page
    # the held-out evaluation of the final model, next to its baseline, and ε with δ and scope
    ev = summary["evaluation"]
    assert ev["units"] == 100 and ev["rmse"] == pytest.approx(summary["final"]["rmse"], abs=1e-3)
    for text in (f"{ev['rmse']:.1f}", f"{ev['baseline']['rmse']:.1f}", f"{ev['bias']:+.1f}",
                 f"{ev['late_share']:.0%}", "δ = 1e-05, record-level (one sensor window)"):  # fmt: skip
        assert text in page, text
    # what federation gained: each factory trained alone, on the same held-out units
    sites = summary["config"]["datasites"]  # the campaign names datasite ids only
    assert [a["factory"] for a in ev["alone"]] == sites
    assert len(ev["alone"]) == 3 and "What federation gained" in page
    for alone in ev["alone"]:
        assert f"{alone['factory']} alone" in page and f"{alone['rmse']:.1f}" in page


def test_when_pdmfed_report_renders_the_run_again__it_writes_the_same_page(demo_run):
    _, run_dir = demo_run
    first = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    proc = subprocess.run(
        [str(PDMFED), "report", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == run_dir / "report.html"
    assert (run_dir / "report.html").read_text() == first
