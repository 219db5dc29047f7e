"""Helpers for the stack test: the compose project it creates, waits, and what it leaves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES_ENV = ROOT / "build" / "images.env"
#: The images' user (deploy/docker/Dockerfile): it must own what the containers read or write.
IMAGE_UID = 10001
SERVICES = ("connector", "trainer-dispatch", "security", "aggregator")
FACTORIES = ("factory-1", "factory-2", "factory-3")
#: Everything but Grafana (no Debian package; its provisioning is validated offline).
STACK = ("rabbitmq", "redis", *SERVICES, *FACTORIES, "prometheus")


def compose_binary() -> str | None:
    """`docker-compose` (1.29 or v2 standalone); None when neither is installed."""
    return shutil.which("docker-compose")


def images_env() -> dict[str, str]:
    """What `make images` built: image tag, local image names, COMPOSE_FILE."""
    pairs = {}
    for line in IMAGES_ENV.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key] = value
    # compose resolves COMPOSE_FILE relative to the working directory: make it absolute
    pairs["COMPOSE_FILE"] = ":".join(str(ROOT / f) for f in pairs["COMPOSE_FILE"].split(":"))
    return pairs


def run(
    argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        argv,
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,  # noqa: S603
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv[:4])} … exited {result.returncode}:\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@dataclass
class Stack:
    """One compose project of the whole stack, under its own name."""

    project: str
    env: dict[str, str]
    root: Path
    prometheus_port: int
    started_at: float = field(default_factory=time.time)

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess:
        return run(
            [compose_binary(), "--project-name", self.project, *args],
            env=self.env,
            timeout=timeout,
            check=check,
        )

    def container(self, service: str) -> str:
        """The id of the (one) container of `service`."""
        out = self.compose("ps", "-q", service).stdout.split()
        assert len(out) == 1, f"{service}: containers {out}"
        return out[0]

    def inspect(self, service: str) -> dict:
        out = run(["docker", "inspect", self.container(service)]).stdout
        return json.loads(out)[0]

    def health(self, service: str) -> str:
        state = self.inspect(service)["State"]
        return (state.get("Health") or {}).get("Status", state["Status"])

    def wait_healthy(self, services: tuple[str, ...], timeout: float) -> dict[str, float]:
        """Seconds (since the stack was started) at which each service became healthy."""
        ready: dict[str, float] = {}
        deadline = time.time() + timeout
        while time.time() < deadline and len(ready) < len(services):
            for name in services:
                if name not in ready and self.health(name) == "healthy":
                    ready[name] = time.time() - self.started_at
            time.sleep(2)
        missing = [s for s in services if s not in ready]
        assert not missing, f"not healthy after {timeout:.0f}s: " + "; ".join(
            f"{s}={self.health(s)}: {self.logs(s)[-1500:]}" for s in missing
        )
        return ready

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "200", service, check=False).stdout

    def exec_python(self, service: str, code: str) -> str:
        return run(
            ["docker", "exec", self.container(service), "python", "-c", code], timeout=60
        ).stdout

    def service_metrics(self, service: str) -> str:
        """The service's own /metrics, read inside its container (the port is not published)."""
        return self.exec_python(
            service,
            "import urllib.request; print(urllib.request.urlopen("
            "'http://127.0.0.1:9100/metrics', timeout=5).read().decode())",
        )

    def crash(self, service: str) -> int:
        """SIGKILL the service's process from the host, as the OOM killer would; its restart
        count before. (`docker kill` marks the container as stopped by the operator, which
        the restart policy honours, so it would not come back by itself.)"""
        state = self.inspect(service)
        os.kill(int(state["State"]["Pid"]), 9)
        return int(state["RestartCount"])

    def query(self, expr: str) -> list[dict]:
        """An instant query against the stack's Prometheus (published on 127.0.0.1)."""
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": expr}
        )
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_query(
        self, expr: str, timeout: float, min_series: int = 1, services: frozenset[str] = frozenset()
    ) -> list[dict]:
        """Poll an instant query until it has `min_series` series, from at least `services`
        (one failed scrape under load marks a target's series stale for a scrape interval)."""
        deadline = time.time() + timeout
        result: list[dict] = []
        while time.time() < deadline:
            result = self.query(expr)
            seen = {s["metric"].get("service") for s in result}
            if len(result) >= min_series and services <= seen:
                return result
            time.sleep(2)
        raise AssertionError(f"Prometheus: {expr!r} gave {result} after {timeout:.0f}s")

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": run(["docker", "ps", "-aq", "--filter", label]).stdout.split(),
            "volumes": run(["docker", "volume", "ls", "-q", "--filter", label]).stdout.split(),
            "networks": run(["docker", "network", "ls", "-q", "--filter", label]).stdout.split(),
        }


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`, in a /metrics text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
