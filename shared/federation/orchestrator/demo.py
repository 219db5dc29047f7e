"""`pdmfed demo`: local PySyft factories + the four services + a secure campaign, needing nothing running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from federation.campaign import CampaignConfig, DatasiteRef
from federation.config import Settings
from federation.errors import ConfigError

__all__ = ["demo_main", "DemoOptions", "run_demo", "FACTORY_NAMES"]

log = logging.getLogger(__name__)

#: Factory datasite ids used by the demo (the seed's examples name these sites).
FACTORY_NAMES = (
    "automotive_detroit_main",
    "chemical_houston_reactor",
    "aerospace_seattle_assembly",
    "energy_rotterdam_turbines",
    "rail_lyon_depot",
)
_PASSWORD_ENV = "PDMFED_DATASITE_ADMIN_PASSWORD"


@dataclass
class DemoOptions:
    """What `pdmfed demo` runs."""

    data: str | None = None
    attack: str = "scaling"
    rounds: int = 5
    sites: int = 3
    model: str = "hybrid"
    out: str = "runs"
    seed: int = 0
    dp: bool = True
    json: bool = False
    epochs: int = 1
    max_batches: int | None = None
    timeout_s: float = 900.0
    noise_multiplier: float = 0.01
    clip_norm: float = 5.0
    client_dp: bool = False
    record_noise: float = 1.0
    max_epsilon: float | None = 10.0


def _partitions(opts: DemoOptions) -> tuple[Any, list[tuple[str, dict]]]:
    from federation.ml.data import load_dataset
    from federation.ml.partition import partition_engines, split_partition

    data = load_dataset(opts.data, seed=opts.seed)
    groups = partition_engines(data.train.engines, opts.sites, seed=opts.seed, mode="profile",
                               lifetimes=data.train_lifetimes)
    parts = split_partition(data.train, groups)
    ids = list(FACTORY_NAMES[: opts.sites])
    return data, [(ds, p.to_arrays()) for ds, p in zip(ids, parts, strict=True)]


def _evaluate(data: Any, model_type: str, state: dict) -> float:
    from federation.ml.train import evaluate

    return float(evaluate(state, data.test.X, data.test.y, model_type)["rmse"])


class _Progress:
    """Live progress per round (rich table rows as rounds complete)."""

    def __init__(self, data: Any, model_type: str, total_rounds: int, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, quiet=quiet)
        self.data = data
        self.model_type = model_type
        self.total = total_rounds
        self.test_rmse: dict[int, float] = {}
        self.started = time.time()

    def __call__(self, kind: str, p: dict, rec: Any) -> None:
        if kind == "round.open":
            self.console.print(f"[bold]round {p['round_num']}/{self.total}[/] opened: "
                               f"{len(p['cohort'])} factories training …")
        elif kind == "datasite.status" and p.get("status") == "failed":
            self.console.print(f"  [yellow]{p['datasite_id']} failed[/]: {p.get('detail', {}).get('error')}")
        elif kind == "round.completed":
            rn = int(p["round_num"])
            if p.get("global_model"):
                self.test_rmse[rn] = _evaluate(self.data, self.model_type, p["global_model"])
            eps = p.get("epsilon")
            if eps is None:
                eps = (p.get("metrics") or {}).get("record_epsilon_max")
            rej = p.get("rejected") or {}
            self.console.print(
                f"  round {rn}: participants {len(p['participants'])}, rejected {len(rej)}"
                f"{' ' + str(rej) if rej else ''}, Byzantine flagged {p.get('byzantine') or '-'}, "
                f"ε {'off' if eps is None else f'{eps:.2f}'}, test RMSE {self.test_rmse.get(rn, float('nan')):.2f}"
                f" ({time.time() - self.started:.0f}s)"
            )


def _summary_table(summary: dict) -> Any:
    from rich.table import Table

    t = Table(title=f"campaign {summary['campaign_id']} — {summary['final']['reason']}")
    for col in ("round", "test RMSE", "ε", "participants", "rejected", "Byzantine", "seconds"):
        t.add_column(col)
    for r in summary["rounds"]:
        t.add_row(str(r["round_num"]), f"{r['rmse']:.2f}" if r["rmse"] is not None else "-",
                  f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "off",
                  ", ".join(r["participants"]), ", ".join(f"{k}:{v}" for k, v in r["rejected"].items()) or "-",
                  ", ".join(r["byzantine"]) or "-", f"{r['duration_s']:.1f}" if r["duration_s"] else "-")
    return t


def _campaign_config(opts: DemoOptions, run_id: str, data: Any, sites: list[tuple[str, str]]) -> CampaignConfig:
    """The demo's campaign over these (datasite id, url) pairs (a ConfigError if opts are invalid)."""
    return CampaignConfig.from_payload(dict(
        campaign_id=f"demo-{run_id}",
        datasites=[DatasiteRef(datasite_id=ds, url=url, password_env=_PASSWORD_ENV).model_dump() for ds, url in sites],
        rounds=opts.rounds, round_timeout_s=300, quorum=2, seed=opts.seed,
        training={"model_type": opts.model, "epochs": opts.epochs, "learning_rate": 0.003,
                  "batch_size": 64, "n_features": data.n_features, "window": data.window,
                  "max_batches": opts.max_batches},
        # Client-level DP over 3 factories cannot give a meaningful ε (measured: ε in the
        # thousands before the model breaks), so the demo protects each factory's records with
        # DP-SGD at the datasite; --client-dp adds central DP-FedAvg noise on top.
        privacy={"enabled": opts.client_dp, "mode": "central", "noise_multiplier": opts.noise_multiplier,
                 "clip_norm": opts.clip_norm, "delta": 1e-5},
        record_privacy={"enabled": opts.dp, "noise_multiplier": opts.record_noise,
                        "max_grad_norm": 1.0, "max_epsilon": opts.max_epsilon},
        robustness={"enabled": True, "aggregation": "trimmed_mean", "threshold": 2.0, "min_clients": 3},
    ))


