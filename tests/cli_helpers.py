"""Drive the real `pdmfed` command as a user does: a subprocess, its exact output, what it leaves."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

#: The console script of the environment running the tests.
PDMFED = str(Path(sys.executable).with_name("pdmfed"))


@dataclass
class Run:
    """One finished `pdmfed` run."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    #: processes of the run's session still alive after it exited (killed by `run`)
    leftover_processes: list[str]
    #: what the run left in its private TMPDIR
    leftover_tmp: list[str]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any PDMFED_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PDMFED_")}
    env.update(extra)
    return env


def session_processes(sid: int) -> list[psutil.Process]:
    """Every live process of session ``sid``."""
    out = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def kill_session(sid: int) -> list[str]:
    """Kill what is left of session ``sid``; returns the command lines it had."""
    procs = session_processes(sid)
    names = []
    for proc in procs:
        try:
            names.append(" ".join(proc.cmdline()) or proc.name())
            proc.kill()
        except psutil.Error:
            continue
    return names


def run_pdmfed(
    *args: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> Run:
    """Run `pdmfed ARGS` in its own session and TMPDIR; report its output and leftovers."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    full_env = {
        **(env if env is not None else clean_env()),
        "TMPDIR": str(tmpdir),
        "COLUMNS": "100",
    }
    started = time.monotonic()
    proc = subprocess.Popen(
        [PDMFED, *args],
        env=full_env,
        cwd=cwd or tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
            proc.wait()
    seconds = time.monotonic() - started
    time.sleep(0.2)  # a child that outlives its parent shows up here
    leftovers = kill_session(proc.pid)
    return Run(
        proc.returncode, out, err, seconds, leftovers, sorted(p.name for p in tmpdir.iterdir())
    )
