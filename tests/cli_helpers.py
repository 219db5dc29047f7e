"""Drive the real `pdmfed` command as a user does: a subprocess, its exact output, what it leaves."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

#: torch creates its per-user compile cache in TMPDIR when torch._dynamo is imported: a cache
#: shared by every run of the user, not a temp folder a run leaves behind.
SHARED_CACHES = {f"torchinductor_{getpass.getuser()}"}

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


def _leftover_tmp(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.iterdir() if p.name not in SHARED_CACHES)


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
    return Run(proc.returncode, out, err, seconds, leftovers, _leftover_tmp(tmpdir))


@dataclass
class PtyRun:
    """One finished `pdmfed` run under a pseudo-terminal."""

    returncode: int
    #: every byte the terminal received (escape codes included)
    raw: bytes
    #: the screen a person sees at the end, trailing blank lines dropped
    screen: list[str]
    seconds: float
    #: seconds from Ctrl-C to the process's exit (None when not interrupted)
    stop_seconds: float | None
    leftover_processes: list[str]
    leftover_tmp: list[str]


def run_in_pty(
    *args: str,
    tmp_path: Path,
    env: dict[str, str] | None = None,
    rows: int = 24,
    cols: int = 80,
    timeout: float = 900,
    interrupt_when: bytes | None = None,
) -> PtyRun:
    """Run `pdmfed ARGS` in a ``rows`` x ``cols`` pseudo-terminal, emulating the screen.

    With ``interrupt_when``, Ctrl-C is typed as soon as that text has been shown.
    """
    import pexpect
    import pyte

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    full_env = {
        **(env if env is not None else clean_env()),
        "TMPDIR": str(tmpdir),
        "TERM": "xterm-256color",
    }
    full_env.pop("COLUMNS", None)
    full_env.pop("LINES", None)
    screen = pyte.Screen(cols, rows)
    stream = pyte.ByteStream(screen)
    raw = bytearray()
    started = time.monotonic()
    child = pexpect.spawn(
        PDMFED, list(args), env=full_env, cwd=str(tmp_path), dimensions=(rows, cols)
    )
    interrupted_at = None
    try:
        while True:
            try:
                chunk = child.read_nonblocking(
                    65536, timeout=max(1.0, timeout - (time.monotonic() - started))
                )
            except pexpect.EOF:
                break
            raw += chunk
            stream.feed(chunk)
            if interrupt_when is not None and interrupted_at is None and interrupt_when in raw:
                child.sendintr()
                interrupted_at = time.monotonic()
        child.wait()
    finally:
        if child.isalive():
            kill_session(child.pid)
            child.close(force=True)
    ended = time.monotonic()
    code = child.exitstatus if child.exitstatus is not None else 128 + (child.signalstatus or 0)
    time.sleep(0.2)
    leftovers = kill_session(child.pid)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return PtyRun(
        code,
        bytes(raw),
        lines,
        ended - started,
        None if interrupted_at is None else ended - interrupted_at,
        leftovers,
        _leftover_tmp(tmpdir),
    )
