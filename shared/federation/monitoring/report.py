"""Campaign report: reads run_dir/summary.json and writes a self-contained report.html with plots.

summary.json (written by the orchestrator at the end of a campaign, see CampaignSummary)::

    {
      "campaign_id": "c-2025-09-05",
      "config": {"model": "cnn", "rounds": 5, "max_epsilon": 8.0, ...},   # free-form scalars
      "rounds": [
        {"round_num": 1, "rmse": 41.2, "epsilon": 0.61,
         "participants": ["factory_a", "factory_b"],
         "rejected": {"factory_c": "replay"},          # datasite -> reject reason
         "byzantine": ["factory_d"],
         "duration_s": 12.5,
         "reputation": {"factory_a": 1.0, "factory_d": 0.4}}
      ],
      "rejections_by_reason": {"replay": 1, "integrity": 0, ...},
      "final": {"rmse": 30.1, "epsilon": 2.3, "rounds": 5, "reason": "max_rounds"}
    }

`rmse`, `epsilon` and `duration_s` of a round may be null (not measured); lists and maps may
be empty. Optional config keys the plots use: `max_epsilon` (budget line) and
`reputation_threshold` (threshold line).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from federation.errors import REJECT_REASONS, PdmFedError

__all__ = [
    "RoundSummary",
    "FinalSummary",
    "CampaignSummary",
    "SummaryError",
    "load_summary",
    "render_report",
    "render_html",
    "report_command",
    "report_main",
    "SUMMARY_FILE",
    "REPORT_FILE",
    "PLOT_TITLES",
    "EVALUATION_PLOT_TITLES",
]

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
#: The plots every report contains, in page order (also the <img alt> texts).
PLOT_TITLES = (
    "RMSE per round",
    "Privacy budget ε over rounds",
    "Rejected messages by reason",
    "Reputation per factory",
    "Round duration",
)
#: The plots of a run evaluated on held-out units (summary "evaluation"), shown first.
EVALUATION_PLOT_TITLES = (
    "Predicted vs true RUL (held-out units)",
    "Prediction error (held-out units)",
)


class RoundSummary(TypedDict):
    """One round of a campaign (rmse: test when measured, else training)."""

    round_num: int
    rmse: float | None
    test_rmse: float | None
    train_rmse: float | None
    epsilon: float | None
    participants: list[str]
    rejected: dict[str, str]
    byzantine: list[str]
    duration_s: float | None
    reputation: dict[str, float]


class FinalSummary(TypedDict):
    """Where the campaign ended and why (e.g. max_rounds, budget, critical_security)."""

    rmse: float | None
    epsilon: float | None
    rounds: int
    reason: str


class CampaignSummary(TypedDict):
    """The whole summary.json."""

    campaign_id: str
    config: dict[str, Any]
    rounds: list[RoundSummary]
    rejections_by_reason: dict[str, int]
    final: FinalSummary
    #: optional: held-out evaluation (federation.ml.heldout), ε/δ/scope, the data's source
    evaluation: dict[str, Any] | None
    privacy: dict[str, Any]
    data: dict[str, Any]


class SummaryError(PdmFedError):
    """summary.json is missing, unreadable or does not follow the schema."""

    reason = "malformed"


# --- validation ---------------------------------------------------------------------------
def _number(value: Any, where: str, *, optional: bool = True) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SummaryError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SummaryError(f"{where}: expected a list of strings")
    return list(value)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SummaryError(f"{where}: expected an object")
    return value


def _validate(data: Any) -> CampaignSummary:
    if not isinstance(data, Mapping):
        raise SummaryError("summary: expected a JSON object")
    if not isinstance(data.get("campaign_id"), str):
        raise SummaryError("summary.campaign_id: expected a string")
    raw_rounds = data.get("rounds", [])
    if not isinstance(raw_rounds, list):
        raise SummaryError("summary.rounds: expected a list")
    rounds: list[RoundSummary] = []
    for i, r in enumerate(raw_rounds):
        w = f"summary.rounds[{i}]"
        r = _mapping(r, w)
        num = r.get("round_num")
        if isinstance(num, bool) or not isinstance(num, int):
            raise SummaryError(f"{w}.round_num: expected an integer")
        rejected = _mapping(r.get("rejected"), f"{w}.rejected")
        if not all(isinstance(v, str) for v in rejected.values()):
            raise SummaryError(f"{w}.rejected: expected datasite -> reason strings")
        reputation = {
            str(k): _number(v, f"{w}.reputation.{k}", optional=False)
            for k, v in _mapping(r.get("reputation"), f"{w}.reputation").items()
        }
        rounds.append(
            RoundSummary(
                round_num=num,
                rmse=_number(r.get("rmse"), f"{w}.rmse"),
                test_rmse=_number(r.get("test_rmse"), f"{w}.test_rmse"),
                train_rmse=_number(r.get("train_rmse"), f"{w}.train_rmse"),
                epsilon=_number(r.get("epsilon"), f"{w}.epsilon"),
                participants=_str_list(r.get("participants"), f"{w}.participants"),
                rejected={str(k): v for k, v in rejected.items()},
                byzantine=_str_list(r.get("byzantine"), f"{w}.byzantine"),
                duration_s=_number(r.get("duration_s"), f"{w}.duration_s"),
                reputation=reputation,  # type: ignore[typeddict-item]
            )
        )
    by_reason: dict[str, int] = {}
    for k, v in _mapping(data.get("rejections_by_reason"), "summary.rejections_by_reason").items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise SummaryError(f"summary.rejections_by_reason.{k}: expected a count ≥ 0")
        by_reason[str(k)] = v
    final = _mapping(data.get("final"), "summary.final")
    final_rounds = final.get("rounds", len(rounds))
    if isinstance(final_rounds, bool) or not isinstance(final_rounds, int):
        raise SummaryError("summary.final.rounds: expected an integer")
    return CampaignSummary(
        campaign_id=data["campaign_id"],
        config=dict(_mapping(data.get("config"), "summary.config")),
        rounds=rounds,
        rejections_by_reason=by_reason,
        final=FinalSummary(
            rmse=_number(final.get("rmse"), "summary.final.rmse"),
            epsilon=_number(final.get("epsilon"), "summary.final.epsilon"),
            rounds=final_rounds,
            reason=str(final.get("reason", "")),
        ),
        evaluation=_evaluation(data.get("evaluation")),
        privacy=dict(_mapping(data.get("privacy"), "summary.privacy")),
        data=dict(_mapping(data.get("data"), "summary.data")),
    )


def _evaluation(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    ev = dict(_mapping(value, "summary.evaluation"))
    for key in ("rmse", "bias", "late_share", "far_off_share", "phm08"):
        _number(ev.get(key), f"summary.evaluation.{key}", optional=False)
    base = _mapping(ev.get("baseline"), "summary.evaluation.baseline")
    _number(base.get("rmse"), "summary.evaluation.baseline.rmse", optional=False)
    for i, row in enumerate(ev.get("alone") or []):
        row = _mapping(row, f"summary.evaluation.alone[{i}]")
        for key in ("rmse", "bias", "late_share", "phm08"):
            _number(row.get(key), f"summary.evaluation.alone[{i}].{key}", optional=False)
    pairs = ev.get("pairs") or []
    if not isinstance(pairs, list):
        raise SummaryError("summary.evaluation.pairs: expected a list")
    for i, pair in enumerate(pairs):
        pair = _mapping(pair, f"summary.evaluation.pairs[{i}]")
        for key in ("true", "predicted"):
            _number(pair.get(key), f"summary.evaluation.pairs[{i}].{key}", optional=False)
    return ev


def load_summary(run_dir: str | Path) -> CampaignSummary:
    """Read and validate run_dir/summary.json (SummaryError on any problem)."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SummaryError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SummaryError(f"{path} is not valid JSON: {exc}") from exc
    return _validate(data)