def check_options(opts: DemoOptions) -> None:
    """Refuse options the demo cannot run, before anything starts (ConfigError)."""
    if not 3 <= opts.sites <= len(FACTORY_NAMES):
        raise ConfigError(f"--sites must be between 3 and {len(FACTORY_NAMES)} (Byzantine screening needs 3; "
                          f"the demo names {len(FACTORY_NAMES)} factories), got {opts.sites}")
    if opts.attack not in ("scaling", "signflip", "none"):
        raise ConfigError(f"unknown attack {opts.attack!r}")
    if opts.data is not None and not Path(opts.data).is_dir():
        raise ConfigError(f"--data {opts.data} is not a folder")
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")

    class _Shape:  # the real n_features/window are known once the data is loaded
        n_features, window = 14, 30

    _campaign_config(opts, "check", _Shape(), [(ds, "http://127.0.0.1:1") for ds in FACTORY_NAMES[: opts.sites]])


async def run_demo(opts: DemoOptions) -> dict:
    """Run the demo end to end; returns the summary dict (and writes the run folder)."""
    from prometheus_client import CollectorRegistry

    from federation.communication import PySyftCommunicationManager
    from federation.crypto.signing import SigningIdentity, TrustStore
    from federation.datasite import launch_datasite
    from federation.orchestrator.embedded import EmbeddedFederation
    from federation.orchestrator.summary import build_summary, write_run

    check_options(opts)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{secrets.token_hex(2)}"
    run_dir = Path(opts.out) / run_id
    state_dir = run_dir / "state"
    settings = Settings(demo=True, state_dir=state_dir)
    if not settings.amqp_url:
        settings = Settings(demo=True, state_dir=state_dir, redis_url=None)
    # The demo's datasites get a random admin password that exists only in this process's env.
    os.environ.setdefault(_PASSWORD_ENV, secrets.token_urlsafe(24))
    data, parts = _partitions(opts)
    compromised = parts[-1][0] if opts.attack != "none" else None
    progress = _Progress(data, opts.model, opts.rounds, quiet=opts.json)
    progress.console.print(
        f"pdmfed demo: {opts.sites} factories on {'C-MAPSS ' + opts.data if opts.data else 'a synthetic fleet'}"
        f" ({len(data.train)} training windows, {len(data.test)} test engines), model {opts.model}, "
        f"{opts.rounds} rounds, record-level DP-SGD {'z=' + str(opts.record_noise) if opts.dp else 'off'}"
        f"{', client-level DP z=' + str(opts.noise_multiplier) if opts.client_dp else ''}, attack {opts.attack}"
        f"{' by ' + compromised if compromised else ''}; run folder {run_dir}")
    factory_keys = run_dir / "factory-keys"
    trust_dir = state_dir / "keys" / "factories"
    handles = []
    comm = PySyftCommunicationManager()
    fed = None
    try:
        for ds, arrays in parts:
            attack = opts.attack if ds == compromised else None
            handle = await asyncio.to_thread(
                launch_datasite, ds, None, arrays, signing_key_dir=factory_keys / ds, demo=True,
                datasite_id=ds, attack=attack,
            )
            handles.append(handle)
            pub = SigningIdentity.load(factory_keys / ds, ds)
            trust_dir.mkdir(parents=True, exist_ok=True)
            (trust_dir / f"{ds}.pub").write_bytes(pub.public_pem())
            progress.console.print(f"  datasite {ds} up at {handle.url} ({len(arrays['y'])} windows)")
        cfg = _campaign_config(opts, run_id, data, [(ds, h.url) for (ds, _), h in zip(parts, handles, strict=True)])
        registry = CollectorRegistry()
        fed = EmbeddedFederation(settings, comm_manager=comm, factory_trust=TrustStore.from_dir(trust_dir),
                                 registry=registry)
        await fed.start()
        assert fed.client is not None
        fed.client.on_event = progress
        record = await fed.run_campaign(cfg, timeout=opts.timeout_s)
        summary = build_summary(record, cfg.to_payload(), test_rmse=progress.test_rmse, registry=registry)
        summary["data"] = {"source": opts.data or "synthetic", "train_windows": int(len(data.train)),
                           "test_engines": int(len(data.test)), "attack": opts.attack,
                           "compromised": compromised}
        paths = write_run(run_dir, summary, record.final_model)
        progress.console.print(_summary_table(summary))
        progress.console.print(f"run folder: {run_dir} (model.msgpack, summary.json, report.html: {paths['report']})")
        return summary
    finally:
        if fed is not None:
            await fed.stop()
        comm.cleanup_all_connections()
        for h in handles:
            await asyncio.to_thread(h.stop)


def demo_main(opts: DemoOptions) -> int:
    """CLI entry: `pdmfed demo …`; 0 when the campaign reached its goal."""
    from federation.logs import setup_logging

    check_options(opts)  # before anything starts: no datasite, no run folder
    setup_logging("ERROR")  # progress is printed by the demo itself; rejections show in its table
    # PySyft prints progress to stdout from worker threads; the demo's own output is on stderr.
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        summary = asyncio.run(run_demo(opts))
    if opts.json:
        print(json.dumps(summary, indent=2, default=float))
    ok = summary["final"]["reason"] in ("max_rounds", "target_rmse", "privacy_budget")
    return 0 if ok else 1
