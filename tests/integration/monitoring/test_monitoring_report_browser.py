"""report.html in a real browser (headless Chromium): drawn, every section holds the run's numbers, fits 1280 px."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from federation.monitoring import render_report

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "monitoring"))
from test_monitoring_report import _evaluated  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

WIDTH = 1280
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.skip(
            "Debian package chromium is not installed (scripts/install-tools.sh installs it)"
        )
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={cwd / 'profile'}", f"--window-size={WIDTH},2400", *args],
        capture_output=True, text=True, timeout=120, check=True, cwd=cwd,
    )  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    # the demo's long datasite ids in every column of the rounds table: it must still fit
    text = json.dumps(_evaluated())
    for short, long in (("factory_detroit", "automotive_detroit_main"),
                        ("factory_houston", "chemical_houston_reactor"),
                        ("factory_seattle", "aerospace_seattle_assembly")):  # fmt: skip
        text = text.replace(short, long)
    summary = json.loads(text)
    summary["rounds"][1]["rejected"] = {
        f"factory_{i:02d}_{'x' * 20}": "byzantine" for i in range(6)
    }
    # round 0, as a campaign's summary leads with it: the initial model's held-out RMSE
    summary["rounds"].insert(0, {"round_num": 0, "rmse": 87.25, "test_rmse": 87.25, "train_rmse": None,
                                 "epsilon": None, "participants": [], "rejected": {}, "byzantine": [],
                                 "duration_s": None, "reputation": {}, "status": "statistics"})  # fmt: skip
    (run / "summary.json").write_text(json.dumps(summary))
    return render_report(run)


def test_the_rendered_page_is_not_blank(report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", report.as_uri(), cwd=tmp_path)
    from matplotlib.image import imread

    rgb = imread(io.BytesIO(shot.read_bytes()))[..., :3]
    assert rgb.shape[1] == WIDTH
    ink = float((rgb.mean(axis=2) < 0.9).mean())
    assert ink > 0.03, f"only {ink:.1%} of the screenshot is drawn"
    assert rgb.std() > 0.1  # not one flat colour


def test_the_dom_holds_each_section_with_the_runs_numbers_and_fits_1280_px(report, tmp_path):
    probe = tmp_path / "probe.html"
    # after layout, the page writes how wide it is into the DOM the browser dumps
    probe.write_text(report.read_text().replace(
        "</body>",
        "<script>document.body.setAttribute('data-scroll-width',"
        " document.documentElement.scrollWidth); document.body.setAttribute('data-rounds-right',"
        " Math.ceil(document.querySelector('#rounds table').getBoundingClientRect().right))"
        "</script></body>",
    ))  # fmt: skip
    dom = _chromium("--dump-dom", probe.as_uri(), cwd=tmp_path).stdout
    sections = {
        "summary": ["held-out RMSE (cycles)", "14.6", "train-mean predictor: 41.3", "+1.7", "65%"],
        "data": ["../shared/data/cmapss/FD001", "17731"],
        "evaluation": [
            "C-MAPSS test engines of FD001",
            "Predicted vs true RUL",
            "What federation gained",
            "automotive_detroit_main alone",
        ],
        "privacy": ["record-level (one sensor window), worst factory", "2.84", "1e-05"],
        "campaign": ["RMSE per round", "Privacy budget"],
        "rounds": ["automotive_detroit_main", "byzantine", "0 (initial model)", "87.25"],
    }
    for sid, texts in sections.items():
        match = re.search(rf'<section id="{sid}">(.*?)</section>', dom, re.S)
        assert match, f"section {sid} missing from the rendered DOM"
        for text in texts:
            assert text in match.group(1), (sid, text)
    width = int(re.search(r'data-scroll-width="(\d+)"', dom).group(1))
    assert width <= WIDTH, f"the page is {width} px wide at a {WIDTH} px window"
    # the rounds table itself fits (not only hidden behind a scroll bar of its own)
    right = int(re.search(r'data-rounds-right="(\d+)"', dom).group(1))
    assert right <= WIDTH, f"the rounds table ends at {right} px"
