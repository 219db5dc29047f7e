"""The pdmfed_* Prometheus metrics (docs/architecture.md), created once per registry and bound to one service."""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from federation.errors import REJECT_REASONS
from federation.wire.messages import MsgType

__all__ = [
    "Metrics",
    "MESSAGE_TYPES",
    "DIRECTIONS",
    "ROUND_FAILURES",
    "HANDLER_BUCKETS",
    "ROUND_BUCKETS",
    "DP_LEVELS",
    "DEFAULT_CAMPAIGN",
]

#: Every message type (routing key); consumed/published series start at 0.
MESSAGE_TYPES = tuple(t.value for t in MsgType)

#: Values of the `direction` label of pdmfed_message_bytes_total.
DIRECTIONS = ("in", "out")

#: Values of the `reason` label of pdmfed_rounds_failed_total: the round statuses that publish
#: no new model (too few screened updates; the privacy budget would be exceeded).
ROUND_FAILURES = ("no_quorum", "budget_exhausted")

#: Values of the `level` label of the DP gauges: client-level (central/local DP on whole updates)
#: and record-level (DP-SGD inside each factory's training; the largest factory's epsilon).
DP_LEVELS = ("client", "record")

#: `campaign` label of series recorded outside any campaign (the seed's managers and monitors).
DEFAULT_CAMPAIGN = "default"

#: Handler latency: decrypt + verify of a small message is ~1 ms, aggregation of a large model seconds.
HANDLER_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
#: A round spans local training at every datasite: seconds to an hour.
ROUND_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass(frozen=True)
class _Families:
    messages_consumed: Counter
    messages_published: Counter
    messages_rejected: Counter
    message_bytes: Counter
    handler_seconds: Histogram
    round: Gauge
    round_opened: Gauge
    round_duration: Histogram
    round_deadline: Gauge
    campaign_running: Gauge
    datasites_connected: Gauge
    datasites_expected: Gauge
    byzantine_detected: Counter
    client_reputation: Gauge
    dp_epsilon: Gauge
    dp_max_epsilon: Gauge
    dp_noise_applications: Counter
    updates_aggregated: Counter
    rounds_failed: Counter
    train_rmse: Gauge
    reassembly_refusals: Counter
    datasite_refusals: Counter


