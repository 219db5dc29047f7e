"""`pdmfed`: the command line (demo, campaign, service, status, datasite, diagnose, ...).

Adding a command group
----------------------
Put it in its own module as ``app = typer.Typer(help="...", no_args_is_help=True)``; keep that
module's top-level imports light (import torch, syft, aio-pika inside the command: `pdmfed
--help` must stay instant). Each command validates every argument before it starts anything
(typer's ``min=``/``max=``/``exists=``, enums for choices, ``federation.console.fail`` for the
rest) and fails with one line: ``fail("reason")`` prints ``pdmfed: reason`` and exits 2 (bad
input); ``fail("reason", EXIT_FAILED)`` exits 1. Return an int exit code. Then register it at the
bottom of this file with one line: ``app.add_typer(your_module.app, name="your-group")``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import click
import typer

from federation import keys_cli
from federation.console import fail, run_app
from federation.data_cli import app as data_app
from federation.roles import ENVELOPE_ROLES
from federation.runtime.registry import SERVICE_NAMES

__all__ = ["app", "main"]

#: A float option that must be > 0.
POSITIVE = click.FloatRange(min=0.0, min_open=True)

app = typer.Typer(
    name="pdmfed",
    help="Secure federated learning for predictive maintenance across factories.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"pdmfed {version('pdm-federation')}")
        except PackageNotFoundError:  # running from a source tree without an install
            typer.echo("pdmfed (not installed)")
        raise typer.Exit(0)


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Secure federated learning for predictive maintenance across factories."""


# --- demo ----------------------------------------------------------------------------------
class Attack(StrEnum):
    scaling = "scaling"
    signflip = "signflip"
    none = "none"


#: How many factories the demo can run (one per named factory datasite).
DEMO_MAX_SITES = 5


@app.command()
def demo(
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="C-MAPSS directory (e.g. ../shared/data/cmapss/FD001); "
            "a synthetic fleet if omitted",
        ),
    ] = None,
    attack: Annotated[
        Attack, typer.Option(help="what the compromised factory does")
    ] = Attack.scaling,
    rounds: Annotated[int, typer.Option(min=1, max=100, help="federated rounds to run")] = 5,
    sites: Annotated[
        int,
        typer.Option(
            min=3,
            max=DEMO_MAX_SITES,
            help="factory datasites to launch (3 are needed for Byzantine screening)",
        ),
    ] = 3,
    model: Annotated[
        str,
        typer.Option(
            help="model: cnn, lstm, hybrid, or an own model's package.module:function "
            "(installed here; the demo's factories approve it)"
        ),
    ] = "cnn",
    out: Annotated[
        Path, typer.Option(file_okay=False, help="parent folder of the run folder")
    ] = Path("runs"),
    seed: Annotated[int, typer.Option(min=0, help="seed of the data partition and training")] = 0,
    no_dp: Annotated[bool, typer.Option("--no-dp", help="turn record-level DP-SGD off")] = False,
    record_noise: Annotated[
        float | None,
        typer.Option(
            click_type=POSITIVE,
            help="DP-SGD noise multiplier at each factory (default: the private recipe's, "
            "calibrated so each factory ends the campaign at --max-epsilon)",
        ),
    ] = None,
    max_epsilon: Annotated[
        float | None,
        typer.Option(
            click_type=POSITIVE,
            help="record-level privacy budget per factory; the campaign stops before exceeding it "
            "(default: the best point of the private recipe's accuracy-epsilon curve, "
            "federation.privacy.recipe.DEFAULT_EPSILON)",
        ),
    ] = None,
    client_dp: Annotated[
        bool,
        typer.Option(
            "--client-dp",
            help="also add client-level central DP-FedAvg noise (meaningful only "
            "with many factories)",
        ),
    ] = False,
    noise: Annotated[
        float,
        typer.Option(
            min=0.0, help="client-level DP noise multiplier z (std on the mean = z*clip/n)"
        ),
    ] = 0.01,
    clip: Annotated[
        float,
        typer.Option(click_type=POSITIVE, help="client-level DP clipping norm C of each update"),
    ] = 5.0,
    json_out: Annotated[
        bool, typer.Option("--json", help="print the summary as JSON on stdout")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="show the services' and libraries' logs here instead of in the run folder's pdmfed.log",
        ),
    ] = False,
) -> int:
    """Run the main job locally: 3 factories, 4 services, 5 secure rounds (needs nothing running)."""
    from federation.orchestrator.demo import DemoOptions, demo_main

    if out.exists() and not out.is_dir():
        fail(f"--out {out} exists and is not a folder")
    opts = DemoOptions(
        data=str(data) if data else None,
        attack=attack.value,
        rounds=rounds,
        sites=sites,
        model=model,
        out=str(out),
        seed=seed,
        dp=not no_dp,
        json=json_out,
        noise_multiplier=noise,
        clip_norm=clip,
        client_dp=client_dp,
        record_noise=record_noise,
        **({} if max_epsilon is None else {"max_epsilon": max_epsilon}),
    )
    return demo_main(opts, verbose=verbose)


