"""`pdmfed demo`: local PySyft factories + the four services + a secure campaign, needing nothing running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from federation.campaign import CampaignConfig
from federation.config import Settings
from federation.errors import ConfigError
from federation.privacy.recipe import (
    DEFAULT_EPSILON,
    RANDOM_START_RECIPE,
    RECIPE,
    recipe_noise,
)

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
#: The connector's data-scientist account at each demo factory (its own password per factory,
#: in the connector's datasite registry; each factory's admin password is random and stays in
#: its launcher).
DEMO_CONNECTOR_EMAIL = "connector@pdm-factory.com"


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
    #: DP-SGD noise multiplier; None: calibrated so each factory ends at ``max_epsilon``.
    record_noise: float | None = None
    #: Record-level epsilon per factory: the private recipe's best point (its benchmark curve).
    max_epsilon: float | None = DEFAULT_EPSILON


def demo_recipe(opts: DemoOptions) -> dict[str, Any]:
    """The private recipe the demo trains with: public pre-training on plant data (``--data``);
    on the embedded synthetic fleet, the public fleet's own generator, where pre-training would
    start at the answer and hide the federation's learning, the random-start recipe."""
    return RECIPE if opts.data else RANDOM_START_RECIPE


def with_record_noise(opts: DemoOptions, factory_windows: list[int]) -> DemoOptions:
    """``opts`` with the DP-SGD noise set: the given one, or the private recipe's
    (``federation.privacy.recipe``) for these factories to end the campaign at ``max_epsilon``."""
    if opts.record_noise is not None or not opts.dp:
        return opts
    if opts.max_epsilon is None:
        raise ConfigError("record-level DP needs a noise multiplier or an epsilon budget")
    noise = recipe_noise(
        factory_windows,
        opts.rounds,
        opts.max_epsilon,
        epochs=opts.epochs,
        max_batches=opts.max_batches,
        recipe=demo_recipe(opts),
    )
    return replace(opts, record_noise=noise)


def _partitions(opts: DemoOptions) -> tuple[Any, list[tuple[str, dict]]]:
    from federation.ml.data import load_dataset
    from federation.ml.partition import partition_engines, split_partition

    # Factories hold raw sensor windows: the campaign's round 0 agrees on how to z-score them.
    # (with each window row's operating settings: round 0 sums statistics per regime)
    data = load_dataset(opts.data, seed=opts.seed, normalise=False, keep_settings=True)
    groups = partition_engines(
        data.train.engines,
        opts.sites,
        seed=opts.seed,
        mode="profile",
        lifetimes=data.train_lifetimes,
    )
    parts = split_partition(data.train, groups)
    ids = list(FACTORY_NAMES[: opts.sites])
    return data, [(ds, p.to_arrays()) for ds, p in zip(ids, parts, strict=True)]


def federated_normalizer(raw: dict | None, features: Any) -> Any:
    """The campaign's round-0 statistics as a Normalizer named after the model's features."""
    from federation.ml.fedstats import named_normalizer

    if not raw:
        raise ConfigError("the campaign shipped no normalisation statistics (round 0 did not run)")
    return named_normalizer(raw, features)


def _test_windows(data: Any, normalizer: Any) -> Any:
    """The held-out test engines' last windows z-scored with the campaign's statistics (per
    operating regime when they are)."""
    return normalizer.transform_windows(data.test.X, data.test.settings)


def _evaluate(data: Any, model_type: str, state: dict, normalizer: Any) -> float:
    from federation.ml.train import evaluate

    return float(evaluate(state, _test_windows(data, normalizer), data.test.y, model_type)["rmse"])


def _held_out(opts: DemoOptions, data: Any, state: dict | None, normalizer: Any) -> dict | None:
    """The final model on the held-out test engines' last windows, next to a train-mean baseline."""
    import numpy as np

    from federation.ml.heldout import held_out_report
    from federation.ml.models import build_model
    from federation.ml.train import _load_state, predict

    if not state:
        return None
    model = build_model(opts.model, data.n_features, data.window)
    _load_state(model, state)
    split = (
        f"C-MAPSS test engines of {opts.data} (last window each, RUL capped at {data.rul_cap:g})"
        if opts.data
        else f"synthetic test engines (last window each, RUL capped at {data.rul_cap:g})"
    )
    return held_out_report(
        predict(model, _test_windows(data, normalizer)),
        data.test.y,
        float(np.mean(data.train.y)),
        split=split,
        units=data.test.engine_ids,
    )


