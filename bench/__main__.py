"""``python -m bench [--smoke] [--only NAME,...]``: run the benchmarks, then write BENCHMARKS.md.

Each benchmark runs in its own process (so one's memory never skews another's RSS figures)
and writes ``bench/results/<name>.json`` (``bench/results/smoke/<name>.json`` with --smoke);
the report is then regenerated from every JSON file present. Exit status 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench._common import RESULTS_DIR
from bench.report import BENCHMARKS, write_report

ROOT = Path(__file__).resolve().parents[1]


def _run_one(name: str, module: str, smoke: bool, out: Path) -> tuple[int, float]:
    cmd = [sys.executable, "-m", f"bench.{module}", "--out", str(out)]
    if smoke:
        cmd.append("--smoke")
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(cmd, cwd=str(ROOT), check=False).returncode
    return code, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configurations, seconds")
    parser.add_argument("--only", default=None, help="comma-separated benchmark names")
    parser.add_argument("--results-dir", type=Path, default=None, help="where the JSON goes")
    parser.add_argument("--report", type=Path, default=None, help="where the Markdown goes")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(BENCHMARKS))
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
    results = args.results_dir or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)
    report = args.report or (results / "BENCHMARKS.md" if args.smoke else ROOT / "BENCHMARKS.md")
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    total = time.perf_counter()
    for name in names:
        code, seconds = _run_one(name, BENCHMARKS[name], args.smoke, results / f"{name}.json")
        print(f"== {name}: exit {code} in {seconds:.1f} s", flush=True)
        if code != 0:
            failed.append(name)
    write_report(results, report, smoke=args.smoke)
    print(f"== all done in {time.perf_counter() - total:.1f} s; report {report}", flush=True)
    if failed:
        print(f"== failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