# One set of metric objects per registry: the embedded demo runs all four services in one
# process, and a second registration of the same name in one registry would raise.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _create_families(registry: CollectorRegistry) -> _Families:
    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    return _Families(
        messages_consumed=counter(
            "pdmfed_messages_consumed_total",
            "Messages a service accepted and handled.",
            ("service", "msg_type"),
        ),
        messages_published=counter(
            "pdmfed_messages_published_total",
            "Messages a service published (confirmed by the broker).",
            ("service", "msg_type"),
        ),
        messages_rejected=counter(
            "pdmfed_messages_rejected_total",
            "Messages a service rejected to the dead-letter queue, by reason.",
            ("service", "reason"),
        ),
        message_bytes=counter(
            "pdmfed_message_bytes_total",
            "Wire bytes consumed (in) and published (out).",
            ("service", "direction"),
        ),
        handler_seconds=Histogram(
            "pdmfed_handler_seconds",
            "Time a service spent handling one message.",
            ("service", "msg_type"),
            buckets=HANDLER_BUCKETS,
            registry=registry,
        ),
        round=gauge("pdmfed_round", "The campaign's current round number.", ("campaign",)),
        round_opened=gauge(
            "pdmfed_round_opened_timestamp_seconds",
            "When the campaign's current round opened (Unix time).",
            ("campaign",),
        ),
        round_duration=Histogram(
            "pdmfed_round_duration_seconds",
            "Wall time from round.open to round.completed.",
            ("campaign",),
            buckets=ROUND_BUCKETS,
            registry=registry,
        ),
        round_deadline=gauge(
            "pdmfed_round_deadline_seconds",
            "The campaign's round deadline (round_timeout_s): training answers after it are"
            " not waited for.",
            ("campaign",),
        ),
        campaign_running=gauge(
            "pdmfed_campaign_running",
            "1 while the campaign runs, 0 once it completed (its other series are then final"
            " values, not current ones).",
            ("campaign",),
        ),
        datasites_connected=gauge(
            "pdmfed_datasites_connected",
            "The campaign's datasites with a logged-in session that answers right now.",
            ("campaign",),
        ),
        datasites_expected=gauge(
            "pdmfed_datasites_expected", "Datasites the campaign names.", ("campaign",)
        ),
        byzantine_detected=counter(
            "pdmfed_byzantine_detected_total",
            "Updates flagged as Byzantine, by datasite.",
            ("campaign", "datasite_id"),
        ),
        client_reputation=gauge(
            "pdmfed_client_reputation",
            "Reputation of each datasite in [0, 1].",
            ("campaign", "datasite_id"),
        ),
        dp_epsilon=gauge(
            "pdmfed_dp_epsilon",
            "Privacy spent so far (epsilon at the campaign's delta); level=client: the"
            " campaign's ledger, level=record: the largest factory's DP-SGD ledger.",
            ("campaign", "level"),
        ),
        dp_max_epsilon=gauge(
            "pdmfed_dp_max_epsilon",
            "The campaign's privacy budget (max_epsilon) at that level; absent: no budget.",
            ("campaign", "level"),
        ),
        dp_noise_applications=counter(
            "pdmfed_dp_noise_applications_total",
            "Times Gaussian DP noise was added.",
            ("campaign",),
        ),
        updates_aggregated=counter(
            "pdmfed_updates_aggregated_total",
            "Model updates that entered an aggregate.",
            ("campaign",),
        ),
        train_rmse=gauge(
            "pdmfed_train_rmse",
            "The round's training RMSE: the factories' own RMSE on their training data,"
            " weighted by samples, over the accepted updates (not a held-out test RMSE).",
            ("campaign",),
        ),
        rounds_failed=counter(
            "pdmfed_rounds_failed_total",
            "Rounds that published no new model, by reason (no_quorum, budget_exhausted).",
            ("reason",),
        ),
        reassembly_refusals=counter(
            "pdmfed_reassembly_refusals_total",
            "Chunks refused and chunked updates dropped (over a limit, evicted, timed out)"
            " during reassembly, by sender and reason.",
            ("service", "sender", "reason"),
        ),
        datasite_refusals=counter(
            "pdmfed_datasite_refusals_total",
            "Datasites a message named that the connector refused to contact (not in its"
            " registry), by reason.",
            ("service", "reason"),
        ),
    )


def _families_for(registry: CollectorRegistry) -> _Families:
    with _LOCK:
        fams = _FAMILIES.get(registry)
        if fams is None:
            fams = _create_families(registry)
            _FAMILIES[registry] = fams
        return fams