# --- campaign, service, status --------------------------------------------------------------
@app.command()
def campaign(
    config: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            help="campaign YAML (see examples/campaign.yaml)",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(file_okay=False, help="parent folder of the run folder (runs/<campaign_id>/)"),
    ] = Path("runs"),
    timeout: Annotated[
        float, typer.Option(click_type=POSITIVE, help="give up after this many seconds")
    ] = 3600.0,
    accept_timeout: Annotated[
        float,
        typer.Option(
            click_type=POSITIVE,
            help="give up when trainer-dispatch has not answered campaign.start (accepted or "
            "rejected) within this many seconds",
        ),
    ] = 30.0,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="follow the campaign already running under the config's campaign_id to its end "
            "(publish no campaign.start)",
        ),
    ] = False,
    data_card: Annotated[
        list[Path] | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="a factory's datacard.json (`pdmfed data import`), repeated per factory: the "
            "model bundle records them with their features and normalisation",
        ),
    ] = None,
) -> int:
    """Run a campaign over RabbitMQ against running services (PDMFED_AMQP_URL)."""
    from federation.orchestrator.campaign_cli import campaign_main

    return campaign_main(
        config=config,
        out=out,
        timeout=timeout,
        resume=resume,
        data_cards=data_card or [],
        accept_timeout=accept_timeout,
    )


#: `pdmfed service NAME`: the names of the service registry.
ServiceName = StrEnum("ServiceName", {n: n for n in SERVICE_NAMES})


@app.command()
def service(
    name: Annotated[
        ServiceName, typer.Argument(metavar="NAME", help="which service to run", show_default=False)
    ],
) -> int:
    """Run one service until SIGTERM/SIGINT (settings from PDMFED_* variables)."""
    from federation.runtime.launch import service_main

    return service_main(name.value)


@app.command()
def status(
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    service: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=URL",
            show_default=False,
            help="a service's metrics address to ask (repeatable; default: the four "
            "services at http://<name>:9100, as compose and k8s name them)",
        ),
    ] = None,
) -> int:
    """Ask each running service (its /readyz and /metrics) and the broker (queue depths)."""
    from federation.orchestrator.status import status_main

    services = None
    if service:
        services = {}
        for item in service:
            name, sep, url = item.partition("=")
            if not sep or not name or not url.startswith(("http://", "https://")):
                fail(f"--service must be NAME=http(s)://HOST:PORT, got {item!r}")
            services[name] = url
    return status_main(json_out=json_out, services=services)


# --- diagnostics ----------------------------------------------------------------------------
@app.command()
def diagnose(
    datasite: Annotated[
        list[str] | None,
        typer.Option(metavar="ID=URL", show_default=False, help="a datasite to check (repeatable)"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            show_default=False,
            exists=True,
            dir_okay=False,
            help="JSON/YAML file: [{datasite_id, url, "
            "credentials: {email, password_env}}], or the connector's datasite registry",
        ),
    ] = None,
    email: Annotated[
        str,
        typer.Option(envvar="PDMFED_DATASITE_ADMIN_EMAIL", help="admin email for the PySyft login"),
    ] = "admin@pdm-factory.com",
    timeout: Annotated[
        float, typer.Option(click_type=POSITIVE, help="seconds per network step")
    ] = 5.0,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> int:
    """Diagnose datasite connections (the admin password comes from PDMFED_DATASITE_ADMIN_PASSWORD)."""
    from federation.monitoring.diagnostics import diagnose_command

    return diagnose_command(
        datasites=datasite or [], config=config, email=email, timeout=timeout, json_out=json_out
    )


#: `validate-security --role`: every role that seals envelopes.
ComponentRole = StrEnum("ComponentRole", {r.value: r.value for r in ENVELOPE_ROLES})


@app.command("validate-security")
def validate_security(
    role: Annotated[
        ComponentRole,
        typer.Option(help="the component whose PDMFED_KEYS_DIR / PDMFED_SECRETS_DIR are checked"),
    ] = ComponentRole.orchestrator,
    self_test: Annotated[
        bool,
        typer.Option(
            "--self-test",
            help="instead of the deployment, self-test this library's encryption, DP and Byzantine detection",
        ),
    ] = False,
    no_dp: Annotated[
        bool, typer.Option("--no-dp", help="--self-test with differential privacy off")
    ] = False,
    no_bft: Annotated[
        bool, typer.Option("--no-bft", help="--self-test with Byzantine tolerance off")
    ] = False,
    noise_multiplier: Annotated[
        float, typer.Option(min=0.0, help="--self-test: DP noise multiplier to test")
    ] = 1.0,
    bft_threshold: Annotated[
        float, typer.Option(click_type=POSITIVE, help="--self-test: Byzantine detection threshold")
    ] = 2.0,
    min_clients: Annotated[
        int, typer.Option(min=2, help="--self-test: clients in the Byzantine test cohort")
    ] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> int:
    """Check the component PDMFED_* points at: secrets, own key, trust store, factory keys, broker."""
    from federation.monitoring import diagnostics

    if not self_test:
        given = [
            name
            for name, value, default in (
                ("--no-dp", no_dp, False),
                ("--no-bft", no_bft, False),
                ("--noise-multiplier", noise_multiplier, 1.0),
                ("--bft-threshold", bft_threshold, 2.0),
                ("--min-clients", min_clients, 3),
            )
            if value != default
        ]
        if given:
            fail(f"{', '.join(given)} only apply with --self-test")
        return diagnostics.validate_deployment_command(role=role.value, json_out=json_out)
    return diagnostics.validate_security_command(
        no_dp=no_dp,
        no_bft=no_bft,
        noise_multiplier=noise_multiplier,
        bft_threshold=bft_threshold,
        min_clients=min_clients,
        json_out=json_out,
    )


@app.command()
def report(
    run_dir: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="run folder holding summary.json", show_default=False
        ),
    ],
) -> int:
    """Render a run folder's HTML report and print its path."""
    from federation.monitoring.report import report_command

    return report_command(run_dir)