# --- plots --------------------------------------------------------------------------------
def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    # Figure + Agg canvas, not pyplot: no global state, safe off the main thread.
    fig = Figure(figsize=(6.4, 3.4), dpi=100, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")
    ax.set_xticks([])
    ax.set_yticks([])


def _series(rounds: Sequence[RoundSummary], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["round_num"], r[key]) for r in rounds if r[key] is not None]  # type: ignore[literal-required]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def _plot_line(
    rounds: Sequence[RoundSummary],
    key: str,
    title: str,
    ylabel: str,
    color: str,
    limit: float | None = None,
    limit_label: str = "",
) -> bytes:
    fig, ax = _figure()
    xs, ys = _series(rounds, key)
    if not xs:
        _empty(ax, f"no {ylabel} recorded")
    else:
        ax.plot(xs, ys, marker="o", color=color)
        for x, y in zip(xs, ys, strict=True):
            ax.annotate(
                f"{y:.3g}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
        if limit is not None:
            ax.axhline(limit, color="#c0392b", linestyle="--", label=limit_label)
            ax.legend(loc="best", fontsize=8)
        # from zero, and high enough that the limit line is never off the chart
        ax.set_ylim(0, max([*ys, limit or 0.0]) * 1.15 or 1.0)
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    ax.set_title(title)
    return _png(fig)


def _plot_rmse(rounds: Sequence[RoundSummary], baseline: float | None) -> bytes:
    """Test and training RMSE per round kept apart, on an axis from zero, with the baseline."""
    fig, ax = _figure()
    drawn = False
    for key, label, color in (
        ("test_rmse", "held-out test", "#27ae60"),
        ("train_rmse", "training (factories' own data)", "#7f8c8d"),
    ):
        xs, ys = _series(rounds, key)
        if xs:
            ax.plot(xs, ys, marker="o", color=color, label=label)
            drawn = True
    if not drawn:  # an older summary: one "rmse" series
        xs, ys = _series(rounds, "rmse")
        if xs:
            ax.plot(xs, ys, marker="o", color="#27ae60", label="RMSE")
            drawn = True
    if not drawn:
        _empty(ax, "no RMSE recorded")
    else:
        if baseline is not None:
            ax.axhline(baseline, color="#c0392b", linestyle="--",
                       label=f"train-mean baseline {baseline:.1f}")  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.set_xlabel("round")
        ax.set_ylabel("RMSE (cycles)")
        ax.set_xticks(sorted({r["round_num"] for r in rounds}))
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title(PLOT_TITLES[0])
    return _png(fig)


def _plot_pairs(ev: Mapping[str, Any]) -> bytes:
    fig, ax = _figure()
    true = [p["true"] for p in ev.get("pairs") or []]
    pred = [p["predicted"] for p in ev.get("pairs") or []]
    if not true:
        _empty(ax, "no held-out predictions recorded")
    else:
        late = [p > t for p, t in zip(pred, true, strict=True)]
        top = max(max(true), max(pred)) * 1.05
        ax.plot([0, top], [0, top], color="#7f8c8d", linestyle="--", label="perfect")
        ax.scatter([t for t, x in zip(true, late, strict=True) if x],
                   [p for p, x in zip(pred, late, strict=True) if x], s=14, color="#c0392b",
                   label="late (RUL over-estimated)")  # fmt: skip
        ax.scatter([t for t, x in zip(true, late, strict=True) if not x],
                   [p for p, x in zip(pred, late, strict=True) if not x], s=14, color="#2980b9",
                   label="early or exact")  # fmt: skip
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_xlabel("true RUL (cycles)")
        ax.set_ylabel("predicted RUL (cycles)")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    ax.set_title(EVALUATION_PLOT_TITLES[0])
    return _png(fig)


def _plot_errors(ev: Mapping[str, Any]) -> bytes:
    fig, ax = _figure()
    err = [p["predicted"] - p["true"] for p in ev.get("pairs") or []]
    if not err:
        _empty(ax, "no held-out predictions recorded")
    else:
        ax.hist(err, bins=20, color="#8e44ad")
        ax.axvline(0, color="#222", linewidth=1)
        ax.axvline(float(ev["bias"]), color="#c0392b", linestyle="--",
                   label=f"bias {float(ev['bias']):+.1f}")  # fmt: skip
        ax.set_xlabel("predicted - true RUL (cycles; > 0 = late)")
        ax.set_ylabel("units")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(EVALUATION_PLOT_TITLES[1])
    return _png(fig)


def _plot_rejections(by_reason: Mapping[str, int]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    shown = {r: c for r, c in by_reason.items() if c}
    if not shown:  # no zero-height bars: say so
        _empty(ax, "no message was rejected")
    else:
        reasons = [r for r in REJECT_REASONS if r in shown] + sorted(
            set(shown) - set(REJECT_REASONS)
        )
        counts = [shown[r] for r in reasons]
        bars = ax.bar(reasons, counts, color="#c0392b")
        ax.bar_label(bars, labels=[str(c) for c in counts], fontsize=8)
        ax.set_ylabel("messages")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_title(PLOT_TITLES[2])
    return _png(fig)


def _plot_reputation(rounds: Sequence[RoundSummary], threshold: float | None) -> bytes:
    fig, ax = _figure()
    sites = sorted({s for r in rounds for s in r["reputation"]})
    if not sites:
        _empty(ax, "no reputation recorded")
    else:
        for site in sites:
            pts = [
                (r["round_num"], r["reputation"][site]) for r in rounds if site in r["reputation"]
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=site)
        if threshold is not None:
            ax.axhline(threshold, color="#c0392b", linestyle="--", label=f"threshold {threshold:g}")
        ax.set_ylim(-0.05, 1.05)
        ax.set_xticks(sorted({r["round_num"] for r in rounds if r["reputation"]}))
        ax.set_xlabel("round")
        ax.set_ylabel("reputation")
        ax.legend(loc="best", fontsize=7)
        ax.grid(alpha=0.3)
    ax.set_title(PLOT_TITLES[3])
    return _png(fig)


def _plot_timing(rounds: Sequence[RoundSummary]) -> bytes:
    fig, ax = _figure()
    xs, ys = _series(rounds, "duration_s")
    if not xs:
        _empty(ax, "no round timing recorded")
    else:
        bars = ax.bar([str(x) for x in xs], ys, color="#2980b9")
        ax.bar_label(bars, labels=[f"{y:.1f}s" for y in ys], fontsize=8)
        ax.set_xlabel("round")
        ax.set_ylabel("seconds")
    ax.set_title(PLOT_TITLES[4])
    return _png(fig)


def _plots(s: CampaignSummary) -> list[tuple[str, bytes]]:
    cfg = s["config"]
    max_eps = cfg.get("max_epsilon")
    max_eps = (
        float(max_eps)
        if isinstance(max_eps, int | float) and not isinstance(max_eps, bool)
        else None
    )
    thr = cfg.get("reputation_threshold")
    thr = float(thr) if isinstance(thr, int | float) and not isinstance(thr, bool) else None
    ev = s.get("evaluation")
    baseline = float(ev["baseline"]["rmse"]) if ev else None
    return [
        (PLOT_TITLES[0], _plot_rmse(s["rounds"], baseline)),
        (
            PLOT_TITLES[1],
            _plot_line(
                s["rounds"],
                "epsilon",
                PLOT_TITLES[1],
                "ε",
                "#8e44ad",
                limit=max_eps,
                limit_label=f"budget {max_eps:g}" if max_eps else "",
            ),
        ),
        (PLOT_TITLES[2], _plot_rejections(s["rejections_by_reason"])),
        (PLOT_TITLES[3], _plot_reputation(s["rounds"], thr)),
        (PLOT_TITLES[4], _plot_timing(s["rounds"])),
    ]


# --- HTML ---------------------------------------------------------------------------------
def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}h1{margin-bottom:.2rem}.sub{color:#666;margin-top:0}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1.5rem 0}.card{border:1px solid #ddd;
border-radius:8px;padding:.8rem 1.2rem;min-width:150px;max-width:260px}.card .v{font-size:1.6rem;
font-weight:600}.card .k{color:#666;font-size:.85rem}.card .n{color:#888;font-size:.75rem}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:1rem}
.plots figure{margin:0;border:1px solid #eee;border-radius:8px;padding:.5rem}
.plots img{width:100%;height:auto}.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;width:100%;margin:1rem 0}th,td{border-bottom:1px solid #eee;
padding:.35rem .6rem;text-align:left;font-size:.9rem;vertical-align:top;overflow-wrap:anywhere}
th{background:#fafafa;white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums;
white-space:nowrap}.bad{color:#c0392b}.note{color:#555;font-size:.9rem}
"""


def _card(key: str, value: str, note: str = "") -> str:
    extra = f'<div class="n">{_e(note)}</div>' if note else ""
    return f'<div class="card"><div class="v">{_e(value)}</div><div class="k">{_e(key)}</div>{extra}</div>'


def _figures(plots: Sequence[tuple[str, bytes]]) -> list[str]:
    out = ['<div class="plots">']
    for title, png in plots:
        b64 = base64.b64encode(png).decode("ascii")
        out.append(f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{b64}"></figure>')
    out.append("</div>")
    return out


def _evaluation_cards(ev: Mapping[str, Any] | None, final: FinalSummary) -> list[str]:
    if not ev:
        return [_card("training RMSE (cycles)", _fmt(final["rmse"], ".1f"),
                      "measured on the factories' own training data: no held-out test in this run")]  # fmt: skip
    base = ev["baseline"]
    far = float(ev.get("far_off_cycles", 30.0))
    return [
        _card("held-out RMSE (cycles)", f"{float(ev['rmse']):.1f}",
              f"{base.get('name', 'baseline')}: {float(base['rmse']):.1f}"),
        _card("bias (cycles)", f"{float(ev['bias']):+.1f}",
              "mean predicted - true; positive = remaining life over-estimated"),
        _card("late predictions", f"{float(ev['late_share']):.0%}",
              "units whose remaining life is over-estimated (maintenance too late)"),
        _card(f"off by > {far:g} cycles", f"{float(ev['far_off_share']):.0%}", "either way"),
        _card("PHM08 score", f"{float(ev['phm08']):.0f}", "lower is better; late errors cost more"),
    ]  # fmt: skip


def _gained(ev: Mapping[str, Any]) -> list[str]:
    """Each factory's model trained alone next to the federated one, on the same held-out units."""
    alone = ev.get("alone") or []
    if not alone:
        return []
    out = [
        '<div id="gained"><h3>What federation gained</h3><p class="note">Each factory\'s model '
        "trained on its own data alone, as long as the campaign trained, evaluated on the same "
        'held-out units.</p><div class="scroll"><table><tr><th>model</th><th>windows</th>'
        "<th>held-out RMSE (cycles)</th><th>bias</th><th>late</th><th>PHM08</th></tr>"
    ]
    rows = [(f"{a['factory']} alone", a.get("windows"), a) for a in alone]
    rows.append(("federated", sum(int(a.get("windows") or 0) for a in alone), ev))
    for name, windows, m in rows:
        out.append(
            f"<tr><td>{_e(name)}</td><td class=num>{_e(_fmt(windows))}</td>"
            f"<td class=num>{float(m['rmse']):.1f}</td><td class=num>{float(m['bias']):+.1f}</td>"
            f"<td class=num>{float(m['late_share']):.0%}</td>"
            f"<td class=num>{float(m['phm08']):.0f}</td></tr>"
        )
    out.append("</table></div></div>")
    return out


def _privacy_rows(privacy: Mapping[str, Any]) -> list[str]:
    rows = []
    for layer, info in privacy.items():
        if not isinstance(info, Mapping):
            rows.append(f"<tr><td>{_e(layer)}</td><td colspan=3>{_e(info)}</td></tr>")
            continue
        eps = info.get("epsilon")
        rows.append(
            f"<tr><td>{_e(info.get('scope', layer))}</td>"
            f"<td class=num>{_e(_fmt(eps, '.2f') if eps is not None else 'not measured')}</td>"
            f"<td class=num>{_e(_fmt(info.get('delta'), 'g'))}</td>"
            f"<td>{_e(', '.join(f'{k} {float(v):.2f}' for k, v in sorted((info.get('per_factory') or {}).items())))}</td></tr>"
        )
    return rows or ["<tr><td colspan=4>not recorded in this summary</td></tr>"]


def _privacy_card(privacy: Mapping[str, Any], final: FinalSummary) -> str:
    for layer, info in privacy.items():  # the weights' guarantee (the statistics have a row)
        if layer != "statistics" and isinstance(info, Mapping) and info.get("epsilon") is not None:
            return _card("ε", f"{float(info['epsilon']):.2f}",
                         f"δ = {info.get('delta'):g}, {info.get('scope', '')}")  # fmt: skip
    if "none" in privacy:
        return _card("ε", "none", "no differential privacy on the weights")
    return _card("final ε", _fmt(final["epsilon"]), "δ and scope not recorded")


def render_html(summary: CampaignSummary) -> str:
    """The report page for a validated summary, plots embedded as base64 PNG."""
    s = summary
    final = s["final"]
    ev = s.get("evaluation")
    privacy = s.get("privacy") or {}
    data = s.get("data") or {}
    cards = [
        *_evaluation_cards(ev, final),
        _privacy_card(privacy, final),
        _card("rounds", _fmt(final["rounds"])),
        _card("stopped because", _fmt(final["reason"] or "—")),
        _card("rejected messages", _fmt(sum(s["rejections_by_reason"].values()))),
    ]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>pdm-federation report · {_e(s['campaign_id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Campaign {_e(s['campaign_id'])}</h1>",
        '<p class="sub">pdm-federation · federated predictive maintenance</p>',
        '<section id="summary"><div class="cards">',
        *cards,
        "</div></section>",
        '<section id="data"><h2>Data</h2><div class="scroll"><table><tr><th>what</th><th>value</th></tr>',
    ]
    if data:
        for key, value in data.items():
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            parts.append(f"<tr><td>{_e(key)}</td><td>{_e(shown)}</td></tr>")
    else:
        parts.append("<tr><td colspan=2>the summary does not say which data the run used</td></tr>")
    parts.append("</table></div></section>")
    if ev:
        parts.append('<section id="evaluation"><h2>Held-out evaluation</h2>')
        parts.append(f'<p class="note">{_e(ev.get("split", ""))}: {_e(ev.get("units", ""))} units. '
                     "RUL in cycles; a late prediction over-estimates the remaining life.</p>")  # fmt: skip
        parts += _figures(
            [
                (EVALUATION_PLOT_TITLES[0], _plot_pairs(ev)),
                (EVALUATION_PLOT_TITLES[1], _plot_errors(ev)),
            ]
        )
        parts += _gained(ev)
        parts.append("</section>")
    parts.append('<section id="privacy"><h2>Privacy</h2><div class="scroll"><table><tr>'
                 "<th>scope</th><th>ε</th><th>δ</th><th>per factory</th></tr>")  # fmt: skip
    parts += _privacy_rows(privacy)
    parts.append('</table></div></section><section id="campaign"><h2>Campaign</h2>')
    parts += _figures(_plots(s))
    parts.append(
        '</section><section id="rounds"><h2>Rounds</h2><div class="scroll"><table><tr>'
        "<th>round</th><th>test RMSE</th><th>training RMSE</th><th>ε</th>"
        "<th>duration</th><th>participants</th><th>rejected</th><th>Byzantine</th>"
        "<th>reputation</th></tr>"
    )
    for r in s["rounds"]:
        # one factory a line: long datasite ids stay readable and the table fits the page
        rejected = "<br>".join(_e(f"{k}: {v}") for k, v in sorted(r["rejected"].items()))
        reputation = "<br>".join(_e(f"{k} {v:.2f}") for k, v in sorted(r["reputation"].items()))
        test = (
            r["test_rmse"]
            if r["test_rmse"] is not None or r["train_rmse"] is not None
            else r["rmse"]
        )
        parts.append(
            f"<tr><td class=num>{r['round_num'] or '0 (initial model)'}</td>"
            f"<td class=num>{_fmt(test, '.2f')}</td>"
            f"<td class=num>{_fmt(r['train_rmse'], '.2f')}</td>"
            f"<td class=num>{_fmt(r['epsilon'])}</td>"
            f"<td class=num>{_e(_fmt(r['duration_s'], '.1f'))}{' s' if r['duration_s'] is not None else ''}</td>"
            f"<td>{'<br>'.join(_e(p) for p in r['participants'])}</td><td class=bad>{rejected}</td>"
            f"<td class=bad>{'<br>'.join(_e(b) for b in r['byzantine'])}</td><td>{reputation}</td></tr>"
        )
    if not s["rounds"]:
        parts.append("<tr><td colspan=9>No rounds completed.</td></tr>")
    parts.append(
        '</table></div></section><section id="rejections"><h2>Rejections by reason</h2>'
        "<table><tr><th>reason</th><th>count</th></tr>"
    )
    for reason, count in sorted(s["rejections_by_reason"].items()):
        parts.append(f"<tr><td>{_e(reason)}</td><td class=num>{count}</td></tr>")
    parts.append('</table></section><section id="configuration"><h2>Configuration</h2>'
                 '<div class="scroll"><table><tr><th>key</th><th>value</th></tr>')  # fmt: skip
    for key, value in sorted(s["config"].items()):
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append(f"<tr><td>{_e(key)}</td><td>{_e(shown)}</td></tr>")
    parts.append("</table></div></section></body></html>\n")
    return "\n".join(parts)


def render_report(run_dir: str | Path) -> Path:
    """Read run_dir/summary.json, write run_dir/report.html, return its path."""
    summary = load_summary(run_dir)
    out = Path(run_dir) / REPORT_FILE
    out.write_text(render_html(summary), encoding="utf-8")
    return out


def report_command(run_dir: Path) -> int:
    """`pdmfed report RUN_DIR`: print the report's path (a bad summary raises SummaryError: exit 1)."""
    print(render_report(run_dir))
    return 0


def report_main(argv: Sequence[str] | None = None) -> int:
    """`pdmfed report ARGS` as a function (exit code)."""
    from federation.cli import main

    return main(["report", *(argv or [])])
