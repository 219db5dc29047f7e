"""Robustness evaluation on the C-MAPSS task: final test RMSE for each defence x attack, and DP on/off with epsilon."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from federation.campaign import PrivacyConfig, RobustnessConfig
from federation.errors import PdmFedError, RobustnessError
from federation.privacy import PrivacyAccountant
from federation.robust.attacks import craft, label_flip
from federation.robust.pipeline import (
    ScreeningPolicy,
    aggregation_rule,
    screen_cohort,
    screening_policy,
)
from federation.robust.reputation import ReputationBook

__all__ = [
    "DEFENCES",
    "EVAL_ATTACKS",
    "default_data_dir",
    "defence_config",
    "defence_policy",
    "format_table",
    "robustness_command",
    "robustness_main",
    "run_robustness_eval",
]

#: Update attacks plus label flipping at the datasite.
EVAL_ATTACKS = ("none", "sign_flip", "scaling", "gaussian", "ipm", "alie", "label_flip")
#: "secure_default" is the services' default defence (a default campaign's ``robustness``):
#: screening, reputation and the default rule; the others are a rule alone, without screening.
DEFENCES = ("fedavg", "trimmed_mean", "median", "krum", "centered_clipping", "secure_default")
_LOCAL = {
    "model_type": "cnn",
    "epochs": 1,
    "batch_size": 64,
    "max_batches": 30,
    "learning_rate": 3e-3,
}


def default_data_dir() -> Path:
    """Where the project keeps the real FD001 files: ``../shared/data/cmapss/FD001`` from the project root."""
    root = Path(__file__).resolve().parents[3]
    return root.parent / "shared" / "data" / "cmapss" / "FD001"


def _float_keys(sd: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in sd.items() if v.is_floating_point()]


def _delta(new: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: new[k].float() - old[k].float() for k in _float_keys(old)}


def _apply(
    global_sd: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    return {k: (v + delta[k].to(v.dtype)) if k in delta else v for k, v in global_sd.items()}


def _setup(data_dir: str | Path | None, n_sites: int, seed: int):
    from federation.ml import build_model, load_dataset, partition_engines, split_partition

    path = Path(data_dir) if data_dir is not None else default_data_dir()
    prepared = load_dataset(path if path.exists() else None, seed=seed)
    groups = partition_engines(prepared.train.engines, n_sites, seed)
    sites = split_partition(prepared.train, groups)
    torch.manual_seed(seed)
    model = build_model(_LOCAL["model_type"], prepared.n_features, prepared.window)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    source = str(path) if path.exists() else "synthetic (FD001 not found)"
    return prepared, sites, init, source


def defence_config(defence: str, n_sites: int, n_byz: int) -> RobustnessConfig:
    """The campaign ``robustness`` section a defence of the table stands for.

    ``secure_default`` is a default campaign's; a bare rule (see ``defence_policy``: no
    screening) runs Krum with f = the Byzantine count and the trimmed mean trimming at least
    that share.
    """
    if defence == "secure_default":
        return RobustnessConfig()
    if defence == "fedavg":
        return RobustnessConfig(enabled=False)
    rule: dict[str, Any] = {"name": defence}
    if defence == "krum":
        rule["f"] = max(1, n_byz)
    elif defence == "trimmed_mean":
        rule["trim_ratio"] = max(0.1, n_byz / n_sites)
    return RobustnessConfig(rule=rule)


def defence_policy(defence: str, robustness: RobustnessConfig) -> ScreeningPolicy:
    """How a defence of the table screens: the services' own policy for ``secure_default``,
    none for a bare rule."""
    if defence == "secure_default":
        return screening_policy(robustness)
    return ScreeningPolicy(enabled=False)


def _run_cell(
    prepared: Any,
    sites: Sequence[Any],
    init: dict[str, torch.Tensor],
    *,
    attack: str,
    robustness: RobustnessConfig,
    policy: ScreeningPolicy,
    n_byz: int,
    rounds: int,
    seed: int,
    privacy: PrivacyConfig | None = None,
) -> dict[str, Any]:
    """One federation: each round the services' own steps, ``screen_cohort`` (security) then
    ``aggregation_rule`` (aggregator, central DP when ``privacy`` says so)."""
    from federation.ml import evaluate, train_local

    n = len(sites)
    ids = [f"site{i}" for i in range(n)]
    byz = set(range(n_byz)) if attack != "none" else set()
    book = ReputationBook()
    gen = torch.Generator().manual_seed(seed + 7)
    rule = aggregation_rule(robustness, privacy, generator=gen)
    state = {k: v.clone() for k, v in init.items()}
    caught = 0
    for r in range(rounds):
        deltas, samples = [], []
        for i, site in enumerate(sites):
            y = site.y
            if attack == "label_flip" and i in byz:
                y = label_flip(torch.from_numpy(y), prepared.rul_cap).numpy()
            res = train_local(state, site.X, y, _LOCAL, seed=seed * 10_000 + r * 100 + i)
            deltas.append(_delta(res["model_update"], state))
            samples.append(res["num_samples"])
        if attack not in ("none", "label_flip") and byz:
            honest = [deltas[i] for i in range(n) if i not in byz]
            crafted = craft(attack, [deltas[i] for i in sorted(byz)], honest, n, generator=gen)
            for i, evil in zip(sorted(byz), crafted, strict=True):
                deltas[i] = evil
        screened = screen_cohort(deltas, ids, policy, book, num_samples=samples)
        caught += sum(1 for c in screened.flagged_ids if int(c[4:]) in byz)
        if screened.accepted:
            agg = rule.aggregate([deltas[i] for i in screened.accepted], screened.weights)
            state = _apply(state, agg)
    rmse = evaluate(state, prepared.test.X, prepared.test.y, _LOCAL["model_type"])["rmse"]
    return {
        "rmse": float(rmse) if math.isfinite(rmse) else None,
        "byzantine_flagged": caught if policy.enabled else None,
    }


def run_robustness_eval(
    data_dir: str | Path | None = None,
    n_sites: int = 5,
    byzantine_fraction: float = 0.2,
    rounds: int = 8,
    seed: int = 0,
    out: str | Path | None = None,
    *,
    attacks: Sequence[str] = EVAL_ATTACKS,
    defences: Sequence[str] = DEFENCES,
    dp_noise_levels: Sequence[float] = (0.1, 1.0),
    dp_clip: float | None = None,
    delta: float = 1e-5,
) -> dict[str, Any]:
    """Train a small CNN federatedly for each defence x attack; return (and write) the RMSE table.

    The first ``round(n_sites * byzantine_fraction)`` sites are Byzantine. DP rows use central
    DP-FedAvg with no attack; epsilon is client-level (every site every round) from the RDP
    accountant. ``dp_clip`` defaults to the median honest update norm of round one.
    """
    if not 3 <= n_sites <= 50:
        raise RobustnessError(f"n_sites must be in [3, 50], got {n_sites}")
    if not 0 <= byzantine_fraction < 0.5:
        raise RobustnessError(f"byzantine_fraction must be in [0, 0.5), got {byzantine_fraction}")
    unknown = [a for a in attacks if a not in EVAL_ATTACKS] + [
        d for d in defences if d not in DEFENCES
    ]
    if unknown:
        raise RobustnessError(f"unknown attacks/defences {unknown}")
    started = time.perf_counter()
    prepared, sites, init, source = _setup(data_dir, n_sites, seed)
    n_byz = max(1, round(n_sites * byzantine_fraction)) if byzantine_fraction > 0 else 0
    common = {"n_byz": n_byz, "rounds": rounds, "seed": seed}
    cells: dict[str, dict[str, Any]] = {}
    for defence in defences:
        cells[defence] = {}
        for attack in attacks:
            robustness = defence_config(defence, n_sites, n_byz)
            cells[defence][attack] = _run_cell(
                prepared,
                sites,
                init,
                attack=attack,
                robustness=robustness,
                policy=defence_policy(defence, robustness),
                **common,
            )
    plain = defence_config("fedavg", n_sites, n_byz)
    common["policy"] = ScreeningPolicy(enabled=False)
    clean = _run_cell(prepared, sites, init, attack="none", robustness=plain, **common)["rmse"]
    if dp_clip is None:
        from federation.ml import train_local
        from federation.privacy import global_l2_norm

        norms = sorted(
            global_l2_norm(
                _delta(
                    train_local(init, s.X, s.y, _LOCAL, seed=seed * 10_000 + i)["model_update"],
                    init,
                )
            )
            for i, s in enumerate(sites)
        )
        dp_clip = norms[len(norms) // 2]
    dp_rows = []
    for z in (0.0, *dp_noise_levels):
        privacy = PrivacyConfig(mode="central", noise_multiplier=z, clip_norm=dp_clip)
        cell = _run_cell(
            prepared, sites, init, attack="none", robustness=plain, privacy=privacy, **common
        )
        eps = PrivacyAccountant(z, 1.0, delta).epsilon_after(rounds) if z > 0 else math.inf
        dp_rows.append(
            {
                "noise_multiplier": z,
                "epsilon": None if math.isinf(eps) else eps,
                "delta": delta,
                "rmse": cell["rmse"],
            }
        )
    result = {
        "task": f"C-MAPSS RUL regression, {_LOCAL['model_type']} model, test RMSE in cycles",
        "data": source,
        "n_sites": n_sites,
        "byzantine_sites": n_byz,
        "rounds": rounds,
        "seed": seed,
        "local_training": dict(_LOCAL),
        "clean_fedavg_rmse": clean,
        "cells": cells,
        "dp": {
            "mode": "central DP-FedAvg, client-level, sampling rate 1",
            "clip_norm": dp_clip,
            "rows": dp_rows,
        },
        "seconds": round(time.perf_counter() - started, 1),
    }
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    return result


def _fmt(rmse: float | None, clean: float | None) -> str:
    if rmse is None:
        return "diverged"
    if not clean:
        return f"{rmse:.1f}"
    return f"{rmse:.1f} ({(rmse / clean - 1) * 100:+.0f}%)"


def format_table(result: dict[str, Any]) -> str:
    """Markdown: one row per defence, one column per attack, RMSE (change vs clean FedAvg); then the DP rows."""
    clean = result["clean_fedavg_rmse"]
    attacks = list(next(iter(result["cells"].values())).keys())
    lines = [
        f"Test RMSE (cycles), {result['n_sites']} sites, {result['byzantine_sites']} Byzantine, "
        f"{result['rounds']} rounds; clean FedAvg = {clean:.2f}; data: {result['data']}",
        "",
        "| defence | " + " | ".join(attacks) + " |",
        "|---|" + "---|" * len(attacks),
    ]
    for defence, row in result["cells"].items():
        lines.append(
            f"| {defence} | " + " | ".join(_fmt(row[a]["rmse"], clean) for a in attacks) + " |"
        )
    lines += [
        "",
        f"DP ({result['dp']['mode']}, clip C = {result['dp']['clip_norm']:.3g})",
        "",
        "| noise multiplier | epsilon (delta) | RMSE |",
        "|---|---|---|",
    ]
    for row in result["dp"]["rows"]:
        eps = (
            "inf (no DP)" if row["epsilon"] is None else f"{row['epsilon']:.3g} ({row['delta']:g})"
        )
        lines.append(f"| {row['noise_multiplier']:g} | {eps} | {_fmt(row['rmse'], clean)} |")
    return "\n".join(lines)


def robustness_command(
    *,
    data_dir: Path | None,
    sites: int,
    byzantine_fraction: float,
    rounds: int,
    seed: int,
    out: Path,
    attacks: str | None,
    defences: str | None,
    dp_noise_levels: list[float],
    threads: int,
) -> int:
    """``pdmfed eval robustness``: run the evaluation, print the table, write JSON; 0 on success."""
    from federation.console import fail

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        result = run_robustness_eval(
            str(data_dir) if data_dir else None,
            sites,
            byzantine_fraction,
            rounds,
            seed,
            str(out),
            attacks=[a for a in (attacks or ",".join(EVAL_ATTACKS)).split(",") if a],
            defences=[d for d in (defences or ",".join(DEFENCES)).split(",") if d],
            dp_noise_levels=dp_noise_levels,
        )
    except PdmFedError as exc:
        fail(f"robustness evaluation: {exc}")
    finally:
        torch.set_num_threads(previous_threads)
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(format_table(result)))
    print(f"\nwrote {out} in {result['seconds']} s")
    return 0


def robustness_main(argv: Sequence[str] | None = None) -> int:
    """``pdmfed eval robustness ARGS`` as a function (exit code)."""
    import sys

    from federation.cli import main

    return main(["eval", "robustness", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(robustness_main())
