"""A connector replica process whose datasites are in-process stand-ins signing with shared keys.

Run by bench/_replicas.py (replica tests and benchmark) like `pdmfed service connector`, with the same settings from the
environment plus ``REPLICA_FACTORY_KEYS`` (the factories' private keys, shared by both
connector replicas so either may train any datasite), ``REPLICA_MODEL`` (``kind:n_features:window``),
``REPLICA_SAMPLES`` (``f1=101,f2=102``: each datasite's sample count) and ``REPLICA_TRAIN_S``.
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


class SharedKeyDatasites(SleepingDatasites):
    """Stand-ins whose factory keys come from a directory and whose sample counts differ."""

    def __init__(self, keys_dir: Path, samples: dict[str, int], model: str, train_s: float) -> None:
        from federation.crypto.signing import SigningIdentity

        kind, n_features, window = model.split(":")
        template = model_template(kind, int(n_features), int(window))
        super().__init__(template, sorted(samples), train_s)
        self.samples = samples
        for ds in samples:
            self._identities[ds] = SigningIdentity.load(keys_dir, ds)

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
