"""Round 0 poisoned by compromised factories, over RabbitMQ and the real service processes."""

from __future__ import annotations

import asyncio
import time

import pytest
from federation.orchestrator.summary import build_summary, write_run
from replica_helpers import rabbit_unavailable, rounds_by_number

from bench._replicas import Cluster, campaign_config, prepare, run_campaigns
from bench._standins import SleepingDatasites

pytestmark = pytest.mark.integration

HONEST = ["f1", "f2", "f3"]
#: Two compromised factories sign statistics that lie: one plausible (every value x1000, another
#: fleet's), one impossible (sums of squares of zero under non-zero sums).
LIARS = {"f4": "scaled", "f5": "impossible"}
IDS = [*HONEST, *LIARS]
SAMPLES = {ds: 100 + i for i, ds in enumerate(IDS)}
#: Round 0's deadline: an impossible statistic must not make trainer-dispatch wait for it.
ROUND_TIMEOUT_S = 240


def _honest_normalizer() -> dict:
    """What round 0 must ship: the robust merge of the honest factories' statistics alone."""
    from federation.datasite.job import feature_columns
    from federation.ml.fedstats import window_stats
    from federation.ml.robust_stats import robust_merge

    sites = SleepingDatasites({}, HONEST, train_s=0)
    parts = {}
    for ds in HONEST:
        windows = sites._raw_windows(ds)
        parts[ds] = window_stats(windows, feature_columns(windows.shape[2]))
    return robust_merge(parts).normalizer.to_dict()


def test_when_factories_poison_round_0__the_campaign_normalises_with_the_honest_ones_at_once(
    pg_url, tmp_path
):
    reason = rabbit_unavailable()
    if reason is not None:
        pytest.skip(reason)
    settings, env, prefix = prepare(tmp_path, pg_url, IDS, SAMPLES, train_s=0.2, params=20_000)
    env["REPLICA_LIARS"] = ",".join(f"{ds}={lie}" for ds, lie in LIARS.items())
    cluster = Cluster(tmp_path, env, count=1)
    cfg = campaign_config(f"{prefix}-c", IDS, 1, ROUND_TIMEOUT_S, params=20_000)
    cfg = type(cfg).model_validate({**cfg.to_payload(), "quorum": len(HONEST)})
    start = time.time()
    (record,) = asyncio.run(
        run_campaigns(settings, prefix, [cfg], cluster, False, 300, 0)
    )  # fmt: skip
    logs = "\n".join(cluster.log(key)[-3000:] for key in sorted(cluster.replicas))
    assert record.completed is not None and record.completed["reason"] == "max_rounds", logs
    # round 1 opened long before round 0's deadline: security refused the impossible
    # statistics at once (stats.rejected) instead of trainer-dispatch waiting for them
    assert record.opened[1] - start < ROUND_TIMEOUT_S / 2, logs
    # the shipped normaliser is the honest factories' alone: neither liar moved it
    assert record.normalizer == _honest_normalizer(), logs
    security = "".join(cluster.log(key) for key in cluster.replicas if key.startswith("security"))
    assert "statistics from f5" in security and "invalid_stats" in security, logs
    # the liars still train: their updates are screened like everyone's
    (only,) = rounds_by_number(record).values()
    assert only["participants"] == IDS
    # ... and the engineer sees who round 0 left out, and why, in the report
    left_out = {"f4": "outlier_stats", "f5": "invalid_stats"}
    assert record.normalizer_left_out == left_out
    summary = build_summary(record, cfg.to_payload())
    assert summary["rounds"][0]["round_num"] == 0 and summary["rounds"][0]["rejected"] == left_out
    assert summary["rejections_by_reason"] == {"outlier_stats": 1, "invalid_stats": 1}
    write_run(tmp_path / "run", summary, record.final_model)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "f4: outlier_stats" in html and "f5: invalid_stats" in html
