"""Non-IID, reproducible splits of training engines across factories, plus a validation carve-out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from federation.ml.data import DatasetError, Partition, Prepared

__all__ = [
    "PARTITION_MODES",
    "carve_validation",
    "partition_engines",
    "site_partitions",
    "split_partition",
]

#: "engine": a seeded random split of engines; "profile": engines sorted by lifetime and cut
#: into contiguous blocks, so each factory sees a different degradation profile.
PARTITION_MODES = ("engine", "profile")


def _engine_array(engine_ids: Sequence[int] | np.ndarray) -> np.ndarray:
    ids = np.asarray(engine_ids, dtype=np.int64).reshape(-1)
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise DatasetError("engine ids must be distinct")
    return np.sort(ids)


def partition_engines(
    engine_ids: Sequence[int] | np.ndarray,
    n_sites: int,
    seed: int,
    mode: str = "engine",
    *,
    lifetimes: Mapping[int, int] | None = None,
) -> list[np.ndarray]:
    """Split engines into `n_sites` disjoint, non-empty groups (sorted ids), reproducible by seed.

    mode "engine": random split with near-equal engine counts. mode "profile": engines ordered
    by lifetime (ties broken by the seed), cut into contiguous near-equal blocks; the block
    handed to each site is also chosen by the seed. "profile" needs `lifetimes`.
    """
    ids = _engine_array(engine_ids)
    if mode not in PARTITION_MODES:
        raise DatasetError(f"unknown partition mode {mode!r}; supported: {PARTITION_MODES}")
    if not 1 <= int(n_sites) <= ids.shape[0]:
        raise DatasetError(f"cannot split {ids.shape[0]} engines across {n_sites} sites")
    rng = np.random.default_rng(seed)
    order = rng.permutation(ids.shape[0])
    if mode == "profile":
        if lifetimes is None:
            raise DatasetError("profile partitioning needs engine lifetimes")
        missing = [int(e) for e in ids if int(e) not in lifetimes]
        if missing:
            raise DatasetError(f"no lifetime for engines {missing[:5]}")
        life = np.array([lifetimes[int(e)] for e in ids[order]])
        order = order[np.argsort(life, kind="stable")]
    blocks = np.array_split(ids[order], int(n_sites))
    if mode == "profile":
        blocks = [blocks[i] for i in rng.permutation(len(blocks))]
    return [np.sort(b) for b in blocks]


def carve_validation(
    engine_ids: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fit engines, validation engines): a seeded random `fraction` of engines held out."""
    ids = _engine_array(engine_ids)
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * ids.shape[0]))
    if n_val >= ids.shape[0]:
        raise DatasetError("validation carve-out would leave no engines to fit on")
    perm = np.random.default_rng(seed).permutation(ids)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_partition(data: Partition, groups: Sequence[np.ndarray]) -> list[Partition]:
    """One Partition per engine group (e.g. from partition_engines); groups must be disjoint."""
    seen: set[int] = set()
    for g in groups:
        gs = {int(e) for e in g}
        if seen & gs:
            raise DatasetError(f"engines {sorted(seen & gs)[:5]} appear in two groups")
        seen |= gs
    return [data.select(g) for g in groups]


def site_partitions(
    prepared: Prepared,
    n_sites: int,
    seed: int,
    mode: str = "profile",
    *,
    val_fraction: float = 0.0,
) -> tuple[list[Partition], Partition | None]:
    """Training windows of `prepared` split across `n_sites` factories, plus an optional
    validation Partition of held-out training engines (None when val_fraction is 0).

    Test engines are never included: they stay in prepared.test for evaluation only.
    """
    fit_ids, val_ids = carve_validation(prepared.train.engines, val_fraction, seed)
    groups = partition_engines(fit_ids, n_sites, seed, mode, lifetimes=prepared.train_lifetimes)
    val = prepared.train.select(val_ids) if val_ids.size else None
    return split_partition(prepared.train, groups), val
