"""A connector replica process whose datasites are in-process stand-ins signing with shared keys.

Run by bench/_replicas.py (replica tests and benchmark) like `pdmfed service connector`, with the same settings from the
environment plus ``REPLICA_FACTORY_KEYS`` (the factories' private keys, shared by both
connector replicas so either may train any datasite), ``REPLICA_MODEL`` (``kind:n_features:window``),
``REPLICA_SAMPLES`` (``f1=101,f2=102``: each datasite's sample count), ``REPLICA_TRAIN_S`` and
``REPLICA_LIARS`` (``f4=scaled,f5=impossible``: compromised factories whose signed round-0
statistics lie, see ``LIES``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._standins import SleepingDatasites, model_template  # noqa: E402


def _scaled(stats: dict) -> dict:
    """Every value x1000: plausible statistics (sum**2 <= n sum of squares) of another fleet."""
    for regime in stats["regimes"]:
        regime["sum"] = [str(int(v) * 1000) for v in regime["sum"]]
        regime["sumsq"] = [str(int(v) * 1_000_000) for v in regime["sumsq"]]
    return stats


def _impossible(stats: dict) -> dict:
    """Sums of squares of zero under non-zero sums: no partition has these."""
    for regime in stats["regimes"]:
        regime["sumsq"] = ["0" for _ in regime["sumsq"]]
    return stats


#: How a compromised factory's stand-in lies about its round-0 statistics (still signed).
LIES = {"scaled": _scaled, "impossible": _impossible}


class SharedKeyDatasites(SleepingDatasites):
    """Stand-ins whose factory keys come from a directory and whose sample counts differ."""

    def __init__(
        self,
        keys_dir: Path,
        samples: dict[str, int],
        model: str,
        train_s: float,
        liars: dict[str, str] | None = None,
    ) -> None:
        from federation.crypto.signing import SigningIdentity

        kind, n_features, window = model.split(":")
        template = model_template(kind, int(n_features), int(window))
        super().__init__(template, sorted(samples), train_s)
        self.samples = samples
        self.liars = dict(liars or {})
        for ds in samples:
            self._identities[ds] = SigningIdentity.load(keys_dir, ds)

    def _reported_stats(self, datasite_id: str, stats):  # noqa: ANN001, ANN202 - SensorStats
        reported = stats.to_dict()
        lie = self.liars.get(datasite_id)
        return LIES[lie](reported) if lie else reported

    def request_training(self, training_config: dict, datasite_id: str) -> dict:
        start = time.perf_counter()
        time.sleep(self.train_s)
        seconds = time.perf_counter() - start
        result = {
            "delta": self.deltas[datasite_id],
            "num_samples": self.samples[datasite_id],
            "loss": 1.0,
            "rmse": 1.0,
            "accuracy": 0.0,
            "training_time": seconds,
        }
        return self._signed(result, training_config, datasite_id)


def _samples(spec: str) -> dict[str, int]:
    return {ds: int(n) for ds, n in (item.split("=") for item in spec.split(","))}


def _liars(spec: str) -> dict[str, str]:
    return dict(item.split("=") for item in spec.split(",") if item)


async def _run() -> None:
    from federation.config import Settings
    from federation.logs import setup_logging
    from federation.runtime.launch import load_datasite_registry, start_node, widen_thread_pool

    settings = Settings()
    setup_logging(settings.log_level)
    comm = SharedKeyDatasites(
        Path(os.environ["REPLICA_FACTORY_KEYS"]),
        _samples(os.environ["REPLICA_SAMPLES"]),
        os.environ["REPLICA_MODEL"],
        float(os.environ.get("REPLICA_TRAIN_S", "0.2")),
        _liars(os.environ.get("REPLICA_LIARS", "")),
    )
    widen_thread_pool()
    node = await start_node(
        "connector", settings, comm_manager=comm, datasite_registry=load_datasite_registry(settings)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await node.stop()


if __name__ == "__main__":
    asyncio.run(_run())
