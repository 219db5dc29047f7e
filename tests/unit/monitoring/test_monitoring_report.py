"""Campaign report: a made-up summary renders to HTML with real PNG plots and the run's numbers."""

from __future__ import annotations

import base64
import json
import re
import struct

import pytest
from federation.monitoring import render_report, report_main
from federation.monitoring.report import EVALUATION_PLOT_TITLES, PLOT_TITLES, SummaryError

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
        assert f"{r['rmse']:.2f}" in page
        assert f"{r['epsilon']:.3f}" in page
        assert f"{r['duration_s']:.1f} s" in page
    for site in r["participants"]:
        assert site in page
    assert "factory_seattle: replay" in page
    assert "max_rounds" in page
    # no held-out test in this summary: the RMSE tile says it is training RMSE
    assert f"{summary['final']['rmse']:.1f}" in page and "training RMSE (cycles)" in page


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


def _evaluated():
    s = _summary()
    pairs = [{"unit": i, "true": float(t), "predicted": float(t + (12 if i % 3 else -20))}
             for i, t in enumerate(range(10, 130, 6), start=1)]  # fmt: skip
    s["evaluation"] = {
        "split": "C-MAPSS test engines of FD001 (last window each, RUL capped at 125)",
        "units": len(pairs), "rmse": 14.56, "mae": 14.0, "bias": 1.67, "late_share": 0.65,
        "far_off_share": 0.0, "far_off_cycles": 30.0, "phm08": 432.1,
        "baseline": {"name": "train-mean predictor", "prediction": 86.8, "rmse": 41.27},
        "pairs": pairs,
        "alone": [{"factory": "factory_detroit", "windows": 7547, "rmse": 31.25, "bias": 18.5,
                   "late_share": 0.8, "phm08": 9876.0}],
    }  # fmt: skip
    s["privacy"] = {"record_level": {"epsilon": 2.84, "delta": 1e-5,
                    "scope": "record-level (one sensor window), worst factory",
                    "per_factory": {"factory_detroit": 2.84}}}  # fmt: skip
    s["data"] = {"source": "../shared/data/cmapss/FD001", "train_windows": 17731}
    return s


def test_when_a_run_was_evaluated_on_held_out_units__the_page_leads_with_what_an_engineer_acts_on(
    tmp_path,
):
    (tmp_path / "summary.json").write_text(json.dumps(_evaluated()))
    page = render_report(tmp_path).read_text()
    for text in ("held-out RMSE (cycles)", "14.6", "train-mean predictor: 41.3", "+1.7", "65%",
                 "PHM08 score", "432", "δ = 1e-05, record-level (one sensor window), worst factory",
                 "../shared/data/cmapss/FD001", "C-MAPSS test engines of FD001",
                 "What federation gained", "factory_detroit alone", "31.2", "+18.5", "9876"):  # fmt: skip
        assert text in page, text
    assert list(_pngs(page)) == [*EVALUATION_PLOT_TITLES, *PLOT_TITLES]
    assert page.index('id="evaluation"') < page.index('id="campaign"')


def _ink(png: bytes) -> float:
    """Share of the image's pixels that are not (near) white."""
    import io

    from matplotlib.image import imread

    rgb = imread(io.BytesIO(png))[..., :3]
    return float((rgb.mean(axis=2) < 0.9).mean())


def test_when_nothing_was_rejected__the_chart_says_so_instead_of_drawing_empty_bars(tmp_path):
    s = _summary()
    s["rejections_by_reason"] = {"replay": 0, "integrity": 0}
    (tmp_path / "summary.json").write_text(json.dumps(s))
    png = _pngs(render_report(tmp_path).read_text())["Rejected messages by reason"]
    # a title and one line of text (zero-height bars with their axis and labels: about 3.4 %)
    assert _ink(png) < 0.025


