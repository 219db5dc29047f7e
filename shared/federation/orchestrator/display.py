"""What a person sees of a campaign: set-up lines, one live line per round, the results table."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

__all__ = ["CampaignDisplay", "RoundProgress", "outcome", "results_table", "rounds_table"]

#: Campaign end reasons that mean "the goal was reached".
GOAL_REASONS = ("max_rounds", "target_rmse")


def outcome(reason: str, rounds_done: int, rounds_planned: int) -> tuple[bool, str]:
    """(goal reached?, one honest sentence) for a campaign that ended with ``reason``."""
    if reason == "max_rounds":
        return True, f"all {rounds_planned} rounds completed"
    if reason == "target_rmse":
        return True, f"target RMSE reached after {rounds_done} of {rounds_planned} rounds"
    if reason == "privacy_budget":
        return False, (
            f"stopped after {rounds_done} of {rounds_planned} rounds: the next round would "
            "exceed the privacy budget"
        )
    if reason == "no_quorum":
        return False, (
            f"stopped at round {rounds_done} of {rounds_planned}: too few screened updates to "
            "publish a model (quorum)"
        )
    if reason == "incomplete":
        return False, f"incomplete: {rounds_done} of {rounds_planned} rounds completed"
    return False, f"stopped after {rounds_done} of {rounds_planned} rounds: {reason}"


def _names(ids: list[str] | set[str]) -> str:
    return ", ".join(sorted(ids))


@dataclass
class RoundProgress:
    """What is known of the open round, from the events the orchestrator follows."""

    round_num: int
    cohort: list[str]
    opened: float = field(default_factory=time.monotonic)
    received: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    closed: bool = False

    def line(self, total: int) -> Text:
        """The live line: who is training, whose update arrived, what is being screened."""
        head = f"round {self.round_num}/{total}  {time.monotonic() - self.opened:4.0f}s  "
        parts = []
        if not self.closed:
            training = [d for d in self.cohort if d not in self.received and d not in self.failed]
            if training:
                parts.append(f"training: {_names(training)}")
            if self.received:
                parts.append(f"received: {_names(self.received)}")
        else:
            parts.append(f"screening and aggregating {len(self.received)} updates")
        if self.rejected:
            parts.append("rejected: " + _names(self.rejected))
        if self.failed:
            parts.append("failed: " + _names(self.failed))
        return Text(head + " · ".join(parts))


class CampaignDisplay:
    """Feeds on the orchestrator's events (``CampaignClient.on_event``) and shows them to a person.

    In a terminal, the finished rounds' table grows in place with the open round's progress line
    under it (``start``/``stop``; the caller prints ``results_table`` at the end). Elsewhere (a
    pipe, a file, CI) each finished round is one permanent line, with no escape codes.
    """

    def __init__(
        self,
        console: Console,
        total_rounds: int,
        evaluate: Callable[[dict], float] | None = None,
        rmse_label: str = "RMSE",
    ) -> None:
        self.console = console
        self.total = total_rounds
        self.evaluate = evaluate
        self.rmse_label = rmse_label
        self.test_rmse: dict[int, float] = {}
        self.rows: list[dict] = []
        self.round: RoundProgress | None = None
        self._live: Live | None = None
        self._spinner: Live | None = None

    # --- the live region ---------------------------------------------------------------------
    def __rich__(self) -> Any:
        line = self.round.line(self.total) if self.round is not None else Text("")
        if not self.rows:
            return line
        done = len(self.rows)
        return Group(
            rounds_table(self.rows, f"{done} of {self.total} rounds done", self.rmse_label), line
        )

    def start(self) -> None:
        """Show the live region (a no-op outside a terminal)."""
        if self._live is None and self.console.is_terminal:
            self._live = Live(
                self,
                console=self.console,
                transient=True,
                refresh_per_second=4,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()

    def stop(self) -> None:
        """Remove the live region and any spinner."""
        for live in (self._live, self._spinner):
            if live is not None:
                live.stop()
        self._live = self._spinner = None

    @contextlib.contextmanager
    def status(self, text: str) -> Iterator[None]:
        """A transient spinner line while ``text`` is under way (terminal only; ``stop`` ends it).

        sys.stdout/stderr are left alone: a datasite forked meanwhile must not inherit a proxy
        that writes its logs onto the user's terminal.
        """
        if not self.console.is_terminal:
            yield
            return
        self._spinner = Live(
            Spinner("dots", text),
            console=self.console,
            transient=True,
            refresh_per_second=8,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._spinner.start()
        try:
            yield
        finally:
            self.stop()

    def info(self, label: str, text: str) -> None:
        """A set-up line: ``label  text``."""
        self.console.print(f"  [bold]{label:<9}[/] {text}", highlight=False, soft_wrap=True)

    # --- events ------------------------------------------------------------------------------
    def __call__(self, kind: str, p: dict, rec: Any = None) -> None:
        if kind == "round.open":
            if int(p["round_num"]) == 1 and p.get("global_model") and self.evaluate is not None:
                self.test_rmse[0] = self.evaluate(p["global_model"])  # round 0: the initial model
            self.round = RoundProgress(int(p["round_num"]), list(p.get("cohort") or []))
            self.start()
            return
        if kind == "round.completed":
            self._completed(p)
            return
        rnd = self.round
        round_num = p.get("round_num", (p.get("detail") or {}).get("round_num"))
        if rnd is None or round_num is None or int(round_num) != rnd.round_num:
            return
        if kind == "datasite.status":
            if p.get("status") == "trained":
                rnd.received.add(p["datasite_id"])
            elif p.get("status") == "failed":
                rnd.failed[p["datasite_id"]] = str((p.get("detail") or {}).get("error") or "failed")
        elif kind == "update.rejected":
            rnd.rejected[p["datasite_id"]] = str(p.get("reason"))
        elif kind == "round.close":
            rnd.closed = True
            rnd.failed.update({k: str(v) for k, v in (p.get("failed") or {}).items()})

    def _completed(self, p: dict) -> None:
        from federation.orchestrator.summary import round_entry

        rn = int(p["round_num"])
        if p.get("global_model") and self.evaluate is not None:
            self.test_rmse[rn] = self.evaluate(p["global_model"])
        row = round_entry(p, self.test_rmse)
        if row["duration_s"] is None and self.round is not None and self.round.round_num == rn:
            row["duration_s"] = time.monotonic() - self.round.opened
        self.rows = [r for r in self.rows if r["round_num"] != rn] + [row]
        self.round = None
        if self._live is None:  # not a terminal: one permanent line per round
            left_out = _left_out(row)
            self.console.print(
                f"round {rn}/{self.total}  {_seconds(row)}  {self.rmse_label} {_num(row['rmse'])}  "
                f"ε {_num(row['epsilon'], 'off')}  kept {_kept(row)}"
                + (f"  left out: {', '.join(left_out)}" if left_out else ""),
                highlight=False,
                soft_wrap=True,
            )


def _num(value: float | None, missing: str = "-") -> str:
    return missing if value is None else f"{value:.2f}"


def _seconds(row: dict) -> str:
    return "-" if not row.get("duration_s") else f"{row['duration_s']:.1f}s"


def _left_out(row: dict) -> list[str]:
    return [f"{k}: {v}" for k, v in sorted({**row.get("failed", {}), **row["rejected"]}.items())]


def _kept(row: dict) -> str:
    return f"{len(row['participants'])}/{len(row['participants']) + len(_left_out(row))}"


def rounds_table(rows: list[dict], title: str, rmse_label: str = "RMSE") -> Table:
    """One row per round: RMSE, ε, updates kept, who was left out and why, the round's time."""
    table = Table(
        title=title,
        title_justify="left",
        min_width=len(title),  # a title wider than the columns is not wrapped (piped output too)
        highlight=False,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    table.add_column("round", justify="right")
    table.add_column(rmse_label, justify="right")
    table.add_column("ε", justify="right")
    table.add_column("kept", justify="right")
    table.add_column("left out: why")
    table.add_column("time", justify="right")
    for r in rows:
        table.add_row(
            str(r["round_num"]),
            _num(r["rmse"]),
            _num(r["epsilon"], "off"),
            _kept(r),
            "\n".join(_left_out(r)) or "-",
            _seconds(r),
        )
    return table


def results_table(summary: dict, rounds_planned: int, rmse_label: str = "RMSE") -> Table:
    """The finished campaign's table, titled with what happened (e.g. "all 5 rounds completed")."""
    final = summary["final"]
    _, sentence = outcome(str(final["reason"]), int(final["rounds"]), rounds_planned)
    return rounds_table(summary["rounds"], f"{summary['campaign_id']}: {sentence}", rmse_label)
