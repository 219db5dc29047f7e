"""`pdmfed` refuses bad input with one line and exit 2 before it starts anything; help for every flag."""

from __future__ import annotations

from importlib.metadata import version

import click
import pytest
import typer
from cli_helpers import run_pdmfed
from federation.cli import app

COMMANDS = [
    "demo",
    "campaign",
    "service",
    "status",
    "diagnose",
    "validate-security",
    "report",
    "export",
    "predict",
    "serve",
    "datasite",
    "eval",
    "keys",
    "data",
]


def _walk(command: click.Command, path: str):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, f"{path} {name}")


def test_when_asked_for_the_version__it_prints_one_line(tmp_path):
    run = run_pdmfed("--version", tmp_path=tmp_path)
    assert (run.returncode, run.stdout, run.stderr) == (
        0,
        f"pdmfed {version('pdm-federation')}\n",
        "",
    )


def test_when_help_is_asked__it_lists_exactly_the_commands_that_exist(tmp_path):
    root = typer.main.get_command(app)
    assert list(root.commands) == COMMANDS
    assert list(root.commands["eval"].commands) == ["robustness"]
    assert list(root.commands["datasite"].commands) == ["launch", "job-hash"]
    assert list(root.commands["keys"].commands) == ["init"]
    assert list(root.commands["data"].commands) == ["partition", "import"]
    run = run_pdmfed("--help", tmp_path=tmp_path)
    assert run.returncode == 0
    listed = [
        line.split()[1]
        for line in run.stdout.splitlines()
        if line.startswith("│ ") and line[2] != " "
    ]
    assert [w for w in listed if not w.startswith("-")] == COMMANDS
    assert "quality" not in run_pdmfed("eval", "--help", tmp_path=tmp_path).stdout


def test_every_flag_and_argument_of_every_command_has_help_text():
    missing = [
        f"{path} {param.name}"
        for path, command in _walk(typer.main.get_command(app), "pdmfed")
        for param in command.params
        if not (getattr(param, "help", None) or "").strip()
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["demo", "--sites", "6"],
            "pdmfed: invalid value for '--sites': 6 is not in the range 3<=x<=5 "
            "(see `pdmfed demo --help`)",
        ),
        (
            ["demo", "--rounds", "0"],
            "pdmfed: invalid value for '--rounds': 0 is not in the range 1<=x<=100 "
            "(see `pdmfed demo --help`)",
        ),
        (
            ["demo", "--record-noise", "0"],
            "pdmfed: invalid value for '--record-noise': 0.0 is not in the range "
            "x>0.0 (see `pdmfed demo --help`)",
        ),
        (
            ["demo", "--attack", "backdoor"],
            "pdmfed: invalid value for '--attack': 'backdoor' is not one of "
            "'scaling', 'signflip', 'none' (see `pdmfed demo --help`)",
        ),
        (
            ["demo", "--data", "no-such-dir"],
            "pdmfed: invalid value for '--data': Directory 'no-such-dir' does "
            "not exist (see `pdmfed demo --help`)",
        ),
        (["eval", "quality"], "pdmfed: no such command 'quality' (see `pdmfed eval --help`)"),
        (
            ["campaign", "--config", "missing.yaml"],
            "pdmfed: invalid value for '--config': File 'missing.yaml' "
            "does not exist (see `pdmfed campaign --help`)",
        ),
        (
            ["service", "dispatcher"],
            "pdmfed: invalid value for 'NAME': 'dispatcher' is not one of 'connector', "
            "'trainer-dispatch', 'security', 'aggregator' (see `pdmfed service --help`)",
        ),
        (["diagnose"], "pdmfed: no datasites given: use --datasite ID=URL or --config FILE"),
        (
            ["diagnose", "--datasite", "no-equals-sign"],
            "pdmfed: --datasite expects ID=URL, got 'no-equals-sign'",
        ),
        (
            ["eval", "robustness", "--dp-noise", "lots"],
            "pdmfed: --dp-noise must be comma-separated numbers, got 'lots'",
        ),
        (["frobnicate"], "pdmfed: no such command 'frobnicate' (see `pdmfed --help`)"),
    ],
)
def test_when_an_argument_is_bad__it_exits_2_with_one_line_and_starts_nothing(tmp_path, args, line):
    run = (
        run_pdmfed(*args, "--out", "runs", tmp_path=tmp_path)
        if args[0] == "demo"
        else run_pdmfed(*args, tmp_path=tmp_path)
    )
    assert (run.returncode, run.stderr, run.stdout) == (2, line + "\n", "")
    assert not (tmp_path / "runs").exists()
    assert run.leftover_processes == [] and run.leftover_tmp == []
    assert run.seconds < 30  # refused before any datasite was launched (one takes ~10 s)


def test_when_a_demo_out_path_is_a_file__it_is_refused_before_anything_starts(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    run = run_pdmfed("demo", "--out", "runs", tmp_path=tmp_path)
    assert run.returncode == 2
    assert (
        run.stderr
        == "pdmfed: invalid value for '--out': Directory 'runs' is a file (see `pdmfed demo --help`)\n"
    )