def test_round_0_the_initial_models_held_out_rmse_leads_the_rounds_table_and_plot(tmp_path):
    from federation.orchestrator.client import CampaignRecord
    from federation.orchestrator.summary import build_summary

    rec = CampaignRecord(
        "c0", normalizer={"columns": ["x1"]}, completed={"rounds": 1, "reason": "max_rounds"}
    )
    rec.rounds.append({"round_num": 1, "status": "aggregated", "participants": ["a", "b"],
                       "metrics": {"rmse": 30.0}})  # fmt: skip
    summary = build_summary(rec, {"rounds": 1}, test_rmse={0: 80.5, 1: 25.25})
    assert [r["round_num"] for r in summary["rounds"]] == [0, 1]
    assert (
        summary["rounds"][0]["test_rmse"] == 80.5 and summary["rounds"][0]["status"] == "statistics"
    )
    assert summary["final"] == {"rmse": 25.25, "epsilon": None, "rounds": 1, "reason": "max_rounds"}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    page = render_report(tmp_path).read_text()
    assert "<td class=num>0 (initial model)</td><td class=num>80.50</td>" in page
    without = build_summary(rec, {"rounds": 1}, test_rmse={1: 25.25})
    assert [r["round_num"] for r in without["rounds"]] == [1]  # not measured: no round 0 row


def _run_after_round_0(tmp_path, released):
    """A campaign's events as the orchestrator records them (round 0 released its statistics as
    ``released``), written as a run folder: (bundle.json, report.html)."""
    from federation.ml.models import build_model
    from federation.orchestrator.client import CampaignClient
    from federation.orchestrator.summary import build_summary, write_run
    from federation.wire import codec
    from federation.wire.messages import RoundCompleted, RoundMetrics, RoundOpen, parse_payload

    client = CampaignClient(bus=None, endpoint=None)
    state = build_model("cnn", 2, 3).state_dict()
    norm = {"columns": ["temp", "vib"], "mean": [500.0, 0.5], "std": [2.0, 0.1]}
    for msg in (RoundOpen("c", 1, 0, ["f1"], 1.0, dict(state), norm, released),
                RoundCompleted("c", 1, 1, ["f1"], metrics=RoundMetrics(rmse=20.0), global_model=dict(state))):  # fmt: skip
        wire = codec.decode_payload(codec.encode_payload(msg.to_payload()))
        client.record_event(
            msg.msg_type.value, parse_payload(msg.msg_type.value, wire).to_payload()
        )
    config = {
        "training": {"model_type": "cnn", "n_features": 2, "window": 3},
        "privacy": {"enabled": False},
    }
    record = client.records["c"]
    write_run(tmp_path, build_summary(record, config), record.final_model)
    return json.loads((tmp_path / "bundle.json").read_text()), (
        tmp_path / "report.html"
    ).read_text()


def test_when_round_0_noised_the_statistics__bundle_and_report_carry_their_epsilon_delta_and_scope(
    tmp_path,
):
    from federation.wire.messages import StatsPrivacy

    scope = "row-level (add/remove one sensor row), per factory, one release"
    bundle, page = _run_after_round_0(tmp_path, StatsPrivacy(True, 1.5, 1e-5, 3.2, scope))
    assert bundle["privacy"]["statistics"] == {
        "epsilon": 1.5, "delta": 1e-5, "noise_multiplier": 3.2,
        "scope": f"normalisation statistics (round 0): {scope}",
    }  # fmt: skip
    assert "no differential privacy" in bundle["privacy"]["none"]  # the weights' guarantee: none
    privacy = page[page.index('id="privacy"') : page.index('id="campaign"')]
    assert f"normalisation statistics (round 0): {scope}" in privacy
    assert "1.50" in privacy and "1e-05" in privacy
    assert "no differential privacy on the weights" in page  # the headline ε is the weights'


def test_when_round_0_sent_exact_statistics__bundle_and_report_say_they_are_not_noised(tmp_path):
    from federation.wire.messages import StatsPrivacy

    bundle, page = _run_after_round_0(tmp_path, StatsPrivacy(noised=False))
    assert "not noised" in bundle["privacy"]["statistics"]
    privacy = page[page.index('id="privacy"') : page.index('id="campaign"')]
    assert "normalisation statistics (round 0) not noised" in privacy


def test_a_run_whose_dispatch_did_not_say_how_round_0_released_its_statistics_claims_nothing(
    tmp_path,
):
    bundle, _ = _run_after_round_0(tmp_path, None)  # an older trainer-dispatch
    assert "statistics" not in bundle["privacy"]
