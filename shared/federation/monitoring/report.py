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


class RoundSummary(TypedDict):
    """One round of a campaign."""

    round_num: int
    rmse: float | None
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
    )


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
        ax.set_xlabel("round")
        ax.set_ylabel(ylabel)
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    ax.set_title(title)
    return _png(fig)


def _plot_rejections(by_reason: Mapping[str, int]) -> bytes:
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    reasons = list(REJECT_REASONS) + sorted(set(by_reason) - set(REJECT_REASONS))
    counts = [by_reason.get(r, 0) for r in reasons]
    bars = ax.bar(reasons, counts, color=["#c0392b" if c else "#bdc3c7" for c in counts])
    ax.bar_label(bars, labels=[str(c) for c in counts], fontsize=8)
    ax.set_ylabel("messages")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.set_title(PLOT_TITLES[2] + ("" if any(counts) else " (none)"))
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
    return [
        (
            PLOT_TITLES[0],
            _plot_line(s["rounds"], "rmse", PLOT_TITLES[0], "RMSE (cycles)", "#27ae60"),
        ),
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
border-radius:8px;padding:.8rem 1.2rem;min-width:150px}.card .v{font-size:1.6rem;font-weight:600}
.card .k{color:#666;font-size:.85rem}.plots{display:grid;grid-template-columns:repeat(auto-fit,
minmax(480px,1fr));gap:1rem}.plots figure{margin:0;border:1px solid #eee;border-radius:8px;
padding:.5rem}.plots img{width:100%;height:auto}table{border-collapse:collapse;width:100%;
margin:1rem 0}th,td{border-bottom:1px solid #eee;padding:.35rem .6rem;text-align:left;
font-size:.9rem;vertical-align:top}th{background:#fafafa}td.num{text-align:right;
font-variant-numeric:tabular-nums}.bad{color:#c0392b}
"""


def render_html(summary: CampaignSummary) -> str:
    """The report page for a validated summary, plots embedded as base64 PNG."""
    s = summary
    final = s["final"]
    cards = [
        ("final RMSE", _fmt(final["rmse"])),
        ("final ε", _fmt(final["epsilon"])),
        ("rounds", _fmt(final["rounds"])),
        ("stopped because", _fmt(final["reason"] or "—")),
        ("rejected messages", _fmt(sum(s["rejections_by_reason"].values()))),
    ]
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>pdm-federation report · {_e(s['campaign_id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Campaign {_e(s['campaign_id'])}</h1>",
        '<p class="sub">pdm-federation · federated predictive maintenance</p>',
        '<div class="cards">',
        *(
            f'<div class="card"><div class="v">{_e(v)}</div><div class="k">{_e(k)}</div></div>'
            for k, v in cards
        ),
        "</div><div class=plots>",
    ]
    for title, png in _plots(s):
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{_e(title)}" src="data:image/png;base64,{b64}"></figure>')
    parts.append(
        "</div><h2>Rounds</h2><table><tr><th>round</th><th>RMSE</th><th>ε</th>"
        "<th>duration</th><th>participants</th><th>rejected</th><th>Byzantine</th>"
        "<th>reputation</th></tr>"
    )
    for r in s["rounds"]:
        rejected = ", ".join(f"{k}: {v}" for k, v in sorted(r["rejected"].items()))
        reputation = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["reputation"].items()))
        parts.append(
            f"<tr><td class=num>{r['round_num']}</td><td class=num>{_fmt(r['rmse'])}</td>"
            f"<td class=num>{_fmt(r['epsilon'])}</td>"
            f"<td class=num>{_e(_fmt(r['duration_s'], '.1f'))}{' s' if r['duration_s'] is not None else ''}</td>"
            f"<td>{_e(', '.join(r['participants']))}</td><td class=bad>{_e(rejected)}</td>"
            f"<td class=bad>{_e(', '.join(r['byzantine']))}</td><td>{_e(reputation)}</td></tr>"
        )
    if not s["rounds"]:
        parts.append("<tr><td colspan=8>No rounds completed.</td></tr>")
    parts.append(
        "</table><h2>Rejections by reason</h2><table><tr><th>reason</th><th>count</th></tr>"
    )
    for reason, count in sorted(s["rejections_by_reason"].items()):
        parts.append(f"<tr><td>{_e(reason)}</td><td class=num>{count}</td></tr>")
    parts.append("</table><h2>Configuration</h2><table><tr><th>key</th><th>value</th></tr>")
    for key, value in sorted(s["config"].items()):
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        parts.append(f"<tr><td>{_e(key)}</td><td>{_e(shown)}</td></tr>")
    parts.append("</table></body></html>\n")
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