class ExportFormat(StrEnum):
    torchscript = "torchscript"
    onnx = "onnx"


class PredictFormat(StrEnum):
    csv = "csv"
    json = "json"


@app.command()
def export(
    run: Annotated[
        Path,
        typer.Argument(
            exists=True, help="a campaign's run folder (or its bundle.json)", show_default=False
        ),
    ],
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="torchscript (.pt) or onnx (.onnx)")
    ] = ExportFormat.torchscript,
    out: Annotated[
        Path | None,
        typer.Option(dir_okay=False, show_default=False, help="file to write (default: in RUN)"),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="verify on every window of this table (default: 256 seeded windows)",
        ),
    ] = None,
    schema: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="schema of --data (default: the bundle's)",
        ),
    ] = None,
) -> int:
    """Export a bundle's model; its predictions must equal PyTorch's within 1e-5 cycles."""
    from federation.model_cli import export_command

    return export_command(run, fmt=fmt.value, out=out, data=data, schema=schema)


#: A trained model: shared by `pdmfed predict` and `pdmfed serve`.
BundleOption = Annotated[
    Path, typer.Option(exists=True, help="a run folder or its bundle.json", show_default=False)
]
#: Normalisation statistics overriding the bundle's: shared by `predict` and `serve`.
NormalizerOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        show_default=False,
        help="normalisation statistics (default: the bundle's)",
    ),
]


@app.command()
def predict(
    bundle: BundleOption,
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="the units' recent cycles: .csv or .parquet, checked like `pdmfed data import`",
        ),
    ],
    schema: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="YAML schema of --data (default: the one the bundle records)",
        ),
    ] = None,
    normalizer: NormalizerOption = None,
    fmt: Annotated[PredictFormat, typer.Option("--format", help="csv or json")] = PredictFormat.csv,
    out: Annotated[
        Path | None,
        typer.Option(dir_okay=False, show_default=False, help="file to write (default: stdout)"),
    ] = None,
) -> int:
    """Remaining useful life per unit (in cycles) from a bundle and the units' latest cycles."""
    from federation.model_cli import predict_command

    return predict_command(
        bundle=bundle, data=data, schema=schema, normalizer=normalizer, fmt=fmt.value, out=out
    )


@app.command()
def serve(
    bundle: BundleOption,
    schema: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="YAML schema of posted data (default: the one the bundle records)",
        ),
    ] = None,
    normalizer: NormalizerOption = None,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
) -> int:
    """HTTP RUL endpoint: POST /predict (CSV, JSON rows or Parquet) → RUL per unit; /healthz, /metrics.

    The posted table is checked exactly as `pdmfed predict` checks --data; a bad one is a 422
    with the located error. Serves until SIGINT/SIGTERM.
    """
    from federation.model_cli import serve_command

    return serve_command(bundle=bundle, schema=schema, normalizer=normalizer, host=host, port=port)


# --- datasite ---------------------------------------------------------------------------------
datasite_app = typer.Typer(help="Factory datasite commands.", no_args_is_help=True)


