"""A validated factory table turned into the datasite's windows, and the data card that describes them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from federation.ml.data import DatasetError, Normalizer, Partition, make_windows
from federation.ml.tabular import DataSchema, ImportError_, SensorTable, read_table

__all__ = ["CARD_VERSION", "data_card", "features_of", "import_table", "normalise"]

CARD_VERSION = 1


def features_of(schema: DataSchema) -> tuple[str, ...]:
    """The model's input features: the schema's sensors, in its order."""
    return tuple(schema.sensors)


def normalise(table: SensorTable, schema: DataSchema, normalizer: Normalizer) -> np.ndarray:
    """The table's sensors z-scored per regime with `normalizer` (its own regime rounding)."""
    if tuple(normalizer.columns) != features_of(schema):
        raise ImportError_(
            f"the normalisation statistics are for {list(normalizer.columns)}, the schema's "
            f"sensors are {list(schema.sensors)}",
            file=schema.name,
        )
    try:
        return normalizer.transform(table.sensors, table.settings)
    except DatasetError as exc:
        raise ImportError_(str(exc), file=schema.name) from exc


def import_table(
    path: str | Path, schema: DataSchema, normalizer: Normalizer | None = None
) -> tuple[Partition, Normalizer, SensorTable]:
    """Read, validate and window a run-to-failure table: raw sensor values, never z-scored.

    A campaign z-scores at training time with the statistics its round 0 summed over every
    factory (federation.ml.fedstats). `normalizer` (statistics given), else one fitted on this
    table, is checked against the table (same sensors, every operating regime known) and
    recorded in the data card for information only. The label is the RUL capped at the
    schema's ``rul_cap``; one window ends at every cycle from the window-th on. The schema's
    operating settings, if any, are kept per window row with their regime rounding.
    """
    if schema.label == "none":
        raise ImportError_("label: none gives nothing to train on: say failure_at_last_cycle or "
                           "{rul_column: NAME}", file=schema.name)  # fmt: skip
    table = read_table(path, schema, with_label=True)
    if normalizer is None:
        normalizer = Normalizer().fit(
            table.sensors,
            table.settings,
            features_of(schema),
            decimals=list(schema.decimals) if schema.settings else None,
        )
    normalise(table, schema, normalizer)  # the statistics fit this table (ImportError_ if not)
    assert table.rul is not None
    labels = np.minimum(table.rul, schema.rul_cap).astype(np.float32)
    X, y, codes = make_windows(table.sensors, table.units, labels, schema.window)
    settings = None
    if schema.settings:  # kept per window row: the federation z-scores per operating regime
        settings = make_windows(table.settings, table.units, None, schema.window)[0]
    part = Partition(X, y, table.unit_numbers[codes], settings, tuple(schema.decimals))
    return part, normalizer, table


def data_card(
    table: SensorTable,
    schema: DataSchema,
    part: Partition,
    normalizer: Normalizer,
    *,
    source: str | Path,
    partition_sha256: str,
    normalizer_source: str,
) -> dict[str, Any]:
    """What the partition holds, in aggregate (no row, no unit id): safe to share with the federation."""
    lengths = np.bincount(table.units)
    return {
        "card_version": CARD_VERSION,
        "source": {"file": Path(source).name, "sha256": table.sha256},
        "schema": schema.to_dict(),
        "schema_file": {"name": Path(schema.name).name, "sha256": schema.sha256},
        "rows": len(table),
        "units": int(lengths.shape[0]),
        "cycles": {
            "total": int(lengths.sum()),
            "per_unit_min": int(lengths.min()),
            "per_unit_median": float(np.median(lengths)),
            "per_unit_max": int(lengths.max()),
        },
        "columns": {
            "unit": schema.unit,
            "cycle": schema.cycle,
            "timestamp": schema.timestamp,
            "settings": list(schema.setting_names),
            "sensors": list(schema.sensors),
            "label": schema.rul_column if schema.label == "rul" else schema.label,
            "ignored": list(schema.ignore),
        },
        "date_range": list(table.timestamps) if table.timestamps else None,
        "label": {"kind": schema.label, "rul_cap": schema.rul_cap},
        "window": schema.window,
        "features": list(features_of(schema)),
        "windows": len(part),
        "normalizer": normalizer.to_dict(),
        "normalizer_source": normalizer_source,
        "partition_sha256": partition_sha256,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