class Metrics:
    """The pdmfed_* metrics bound to one service; attributes are the prometheus_client metrics.

    Series whose labels are known up front (this service's reject reasons, message types,
    byte directions) exist at 0 from construction, so dashboards and alerts see them before
    the first event. Datasite series appear through :meth:`register_datasites`.
    """

    def __init__(
        self,
        service: str,
        registry: CollectorRegistry | None = None,
        *,
        msg_types: Iterable[str] = MESSAGE_TYPES,
    ) -> None:
        if not service:
            raise ValueError("service must be a non-empty name")
        self.service = service
        self.registry = registry if registry is not None else REGISTRY
        fams = _families_for(self.registry)
        self.messages_consumed = fams.messages_consumed
        self.messages_published = fams.messages_published
        self.messages_rejected = fams.messages_rejected
        self.message_bytes = fams.message_bytes
        self.handler_seconds = fams.handler_seconds
        self.round = fams.round
        self.round_opened = fams.round_opened
        self.round_duration = fams.round_duration
        self.round_deadline = fams.round_deadline
        self.campaign_running = fams.campaign_running
        self.datasites_connected = fams.datasites_connected
        self.datasites_expected = fams.datasites_expected
        self.byzantine_detected = fams.byzantine_detected
        self.client_reputation = fams.client_reputation
        self.dp_epsilon = fams.dp_epsilon
        self.dp_max_epsilon = fams.dp_max_epsilon
        self.dp_noise_applications = fams.dp_noise_applications
        self.updates_aggregated = fams.updates_aggregated
        self.rounds_failed = fams.rounds_failed
        self.train_rmse = fams.train_rmse
        self.reassembly_refusals = fams.reassembly_refusals
        self.datasite_refusals = fams.datasite_refusals
        for reason in REJECT_REASONS:
            self.messages_rejected.labels(service=service, reason=reason)
        self.datasite_refusals.labels(service=service, reason="unknown_datasite")
        for reason in ROUND_FAILURES:
            self.rounds_failed.labels(reason=reason)
        for direction in DIRECTIONS:
            self.message_bytes.labels(service=service, direction=direction)
        for msg_type in msg_types:
            self.messages_consumed.labels(service=service, msg_type=msg_type)
            self.messages_published.labels(service=service, msg_type=msg_type)
            self.handler_seconds.labels(service=service, msg_type=msg_type)

    # -- conveniences that fill in this service's label -------------------------------
    def consumed(self, msg_type: str, nbytes: int = 0) -> None:
        """Count one accepted message of `msg_type` and its wire size."""
        self.messages_consumed.labels(service=self.service, msg_type=msg_type).inc()
        if nbytes:
            self.message_bytes.labels(service=self.service, direction="in").inc(nbytes)

    def published(self, msg_type: str, nbytes: int = 0) -> None:
        """Count one published message of `msg_type` and its wire size."""
        self.messages_published.labels(service=self.service, msg_type=msg_type).inc()
        if nbytes:
            self.message_bytes.labels(service=self.service, direction="out").inc(nbytes)

    def rejected(self, reason: str) -> None:
        """Count one rejected message; `reason` is an `err.reason` of federation.errors."""
        self.messages_rejected.labels(service=self.service, reason=reason).inc()

    def refused_datasite(self, reason: str) -> None:
        """Count one datasite a message named that this service refused to contact."""
        self.datasite_refusals.labels(service=self.service, reason=reason).inc()

    @contextmanager
    def time_handler(self, msg_type: str) -> Iterator[None]:
        """Observe the wall time of the block in pdmfed_handler_seconds."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.handler_seconds.labels(service=self.service, msg_type=msg_type).observe(
                time.perf_counter() - start
            )

    def register_datasites(
        self, datasite_ids: Iterable[str], campaign: str = DEFAULT_CAMPAIGN
    ) -> None:
        """Create the per-datasite series (Byzantine count at 0) for a known cohort."""
        for datasite_id in datasite_ids:
            self.byzantine_detected.labels(campaign=campaign, datasite_id=datasite_id)

    def set_reputations(
        self, reputations: dict[str, float], campaign: str = DEFAULT_CAMPAIGN
    ) -> None:
        """Publish the current reputation of every datasite."""
        for datasite_id, value in reputations.items():
            self.client_reputation.labels(campaign=campaign, datasite_id=datasite_id).set(
                float(value)
            )

    def set_connections(self, campaign: str, connected: int, expected: int) -> None:
        """How many of the campaign's datasites are connected, out of how many it names."""
        self.datasites_connected.labels(campaign=campaign).set(int(connected))
        self.datasites_expected.labels(campaign=campaign).set(int(expected))

    def forget_connections(self, campaign: str) -> None:
        """Drop the campaign's connection series (its sessions are closed)."""
        for gauge in (self.datasites_connected, self.datasites_expected):
            with contextlib.suppress(KeyError):
                gauge.remove(campaign)
