"""`pdmfed data`: prepare factory data for datasites (`import`: a factory's own table; `partition`: a split)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from federation.console import fail
from federation.errors import PdmFedError

__all__ = ["app", "write_import", "write_partitions", "CARD_FILE", "PARTITION_FILE"]

#: The file a datasite container reads (its data volume holds exactly this file).
PARTITION_FILE = "partition.npz"
MANIFEST_FILE = "manifest.json"
#: What `pdmfed data import` writes next to the partition: the data card (aggregates only).
CARD_FILE = "datacard.json"

app = typer.Typer(help="Prepare factory data for the datasites.", no_args_is_help=True)


class PartitionMode(StrEnum):
    profile = "profile"
    engine = "engine"


def _names(names: str | None, sites: int) -> list[str]:
    from federation.crypto.signing import check_sender_name

    chosen = (
        [n.strip() for n in names.split(",")]
        if names
        else [f"factory-{i + 1}" for i in range(sites)]
    )
    if len(chosen) != sites:
        fail(f"--names lists {len(chosen)} factories but --sites is {sites}")
    if len(set(chosen)) != len(chosen):
        fail(f"--names repeats a factory: {','.join(chosen)}")
    for name in chosen:
        try:
            check_sender_name(name)
        except PdmFedError as exc:
            fail(f"factory name {name!r} is not usable as a datasite id: {exc}")
    return chosen


def _owner(owner: str | None) -> tuple[int, int] | None:
    if owner is None:
        return None
    match = re.fullmatch(r"(\d+)(?::(\d+))?", owner)
    if not match:
        fail(f"--owner must be UID or UID:GID, got {owner!r}")
    uid = int(match.group(1))
    return uid, int(match.group(2) or uid)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_partitions(
    out: Path,
    *,
    data: Path | None = None,
    sites: int = 3,
    names: list[str] | None = None,
    seed: int = 0,
    mode: str = "profile",
    max_windows: int | None = None,
    owner: tuple[int, int] | None = None,
) -> dict:
    """Split the training engines of C-MAPSS `data` (or the synthetic fleet) across factories.

    Writes `out/<factory>/partition.npz` (arrays X, y, engine_ids, and each window row's
    operating settings with their regime decimals; no pickled objects) and
    `out/manifest.json` (source, split, per-factory windows/engines/sha256); returns the
    manifest. Engines never straddle factories; test engines are never written. Files are
    private (0600, directories 0700), owned by `owner` when given (the datasite image's user).
    """
    import numpy as np

    from federation.ml.data import load_dataset
    from federation.ml.partition import partition_engines, split_partition

    names = names or [f"factory-{i + 1}" for i in range(sites)]
    # factories store raw windows, with each row's operating settings (per-regime statistics)
    prepared = load_dataset(data, seed=seed, normalise=False, keep_settings=True)
    groups = partition_engines(
        prepared.train.engines, sites, seed=seed, mode=mode, lifetimes=prepared.train_lifetimes
    )
    manifest: dict = {
        "source": str(data) if data is not None else "synthetic",
        "dataset": prepared.name,
        "seed": seed,
        "mode": mode,
        "window": prepared.window,
        "features": list(prepared.features),
        "regime_decimals": list(prepared.train.decimals),
        "max_windows": max_windows,
        "factories": {},
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, part in zip(names, split_partition(prepared.train, groups), strict=True):
        if max_windows is not None and len(part) > max_windows:
            # evenly spaced windows, so every engine of the factory keeps some of its life
            keep = np.unique(np.linspace(0, len(part) - 1, max_windows).round().astype(np.int64))
            part = part.take(keep)
        site_dir = out / name
        site_dir.mkdir(mode=0o700, exist_ok=True)
        path = part.save(site_dir / PARTITION_FILE)
        os.chmod(site_dir, 0o700)
        os.chmod(path, 0o600)
        if owner is not None:
            os.chown(site_dir, *owner)
            os.chown(path, *owner)
        manifest["factories"][name] = {
            "file": f"{name}/{PARTITION_FILE}",
            "windows": len(part),
            "engines": [int(e) for e in part.engines],
            "sha256": _sha256(path),
        }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@app.command("partition")
def partition(
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            show_default=False,
            help="directory to write <factory>/partition.npz and manifest.json into",
        ),
    ],
    data: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            file_okay=False,
            help="C-MAPSS directory, e.g. ../shared/data/cmapss/FD001 (default: a synthetic fleet)",
        ),
    ] = None,
    sites: Annotated[int, typer.Option(min=1, help="number of factories")] = 3,
    names: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="comma-separated factory ids (default factory-1..N, the compose and k8s names)",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(min=0, help="seed of the split (and of the synthetic fleet)")
    ] = 0,
    mode: Annotated[
        PartitionMode,
        typer.Option(
            help="profile: each factory a different lifetime profile; engine: random engines"
        ),
    ] = PartitionMode.profile,
    max_windows: Annotated[
        int | None,
        typer.Option(
            min=1,
            show_default=False,
            help="keep at most this many windows per factory (evenly spaced; quick trials)",
        ),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="UID[:GID] to own the files (10001 for the datasite image); needs root",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace partitions already in --out")
    ] = False,
) -> int:
    """Split one dataset into one private partition per factory, for the datasites' data volumes."""
    chosen = _names(names, sites)
    uid_gid = _owner(owner)
    if uid_gid is not None and os.geteuid() != 0:
        fail("--owner needs root (the files are handed to the datasite image's user)")
    existing = [n for n in chosen if (out / n / PARTITION_FILE).exists()]
    if existing and not force:
        fail(f"{out} already holds partitions for {', '.join(existing)} (--force replaces them)")
    manifest = write_partitions(
        out,
        data=data,
        sites=sites,
        names=chosen,
        seed=seed,
        mode=mode.value,
        max_windows=max_windows,
        owner=uid_gid,
    )
    for name, info in manifest["factories"].items():
        typer.echo(
            f"{name}: {info['windows']} windows of {len(info['engines'])} engines -> {out / info['file']}"
        )
    return 0


def _private_file(path: Path, owner: tuple[int, int] | None) -> None:
    os.chmod(path.parent, 0o700)
    os.chmod(path, 0o600)
    if owner is not None:
        os.chown(path.parent, *owner)
        os.chown(path, *owner)


def write_import(
    out: Path,
    *,
    data: Path,
    schema: Path,
    normalizer: Path | None = None,
    owner: tuple[int, int] | None = None,
) -> dict:
    """Validate `data` against `schema`, write `out/partition.npz` and `out/datacard.json`.

    Returns the data card. Nothing is written when the data or schema is refused (an
    ``ImportError_`` saying file, row, unit and column).
    """
    from federation.ml.data import DatasetError, Normalizer
    from federation.ml.importer import data_card, import_table
    from federation.ml.tabular import ImportError_, load_schema

    declared = load_schema(schema)
    stats = None
    if normalizer is not None:
        try:
            raw = json.loads(normalizer.read_text())
            stats = Normalizer.from_dict(raw.get("normalizer", raw))
        except (OSError, ValueError, AttributeError, DatasetError) as exc:
            raise ImportError_(
                f"not usable normalisation statistics: {exc}", file=normalizer
            ) from exc
    part, fitted, table = import_table(data, declared, stats)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = part.save(out / PARTITION_FILE)
    _private_file(path, owner)
    card = data_card(
        table,
        declared,
        part,
        fitted,
        source=data,
        partition_sha256=_sha256(path),
        normalizer_source=str(normalizer) if normalizer is not None else "fitted on this file",
    )
    card_path = out / CARD_FILE
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    _private_file(card_path, owner)
    return card


@app.command("import")
def import_(
    data: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="the factory's table: .csv (or other delimited text) or .parquet",
        ),
    ],
    schema: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="YAML naming the unit, cycle, setting, sensor and label columns "
            "(examples/cmapss.schema.yaml)",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            file_okay=False,
            show_default=False,
            help="directory to write partition.npz (for `pdmfed datasite launch --data`) and "
            "datacard.json into",
        ),
    ],
    normalizer: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            show_default=False,
            help="normalisation statistics the federation agreed on (a normaliser JSON or "
            "another factory's data card); default: fitted on this file",
        ),
    ] = None,
    owner: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="UID[:GID] to own the files (10001 for the datasite image); needs root",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="replace a partition already in --out")
    ] = False,
) -> int:
    """Check a factory's own sensor table against its schema and write the datasite's partition."""
    uid_gid = _owner(owner)
    if uid_gid is not None and os.geteuid() != 0:
        fail("--owner needs root (the files are handed to the datasite image's user)")
    if (out / PARTITION_FILE).exists() and not force:
        fail(f"{out / PARTITION_FILE} already exists (--force replaces it)")
    from federation.ml.data import DatasetError

    try:
        card = write_import(out, data=data, schema=schema, normalizer=normalizer, owner=uid_gid)
    except DatasetError as exc:  # bad data or schema: bad input, located
        fail(str(exc))
    cyc = card["cycles"]
    dates = f", {card['date_range'][0]} to {card['date_range'][1]}" if card["date_range"] else ""
    typer.echo(
        f"{data.name}: {card['rows']} rows, {card['units']} units "
        f"({cyc['per_unit_min']}-{cyc['per_unit_max']} cycles){dates}, "
        f"{len(card['features'])} sensors -> {card['windows']} windows of {card['window']} "
        f"cycles in {out / PARTITION_FILE} (card: {out / CARD_FILE})"
    )
    return 0
