"""Campaign report: a made-up summary renders to HTML with real PNG plots and the run's numbers."""

from __future__ import annotations

import base64
import json
import re
import struct

import pytest
from federation.monitoring import render_report, report_main
from federation.monitoring.report import PLOT_TITLES, SummaryError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary():
    sites = ["factory_detroit", "factory_houston", "factory_seattle"]
    rounds = []
    for i in range(1, 5):
        rounds.append(
            {
                "round_num": i,
                "rmse": round(48.0 / i + 11.1234, 4),
                "epsilon": round(0.4321 * i, 4),
                "participants": sites,
                "rejected": {"factory_seattle": "replay"} if i == 2 else {},
                "byzantine": ["factory_seattle"] if i >= 3 else [],
                "duration_s": 10.0 + i,
                "reputation": {
                    "factory_detroit": 1.0,
                    "factory_houston": 0.9,
                    "factory_seattle": 1.0 - 0.3 * i + 0.3,
                },
            }
        )
    return {
        "campaign_id": "fd001-demo-42",
        "config": {"model": "cnn", "max_epsilon": 3.0, "reputation_threshold": 0.3, "rounds": 4},
        "rounds": rounds,
        "rejections_by_reason": {"replay": 1, "integrity": 2},
        "final": {
            "rmse": rounds[-1]["rmse"],
            "epsilon": rounds[-1]["epsilon"],
            "rounds": 4,
            "reason": "max_rounds",
        },
    }


def _pngs(page: str) -> dict[str, bytes]:
    found = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return {alt: base64.b64decode(b64, validate=True) for alt, b64 in found}


def test_when_a_summary_is_rendered__every_plot_is_a_valid_nonempty_png(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    out = render_report(tmp_path)
    assert out == tmp_path / "report.html"
    pngs = _pngs(out.read_text())
    assert set(pngs) == set(PLOT_TITLES)
    for title, png in pngs.items():
        assert png[:8] == PNG_MAGIC, title
        width, height = struct.unpack(">II", png[16:24])  # IHDR
        assert width > 100 and height > 100, title
        assert len(png) > 5_000, title  # a drawn chart, not a blank image


def test_when_a_summary_is_rendered__the_page_shows_the_runs_numbers_and_factories(tmp_path):
    summary = _summary()
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    page = render_report(tmp_path).read_text()
    assert "fd001-demo-42" in page
    for r in summary["rounds"]:
        assert f"{r['rmse']:.3f}" in page
        assert f"{r['epsilon']:.3f}" in page
        assert f"{r['duration_s']:.1f} s" in page
    for site in r["participants"]:
        assert site in page
    assert "factory_seattle: replay" in page
    assert "max_rounds" in page
    assert f"{summary['final']['rmse']:.3f}" in page


def test_when_plots_differ_in_data__their_images_differ(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    s = _summary()
    (a / "summary.json").write_text(json.dumps(s))
    s["rounds"][0]["rmse"] = 99.0
    (b / "summary.json").write_text(json.dumps(s))
    pa, pb = _pngs(render_report(a).read_text()), _pngs(render_report(b).read_text())
    assert pa["RMSE per round"] != pb["RMSE per round"]
    assert pa["Round duration"] == pb["Round duration"]


def test_when_names_contain_html__they_are_escaped(tmp_path):
    s = _summary()
    s["campaign_id"] = "<script>alert(1)</script>"
    s["rounds"][0]["participants"] = ["<b>evil</b>"]
    (tmp_path / "summary.json").write_text(json.dumps(s))
    page = render_report(tmp_path).read_text()
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "&lt;b&gt;evil&lt;/b&gt;" in page


def test_when_no_round_completed__the_report_still_renders(tmp_path):
    s = {
        "campaign_id": "empty",
        "config": {},
        "rounds": [],
        "rejections_by_reason": {},
        "final": {"rounds": 0, "reason": "budget"},
    }
    (tmp_path / "summary.json").write_text(json.dumps(s))
    page = render_report(tmp_path).read_text()
    assert len(_pngs(page)) == len(PLOT_TITLES)
    assert "No rounds completed." in page


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda s: s.pop("campaign_id"), "campaign_id"),
        (lambda s: s["rounds"][1].update(rmse="high"), "rounds[1].rmse"),
        (lambda s: s["rounds"][0].update(round_num=1.5), "round_num"),
        (lambda s: s["rejections_by_reason"].update(replay=-1), "rejections_by_reason"),
        (lambda s: s["rounds"][0].update(epsilon=float("nan")), "epsilon"),
    ],
)
def test_when_the_summary_breaks_the_schema__a_summary_error_names_the_field(
    tmp_path, mutate, where
):
    s = _summary()
    mutate(s)
    (tmp_path / "summary.json").write_text(json.dumps(s))
    with pytest.raises(SummaryError, match=re.escape(where)):
        render_report(tmp_path)


def test_when_report_cli_runs__it_prints_the_path_or_fails_cleanly(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 1
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text("{not json")
    assert report_main([str(tmp_path)]) == 1
    assert "not valid JSON" in capsys.readouterr().err
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    assert report_main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.html")
