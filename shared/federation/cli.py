"""`pdmfed`: the orchestrator's command line (demo, campaign, service, datasite, status, ...)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["main"]

_SERVICES = ("connector", "trainer-dispatch", "security", "aggregator")


def _run_demo(args: argparse.Namespace) -> int:
    from federation.orchestrator.demo import demo_main

    return demo_main(args)


def _run_campaign(args: argparse.Namespace) -> int:
    from federation.orchestrator.campaign_cli import campaign_main

    return campaign_main(args)


def _run_service(args: argparse.Namespace) -> int:
    from federation.runtime.launch import service_main

    return service_main(args.name)


def _run_status(args: argparse.Namespace) -> int:
    from federation.orchestrator.status import status_main

    return status_main(args)


def _passthrough(target: str) -> Callable[[argparse.Namespace], int]:
    """Hand the remaining arguments to a module's own `*_main(argv)`."""

    def run(args: argparse.Namespace) -> int:
        module_name, func_name = target.rsplit(":", 1)
        module = __import__(module_name, fromlist=[func_name])
        return int(getattr(module, func_name)(list(args.rest)) or 0)

    return run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pdmfed",
        description="Secure federated learning for predictive maintenance across factories.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the main job locally: 3 factories, 4 services, 5 secure rounds")
    demo.add_argument("--data", help="C-MAPSS directory (e.g. ../shared/data/cmapss/FD001); synthetic if omitted")
    demo.add_argument("--attack", choices=("scaling", "signflip", "none"), default="scaling",
                      help="what the compromised factory does (default: scaling)")
    demo.add_argument("--rounds", type=int, default=5)
    demo.add_argument("--sites", type=int, default=3)
    demo.add_argument("--model", choices=("cnn", "lstm", "hybrid"), default="cnn")
    demo.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-dp", action="store_true", help="turn record-level DP-SGD off")
    demo.add_argument("--record-noise", type=float, default=1.0,
                      help="DP-SGD noise multiplier at each factory (per-sample clip 1.0)")
    demo.add_argument("--max-epsilon", type=float, default=10.0,
                      help="record-level privacy budget per factory; the campaign stops before exceeding it")
    demo.add_argument("--client-dp", action="store_true",
                      help="also add client-level central DP-FedAvg noise (meaningful only with many factories)")
    demo.add_argument("--noise", type=float, default=0.01,
                      help="client-level DP noise multiplier z (std on the mean = z*clip/n)")
    demo.add_argument("--clip", type=float, default=5.0, help="client-level DP clipping norm C of each update")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.set_defaults(func=_run_demo)

    camp = sub.add_parser("campaign", help="run a campaign over RabbitMQ against running services")
    camp.add_argument("--config", required=True, help="campaign YAML")
    camp.add_argument("--out", default="runs")
    camp.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    camp.set_defaults(func=_run_campaign)

    svc = sub.add_parser("service", help="run one service (connector, trainer-dispatch, security, aggregator)")
    svc.add_argument("name", choices=_SERVICES)
    svc.set_defaults(func=_run_service)

    status = sub.add_parser("status", help="datasites, rounds and queue depths")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_run_status)

    ds = sub.add_parser("datasite", help="factory datasite commands")
    ds_sub = ds.add_subparsers(dest="datasite_command", required=True, metavar="SUBCOMMAND")
    launch = ds_sub.add_parser("launch", help="start a PySyft datasite holding a factory's partition",
                               add_help=False)
    launch.add_argument("rest", nargs=argparse.REMAINDER)
    launch.set_defaults(func=_passthrough("federation.datasite:datasite_main"))

    for name, target, text in (
        ("diagnose", "federation.monitoring.diagnostics:diagnose_main", "diagnose datasite connections"),
        ("validate-security", "federation.monitoring.diagnostics:validate_security_main",
         "check encryption, DP and Byzantine tolerance are working"),
        ("report", "federation.monitoring.report:report_main", "render a run folder's HTML report"),
    ):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_passthrough(target))

    ev = sub.add_parser("eval", help="evaluations (robustness table, quality)")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="WHAT")
    rob = ev_sub.add_parser("robustness", help="every defence x attack on the PdM task", add_help=False)
    rob.add_argument("rest", nargs=argparse.REMAINDER)
    rob.set_defaults(func=_passthrough("federation.robust.evaluation:robustness_main"))
    return parser


#: Subcommands that own their argument parsing: words -> "module:function(argv)".
_PASSTHROUGH = {
    ("diagnose",): "federation.monitoring.diagnostics:diagnose_main",
    ("validate-security",): "federation.monitoring.diagnostics:validate_security_main",
    ("report",): "federation.monitoring.report:report_main",
    ("datasite", "launch"): "federation.datasite:datasite_main",
    ("eval", "robustness"): "federation.robust.evaluation:robustness_main",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `pdmfed` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse's REMAINDER drops leading --flags, so hand these over before parsing.
    for words, target in _PASSTHROUGH.items():
        if tuple(argv[: len(words)]) == words:
            return _passthrough(target)(argparse.Namespace(rest=argv[len(words):]))
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("pdmfed: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one-line reason, non-zero exit; details only with --debug logging
        from federation.errors import PdmFedError

        if isinstance(exc, PdmFedError):
            print(f"pdmfed: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