def _alone(
    opts: DemoOptions,
    data: Any,
    parts: list[tuple[str, dict]],
    cfg: CampaignConfig,
    normalizer: Any,
) -> list:
    """Each factory's model on its own data, trained as long as the campaign, same test units
    (z-scored with the campaign's statistics, as the federation trained)."""
    import numpy as np

    from federation.ml.heldout import each_factory_alone

    rec = cfg.record_privacy
    dp = {"noise_multiplier": rec.noise_multiplier, "max_grad_norm": rec.max_grad_norm}
    from federation.ml.pretrain import initial_state

    scaled = [
        (ds, {**a, "X": normalizer.transform_windows(a["X"], a.get("settings"))}) for ds, a in parts
    ]
    return each_factory_alone(
        scaled,
        _test_windows(data, normalizer),
        data.test.y,
        float(np.mean(data.train.y)),
        training=cfg.training.model_dump(),
        dp=dp if rec.enabled else None,
        rounds=opts.rounds,
        seed=opts.seed,
        initial_state=initial_state(cfg.training, cfg.seed),  # the federation's own start
    )


def _bundle_info(
    opts: DemoOptions, data: Any, parts: list[tuple[str, dict]], normalizer: Any
) -> dict:
    """What the demo knows about its inputs, for the model bundle (federation.ml.bundle)."""
    import numpy as np

    from federation.ml.tabular import cmapss_schema

    source = opts.data or f"synthetic fleet (seed {opts.seed})"
    cards = [
        {
            "factory": ds,
            "source": source,
            "windows": int(len(arrays["y"])),
            "units": int(np.unique(arrays["engine_ids"]).shape[0]),
            "window": data.window,
            "features": list(data.features),
            "label": {"kind": "failure_at_last_cycle", "rul_cap": data.rul_cap},
            "normalizer_source": "federated: the campaign's round 0 summed every factory's sensor "
            "statistics",
        }
        for ds, arrays in parts
    ]
    return {
        "features": list(data.features),
        "normalizer": None if normalizer is None else normalizer.to_dict(),
        "rul_cap": data.rul_cap,
        "data_cards": cards,
        "schema": cmapss_schema(
            data.features, window=data.window, rul_cap=data.rul_cap, header=True
        ).to_dict(),  # fmt: skip
    }


def _campaign_config(opts: DemoOptions, run_id: str, data: Any, sites: list[str]) -> CampaignConfig:
    """The demo's campaign over these datasite ids (a ConfigError if opts are invalid)."""
    recipe = demo_recipe(opts)
    return CampaignConfig.from_payload(
        dict(
            campaign_id=f"demo-{run_id}",
            datasites=list(sites),
            rounds=opts.rounds,
            round_timeout_s=300,
            quorum=2,
            seed=opts.seed,
            training={
                "model_type": opts.model,
                "epochs": opts.epochs,
                "learning_rate": recipe["learning_rate"],
                "batch_size": recipe["batch_size"],
                "n_features": data.n_features,
                "window": data.window,
                "max_batches": opts.max_batches,
                "init": recipe["init"],
                "average_iterates": recipe["average_iterates"],
            },
            # Client-level DP over 3 factories cannot give a meaningful ε (measured: ε in the
            # thousands before the model breaks), so the demo protects each factory's records with
            # DP-SGD at the datasite; --client-dp adds central DP-FedAvg noise on top.
            privacy={
                "enabled": opts.client_dp,
                "mode": "central",
                "noise_multiplier": opts.noise_multiplier,
                "clip_norm": opts.clip_norm,
                "delta": 1e-5,
            },
            record_privacy={
                "enabled": True,
                "noise_multiplier": opts.record_noise,
                "max_grad_norm": recipe["max_grad_norm"],
                "max_epsilon": opts.max_epsilon,
                "accountant": recipe["accountant"],
            }
            if opts.dp
            else {"enabled": False},
            robustness={
                "enabled": True,
                "aggregation": "trimmed_mean",
                "threshold": 2.0,
                "min_clients": 3,
            },
        )
    )


