"""Fixtures shared across tiers: a real Prometheus (used by integration and e2e tests)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent / "integration" / "prometheus"))
from prometheus_helpers import (  # noqa: E402
    SCRAPE_INTERVAL,
    PrometheusServer,
    free_port,
    prometheus_binary,
    wait_ready,
)


@pytest.fixture
def prometheus_server(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """Factory: ``prometheus_server({"connector": 9101, ...})`` (or a list of ports) starts a
    Prometheus on a free port scraping each ``127.0.0.1:<port>/metrics`` every second, with a
    ``service`` label per target, evaluating ``rule_files`` every second; data lives in
    tmp_path; it is stopped at teardown."""
    binary = prometheus_binary()
    started: list[subprocess.Popen] = []

    def _start(
        targets: dict[str, int] | Sequence[int], rule_files: Sequence[Path] = ()
    ) -> PrometheusServer:
        if not isinstance(targets, dict):
            targets = {f"target-{i}": port for i, port in enumerate(targets)}
        workdir = tmp_path / f"prometheus-{len(started)}"
        workdir.mkdir()
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": "pdmfed-services",
                    "honor_labels": True,
                    "scrape_timeout": SCRAPE_INTERVAL,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{port}"], "labels": {"service": name}}
                        for name, port in targets.items()
                    ],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        log = workdir / "prometheus.log"
        with log.open("w") as log_fh:
            process = subprocess.Popen(  # noqa: S603 - fixed binary, generated config
                [
                    binary,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--web.enable-lifecycle",
                ],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log)
        return PrometheusServer(url=url, process=process)

    yield _start
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
