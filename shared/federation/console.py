"""What every `pdmfed` command shares: one-line failures with an exit code, and a typer runner."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

__all__ = ["CommandFailed", "fail", "run_app", "EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED"]

#: Bad input (argument, file, environment): nothing was started.
EXIT_BAD_INPUT = 2
#: The command ran and did not reach its goal (the reason is printed).
EXIT_FAILED = 1
#: Stopped by Ctrl-C / SIGINT.
EXIT_INTERRUPTED = 130


class CommandFailed(Exception):
    """Stop a command: `pdmfed: <reason>` on stderr and this exit code."""

    def __init__(self, reason: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


def fail(reason: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Stop the running command with one line and an exit code (2 = bad input by default)."""
    raise CommandFailed(reason, code)


def _say(reason: str) -> None:
    text = " ".join(str(reason).split())  # one line, whatever the exception's text holds
    print(f"pdmfed: {text}", file=sys.stderr, flush=True)


def run_app(app: Any, argv: Sequence[str] | None = None, prog_name: str = "pdmfed") -> int:
    """Run a typer app on argv; every failure ends as one line on stderr and an exit code.

    Usage errors (unknown option, value out of range, missing file) and ``ConfigError`` exit 2,
    other project errors exit 1, Ctrl-C exits 130. An unexpected exception is one line too
    (its traceback follows only with ``PDMFED_DEBUG=1``).
    """
    import click
    import typer

    from federation.errors import ConfigError, PdmFedError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = typer.main.get_command(app)
    try:
        rv = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except CommandFailed as exc:
        _say(exc.reason)
        return exc.code
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        message = exc.format_message().rstrip(".")
        _say(
            f"{message[:1].lower()}{message[1:]} (see `{ctx.command_path if ctx else prog_name} --help`)"
        )
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, click.exceptions.Abort):
        _say("interrupted")
        return EXIT_INTERRUPTED
    except ConfigError as exc:
        _say(str(exc))
        return EXIT_BAD_INPUT
    except PdmFedError as exc:
        _say(str(exc))
        return EXIT_FAILED
    except Exception as exc:
        if os.environ.get("PDMFED_DEBUG"):
            raise
        _say(f"unexpected {type(exc).__name__}: {exc} (PDMFED_DEBUG=1 shows the traceback)")
        return EXIT_FAILED
    if rv == EXIT_INTERRUPTED:  # typer turns Ctrl-C inside a command into exit code 130
        _say("interrupted")
    return int(rv or 0)