@datasite_app.command("launch")
def datasite_launch(
    name: Annotated[
        str, typer.Option(help="datasite id, e.g. automotive_detroit_main", show_default=False)
    ],
    data: Annotated[
        Path,
        typer.Option(
            dir_okay=False,
            help="partition.npz (arrays X and y) from `pdmfed data import` or `pdmfed data partition`",
            show_default=False,
        ),
    ],
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 = any free port)")] = 0,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    keys_dir: Annotated[
        Path | None, typer.Option(file_okay=False, help="factory signing key directory")
    ] = None,
    allow_list: Annotated[
        Path | None,
        typer.Option(
            show_default=False,
            exists=True,
            dir_okay=False,
            help="file of approved request hashes (code + policies + bound assets), one a line",
        ),
    ] = None,
    admin_email: Annotated[
        str | None,
        typer.Option(show_default=False, help="admin account email (default: the launcher's)"),
    ] = None,
    orchestrator_email: Annotated[
        str | None,
        typer.Option(
            show_default=False, help="create this data-scientist account for the orchestrator"
        ),
    ] = None,
    demo: Annotated[bool, typer.Option("--demo", help="allow a generated admin password")] = False,
    approve_model: Annotated[
        list[str] | None,
        typer.Option(
            show_default=False,
            help="approve this own model (package.module:function) at the source installed "
            "here; repeatable. A changed source is a new request, left pending",
        ),
    ] = None,
) -> int:
    """Start a PySyft datasite holding a factory's partition; serve until SIGINT/SIGTERM.

    Passwords come from PDMFED_DATASITE_ADMIN_PASSWORD / PDMFED_DATASITE_ORCHESTRATOR_PASSWORD
    (or their files in PDMFED_SECRETS_DIR, as `pdmfed keys init` writes them), never the command
    line. Prints one JSON line (id, url, port, public key) once serving.
    """
    from federation.datasite.cli import launch_command

    return launch_command(
        name=name,
        data=data,
        port=port,
        host=host,
        keys_dir=keys_dir,
        allow_list=allow_list,
        admin_email=admin_email,
        orchestrator_email=orchestrator_email,
        demo=demo,
        approve_models=approve_model,
    )


@datasite_app.command("job-hash")
def datasite_job_hash(
    model: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="an own model (package.module:function): the hash of its job at the source "
            "installed here (default: the built-in models' job)",
        ),
    ] = None,
) -> int:
    """Print the request hash a datasite's allow-list file approves (one line)."""
    from federation.datasite.cli import job_hash_command

    return job_hash_command(model)


# --- eval -------------------------------------------------------------------------------------
eval_app = typer.Typer(help="Evaluations on the predictive-maintenance task.", no_args_is_help=True)


@eval_app.command("robustness")
def eval_robustness(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="C-MAPSS FD001 directory (default: ../shared/data/cmapss/FD001)",
        ),
    ] = None,
    sites: Annotated[int, typer.Option(show_default=False, min=3, help="simulated factories")] = 5,
    byzantine_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="share of factories that attack")
    ] = 0.2,
    rounds: Annotated[int, typer.Option(min=1, help="federated rounds per cell")] = 8,
    seed: Annotated[int, typer.Option(min=0, help="seed of partition, attacks and training")] = 0,
    out: Annotated[Path, typer.Option(dir_okay=False, help="JSON file to write")] = Path(
        ".pdmfed/robustness.json"
    ),
    attacks: Annotated[
        str | None, typer.Option(help="comma-separated subset of the attacks (default: all)")
    ] = None,
    defences: Annotated[
        str | None,
        typer.Option(
            show_default=False, help="comma-separated subset of the defences (default: all)"
        ),
    ] = None,
    dp_noise: Annotated[
        str, typer.Option(help="comma-separated noise multipliers for the DP rows")
    ] = "0.1,1.0",
    threads: Annotated[int, typer.Option(min=1, help="torch threads (the machine is shared)")] = 1,
) -> int:
    """Every defence x attack on the predictive-maintenance task: final test RMSE, and ε of the DP rows."""
    from federation.robust.evaluation import robustness_command

    try:
        noise_levels = [float(z) for z in dp_noise.split(",") if z]
    except ValueError:
        fail(f"--dp-noise must be comma-separated numbers, got {dp_noise!r}")
    return robustness_command(
        data_dir=data_dir,
        sites=sites,
        byzantine_fraction=byzantine_fraction,
        rounds=rounds,
        seed=seed,
        out=out,
        attacks=attacks,
        defences=defences,
        dp_noise_levels=noise_levels,
        threads=threads,
    )


# --- command groups: one line each (see the module docstring) ---------------------------------
app.add_typer(datasite_app, name="datasite")
app.add_typer(eval_app, name="eval")
app.add_typer(keys_cli.app, name="keys")
app.add_typer(data_app, name="data")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pdmfed` console script; returns the exit code."""
    return run_app(app, argv)


if __name__ == "__main__":
    sys.exit(main())
