"""A local stand-in for the datasites with the seed's comm-manager methods (unit tier only)."""

from __future__ import annotations

import numpy as np


class LocalDatasites:
    """In-process stand-in with the seed's comm-manager methods: trains with train_local on arrays.

    Unit tier only; the integration tier uses real PySyft datasites.
    """

    def __init__(
        self, partitions: dict[str, tuple[np.ndarray, np.ndarray]], attack: dict | None = None
    ):
        self.partitions = partitions
        #: datasite -> a function of its windows (n, window, F) giving the rows it claims instead
        self.stats_lie: dict = {}
        self.connected: set[str] = set()
        self.models: dict[str, dict] = {}
        self.attack = attack or {}
        self.fail_next: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []
        self.stats_calls: list[str] = []
        self.fail_next_stats: dict[str, int] = {}
        #: Datasites that stopped answering (their sessions drop at the next check).
        self.down: set[str] = set()

    def is_connected(self, datasite_id):
        return datasite_id in self.connected

    def connect_to_datasite(self, datasite_url, credentials):
        self.connected.add(credentials["datasite_id"])
        return True

    def send_model(self, model_parameters, datasite_id):
        self.models[datasite_id] = {k: v.clone() for k, v in model_parameters.items()}
        return True

    def request_stats(self, stats_config, datasite_id):
        """Round 0 as the datasite's statistics job computes it (unsigned: no factory key here)."""
        from federation.datasite.job import feature_columns
        from federation.ml.fedstats import window_stats

        self.stats_calls.append(datasite_id)
        if self.fail_next_stats.get(datasite_id, 0) > 0:
            self.fail_next_stats[datasite_id] -= 1
            return {"error": "simulated datasite failure"}
        X, _ = self.partitions[datasite_id]
        X = self.stats_lie.get(datasite_id, lambda w: w)(X)
        stats = window_stats(X, feature_columns(X.shape[2])).to_dict()
        return {
            "stats": stats,
            "datasite_id": datasite_id,
            "campaign_id": stats_config["campaign_id"],
        }

    def request_training(self, training_config, datasite_id):
        from federation.datasite.job import normalised_features
        from federation.ml.train import train_local

        self.calls.append((datasite_id, training_config["round_number"]))
        if self.fail_next.get(datasite_id, 0) > 0:
            self.fail_next[datasite_id] -= 1
            return {"error": "simulated datasite failure"}
        X, y = self.partitions[datasite_id]
        cfg = dict(training_config)
        normalizer = cfg.pop("normalizer", None)
        X = X if normalizer is None else normalised_features(X, normalizer)
        result = train_local(self.models[datasite_id], X, y, cfg, seed=cfg.get("seed", 0))
        factor = self.attack.get(datasite_id)
        if factor is not None:
            g = self.models[datasite_id]
            result["model_update"] = {
                k: g[k] + factor * (v - g[k]) if v.is_floating_point() else v
                for k, v in result["model_update"].items()
            }
        return result

    def get_connection_status(self):
        return {d: "connected" for d in self.connected}

    def check_connection(self, datasite_id):
        if datasite_id in self.down:
            self.connected.discard(datasite_id)
        return datasite_id in self.connected

    def datasite_answers(self, url):
        return url.rsplit("/", 1)[-1] not in self.down

    def disconnect_from_datasite(self, datasite_id):
        self.connected.discard(datasite_id)
        return True


def local_registry(directory, ids):
    """The connector's datasite registry for in-process stand-ins (``datasite_answers`` reads the
    id back from the URL)."""
    from federation.datasite_registry import DatasiteRegistry, write_registry

    return DatasiteRegistry.load(
        write_registry(
            directory,
            {
                ds: (f"http://local/{ds}", "connector@pdm-factory.com", "unit-test-password")
                for ds in ids
            },
        )
    )