def check_options(opts: DemoOptions) -> None:
    """Refuse options the demo cannot run, before anything starts (ConfigError)."""
    if not 3 <= opts.sites <= len(FACTORY_NAMES):
        raise ConfigError(
            f"--sites must be between 3 and {len(FACTORY_NAMES)} (Byzantine screening needs 3; "
            f"the demo names {len(FACTORY_NAMES)} factories), got {opts.sites}"
        )
    if opts.attack not in ("scaling", "signflip", "none"):
        raise ConfigError(f"unknown attack {opts.attack!r}")
    if opts.data is not None and not Path(opts.data).is_dir():
        raise ConfigError(f"--data {opts.data} is not a folder")
    out = Path(opts.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")

    class _Shape:  # the real n_features/window are known once the data is loaded
        n_features, window = 14, 30

    nominal = with_record_noise(opts, [demo_recipe(opts)["batch_size"]] * opts.sites)
    _campaign_config(nominal, "check", _Shape(), list(FACTORY_NAMES[: opts.sites])).check_model()


def new_run_id() -> str:
    """A run folder name: start time plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{secrets.token_hex(2)}"


def _bus_text(settings: Settings) -> str:
    if not settings.amqp_url:
        return "in-memory (this process only)"
    from urllib.parse import urlsplit

    url = urlsplit(settings.amqp_url)
    return f"RabbitMQ at {url.hostname}:{url.port or 5672}, vhost {url.path[1:] or '/'}"


def _short_url(url: str) -> str:
    return url.removeprefix("http://")


async def run_demo(
    opts: DemoOptions,
    *,
    run_dir: Path | None = None,
    console: Any = None,
    launched: list | None = None,
    display: Any = None,
) -> dict:
    """Run the demo end to end; returns the summary dict (and writes the run folder).

    ``console`` (rich) receives what a person sees; ``launched`` collects the datasite handles
    as they start (so an interrupted caller can stop them).
    """
    from prometheus_client import CollectorRegistry
    from rich.console import Console

    from federation.crypto.signing import SigningIdentity, TrustStore
    from federation.datasite import launch_datasite
    from federation.datasite_registry import DatasiteRegistry, write_registry
    from federation.ml.own_model import is_entry_point
    from federation.orchestrator.display import CampaignDisplay, results_table
    from federation.orchestrator.embedded import EmbeddedFederation
    from federation.orchestrator.summary import build_summary, write_run
    from federation.runtime.launch import connector_session_manager

    check_options(opts)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if run_dir is None:
        run_dir = Path(opts.out) / new_run_id()
    run_id = run_dir.name
    state_dir = run_dir / "state"
    settings = Settings(demo=True, state_dir=state_dir)
    if not settings.amqp_url:
        settings = Settings(demo=True, state_dir=state_dir, redis_url=None)
    console = console if console is not None else Console(stderr=True, quiet=opts.json)
    handles = launched if launched is not None else []
    if display is None:
        display = CampaignDisplay(console, opts.rounds, rmse_label="test RMSE")
    with display.status("preparing the factories' data …"):
        data, parts = _partitions(opts)
    opts = with_record_noise(opts, [len(arrays["y"]) for _, arrays in parts])
    training = _campaign_config(opts, run_id, data, [ds for ds, _ in parts]).training
    if training.init == "public":
        from federation.ml.pretrain import initial_state

        # Trained once per process: dispatch's campaign.start then takes it from the cache.
        with display.status("pre-training the starting model on the public synthetic fleet …"):
            initial_state(training, opts.seed)
    fed = None

    def campaign_normalizer() -> Any:
        assert fed is not None and fed.client is not None
        rec = fed.client.records.get(cfg.campaign_id)
        return federated_normalizer(rec.normalizer if rec else None, data.features)

    display.evaluate = lambda state: _evaluate(data, opts.model, state, campaign_normalizer())
    compromised = parts[-1][0] if opts.attack != "none" else None
    privacy = (
        f"record-level DP-SGD z={opts.record_noise:g}, ε budget {opts.max_epsilon:g} per factory"
        if opts.dp
        else "record-level DP off"
    )
    if opts.client_dp:
        privacy += f"; client-level DP z={opts.noise_multiplier:g}"
    logs = f" (logs: {LOG_FILE})" if (run_dir / LOG_FILE).exists() else ""
    console.print(
        f"[bold]pdmfed demo[/] · run folder {run_dir}{logs}", highlight=False, soft_wrap=True
    )
    display.info(
        "data",
        f"{'C-MAPSS ' + opts.data if opts.data else 'synthetic fleet'}: "
        f"{len(data.train)} training windows, {len(data.test)} test engines",
    )
    display.info(
        "campaign", f"{opts.rounds} rounds, model {opts.model}, Byzantine screening + trimmed mean"
    )
    display.info("privacy", privacy)
    display.info("services", "in this process: connector, trainer-dispatch, security, aggregator")
    display.info(
        "attack",
        f"{compromised} ({opts.attack} attack on its updates)"
        if compromised
        else "none (every factory is honest)",
    )
    display.info("bus", _bus_text(settings))
    factory_keys = run_dir / "factory-keys"
    trust_dir = state_dir / "keys" / "factories"
    comm = connector_session_manager()
    sites: dict[str, tuple[str, str, str]] = {}  # the connector's registry: id -> url, account
    try:
        width = max(len(ds) for ds, _ in parts)
        for ds, arrays in parts:
            attack = opts.attack if ds == compromised else None
            password = secrets.token_urlsafe(24)
            with display.status(f"starting PySyft datasite {ds} …"):
                handle = await asyncio.to_thread(
                    launch_datasite,
                    ds,
                    None,
                    arrays,
                    signing_key_dir=factory_keys / ds,
                    demo=True,
                    datasite_id=ds,
                    attack=attack,
                    orchestrator_email=DEMO_CONNECTOR_EMAIL,
                    orchestrator_password=password,
                    # the demo plays every factory: each approves the demo's own model, if any
                    approved_models=[opts.model] if is_entry_point(opts.model) else (),
                )
            handles.append(handle)
            sites[ds] = (handle.url, DEMO_CONNECTOR_EMAIL, password)
            pub = SigningIdentity.load(factory_keys / ds, ds)
            trust_dir.mkdir(parents=True, exist_ok=True)
            (trust_dir / f"{ds}.pub").write_bytes(pub.public_pem())
            display.info(
                "datasite",
                f"{ds:<{width}} {_short_url(handle.url)}  {len(arrays['y'])} windows",
            )
        cfg = _campaign_config(opts, run_id, data, [ds for ds, _ in parts])
        registry = CollectorRegistry()
        fed = EmbeddedFederation(
            settings,
            comm_manager=comm,
            datasite_registry=DatasiteRegistry.load(
                write_registry(state_dir / "connector" / "datasites", sites)
            ),
            factory_trust=TrustStore.from_dir(trust_dir),
            registry=registry,
        )
        await fed.start()
        assert fed.client is not None
        fed.client.on_event = display
        try:
            record = await fed.run_campaign(cfg, timeout=opts.timeout_s)
        finally:
            display.stop()
        summary = build_summary(
            record, cfg.to_payload(), test_rmse=display.test_rmse, registry=registry
        )
        summary["data"] = {
            "source": opts.data or f"synthetic fleet (seed {opts.seed})",
            "train_windows": int(len(data.train)),
            "test_engines": int(len(data.test)),
            "attack": opts.attack,
            "compromised": compromised,
        }
        normalizer = (  # None: round 0 ended the campaign (too few factories answered)
            federated_normalizer(record.normalizer, data.features) if record.normalizer else None
        )
        evaluation = _held_out(opts, data, record.final_model, normalizer) if normalizer else None
        if evaluation is not None:
            with display.status("training each factory alone on its own data, for comparison …"):
                evaluation["alone"] = await asyncio.to_thread(
                    _alone, opts, data, parts, cfg, normalizer
                )
        summary["evaluation"] = evaluation
        info = _bundle_info(opts, data, parts, normalizer)
        if evaluation is not None:
            info["evaluation"] = {k: v for k, v in evaluation.items() if k != "pairs"}
        write_run(run_dir, summary, record.final_model, bundle=info)
        console.print(results_table(summary, opts.rounds, "test RMSE"))
        console.print(f"report: {run_dir / 'report.html'}", highlight=False, soft_wrap=True)
        return summary
    finally:
        if fed is not None:
            await fed.stop()
        comm.cleanup_all_connections()
        for h in handles:
            await asyncio.to_thread(h.stop)


#: The demo's log file in its run folder (third-party output included).
LOG_FILE = "pdmfed.log"
#: Written into a run folder whose demo did not finish.
INCOMPLETE_FILE = "INCOMPLETE"


def _kill_datasites(handles: list) -> None:
    """Kill every datasite's server processes and remove their temp folders, waiting 1 s at most.

    All are killed before any is waited for: a killed grandchild stays a zombie until its new
    parent reaps it, so waiting datasite by datasite could cost the whole timeout each time.
    """
    import shutil

    import psutil

    procs = []
    for h in handles:
        try:
            root = psutil.Process(h.pid)
            procs += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=1.0)
    for h in handles:
        shutil.rmtree(h.temp_root, ignore_errors=True)


def demo_main(opts: DemoOptions, *, verbose: bool = False) -> int:
    """CLI entry: `pdmfed demo …`; 0 when the campaign reached its goal.

    Third-party output (uvicorn, PySyft, tqdm, warnings, the services' logs) goes to
    ``pdmfed.log`` in the run folder, or to the terminal with ``verbose``. Ctrl-C stops the
    datasites and services at once and marks the run folder incomplete.
    """
    from rich.console import Console

    from federation.console import EXIT_INTERRUPTED, fail
    from federation.logs import divert_output, setup_logging
    from federation.orchestrator.display import CampaignDisplay, outcome

    check_options(opts)  # before anything starts: no datasite, no run folder
    run_dir = Path(opts.out) / new_run_id()
    try:
        run_dir.mkdir(parents=True)
    except OSError as exc:
        fail(f"cannot create the run folder {run_dir}: {exc.strerror}")
    launched: list = []
    try:  # measured before stdout/stderr are diverted to the log file
        width: int | None = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        width = None
    with divert_output(None if verbose else run_dir / LOG_FILE) as user_stream:
        setup_logging("INFO")
        console = Console(file=user_stream, quiet=opts.json, width=width)

        display = CampaignDisplay(console, opts.rounds, rmse_label="test RMSE")

        def interrupted(signum: int, frame: Any) -> None:
            # Stop now, from the signal handler: training threads blocked on a datasite would
            # otherwise hold the interpreter for many seconds of HTTP retries.
            signal.signal(signal.SIGINT, lambda *_: os._exit(EXIT_INTERRUPTED))
            display.stop()
            _kill_datasites(launched)
            (run_dir / INCOMPLETE_FILE).write_text(
                "interrupted (Ctrl-C) before the campaign finished\n"
            )
            console.print(
                f"pdmfed: interrupted; run folder {run_dir} marked incomplete",
                highlight=False,
                soft_wrap=True,
            )
            logging.shutdown()
            os._exit(EXIT_INTERRUPTED)

        previous = signal.signal(signal.SIGINT, interrupted)
        try:
            summary = asyncio.run(
                run_demo(opts, run_dir=run_dir, console=console, launched=launched, display=display)
            )
        except BaseException as exc:
            (run_dir / INCOMPLETE_FILE).write_text(f"failed: {type(exc).__name__}: {exc}\n")
            raise
        finally:
            signal.signal(signal.SIGINT, previous)
    if opts.json:
        print(json.dumps(summary, indent=2, default=float))
    ok, sentence = outcome(summary["final"]["reason"], summary["final"]["rounds"], opts.rounds)
    if not ok:
        fail(f"demo {sentence}", 1)
    return 0
