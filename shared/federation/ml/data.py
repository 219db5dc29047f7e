"""C-MAPSS loading, a synthetic run-to-failure fleet, sensor selection, normalisation and windows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from federation.errors import PdmFedError

__all__ = [
    "DEFAULT_RUL_CAP",
    "DEFAULT_WINDOW",
    "FD001_INFORMATIVE_SENSORS",
    "CMAPSS_TRENDS",
    "CmapssData",
    "DatasetError",
    "Fleet",
    "Normalizer",
    "Partition",
    "Prepared",
    "informative_sensors",
    "load_cmapss",
    "load_dataset",
    "make_windows",
    "piecewise_rul",
    "prepare",
    "regime_ids",
    "REGIME_DECIMALS",
    "synthetic_fleet",
]

DEFAULT_RUL_CAP = 125.0
DEFAULT_WINDOW = 30

#: The 14 FD001 sensors the literature keeps (1-based as in the NASA readme); informative_sensors
#: derives the same list from the training data (verified by a test on the real files).
FD001_INFORMATIVE_SENSORS = (2, 3, 4, 7, 8, 9, 11, 12, 13, 14, 15, 17, 20, 21)

_N_COLUMNS = 26
_N_SETTINGS = 3
_N_CMAPSS_SENSORS = 21
#: Settings are rounded to these decimals to name an operating regime (FD002/FD004 have six:
#: altitude 0-42 kft, Mach 0-0.84, TRA 60/100; Mach needs 2 decimals — its 0.25 regime would
#: split between 0.2 and 0.3 at 1).
REGIME_DECIMALS = (0, 2, 0)


class DatasetError(PdmFedError):
    """A dataset that is missing, malformed or inconsistent."""

    reason = "dataset"


# --- raw data -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fleet:
    """Rows of a run-to-failure data file: one row per engine and cycle, sorted by (unit, cycle)."""

    units: np.ndarray  # int64 (n_rows,)
    cycles: np.ndarray  # int64 (n_rows,)
    settings: np.ndarray  # float32 (n_rows, 3)
    sensors: np.ndarray  # float32 (n_rows, n_sensors)

    @property
    def engine_ids(self) -> np.ndarray:
        """Sorted distinct engine ids."""
        return np.unique(self.units)

    def lifetimes(self) -> dict[int, int]:
        """Last observed cycle per engine (the failure cycle for training engines)."""
        ids, last = _last_index_per_unit(self.units)
        return {int(u): int(self.cycles[i]) for u, i in zip(ids, last, strict=True)}

    def __len__(self) -> int:
        return int(self.units.shape[0])


@dataclass(frozen=True)
class CmapssData:
    """A C-MAPSS-style dataset: training fleet run to failure, truncated test fleet, its true RUL."""

    name: str
    train: Fleet
    test: Fleet
    test_rul: np.ndarray  # float32 (n_test_engines,): RUL after each test engine's last cycle
    sensor_names: tuple[str, ...]


def _last_index_per_unit(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids, first = np.unique(units, return_index=True)
    counts = np.diff(np.append(first, units.shape[0]))
    return ids, first + counts - 1


def _read_rows(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing C-MAPSS file {path}")
    try:
        with open(path, encoding="ascii") as fh:
            rows = [line.split() for line in fh if line.strip()]
        arr = np.array(rows, dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path.name}: not a numeric C-MAPSS table ({exc})") from exc
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DatasetError(f"{path.name}: ragged or empty table")
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{path.name}: contains non-finite values")
    return arr


def _fleet_from_table(arr: np.ndarray, name: str) -> Fleet:
    if arr.shape[1] != _N_COLUMNS:
        raise DatasetError(f"{name}: expected {_N_COLUMNS} columns, found {arr.shape[1]}")
    units, cycles = arr[:, 0], arr[:, 1]
    if np.any(units != np.round(units)) or np.any(cycles != np.round(cycles)) or cycles.min() < 1:
        raise DatasetError(f"{name}: unit and cycle columns must be positive integers")
    order = np.lexsort((cycles, units))
    arr = arr[order]
    units_i, cycles_i = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    same = units_i[1:] == units_i[:-1]
    if np.any(cycles_i[1:][same] != cycles_i[:-1][same] + 1) or np.any(
        cycles_i[np.r_[True, ~same]] != 1
    ):
        raise DatasetError(f"{name}: each engine's cycles must run 1, 2, 3, ... without gaps")
    return Fleet(
        units=units_i,
        cycles=cycles_i,
        settings=arr[:, 2:5].astype(np.float32),
        sensors=arr[:, 5:].astype(np.float32),
    )


def load_cmapss(directory: str | Path, subset: str | None = None) -> CmapssData:
    """Load train_FD00x.txt, test_FD00x.txt and RUL_FD00x.txt from a NASA C-MAPSS directory.

    `subset` (e.g. "FD001") defaults to the single train_*.txt file found in the directory.
    """
    d = Path(directory)
    if not d.is_dir():
        raise DatasetError(f"C-MAPSS directory not found: {d}")
    if subset is None:
        found = sorted(p.name[len("train_") : -len(".txt")] for p in d.glob("train_FD*.txt"))
        if len(found) != 1:
            raise DatasetError(f"{d}: expected exactly one train_FD*.txt, found {found}")
        subset = found[0]
    train = _fleet_from_table(_read_rows(d / f"train_{subset}.txt"), f"train_{subset}")
    test = _fleet_from_table(_read_rows(d / f"test_{subset}.txt"), f"test_{subset}")
    rul = _read_rows(d / f"RUL_{subset}.txt")
    if rul.shape[1] != 1:
        raise DatasetError(f"RUL_{subset}.txt: expected one column, found {rul.shape[1]}")
    rul = rul[:, 0]
    if rul.shape[0] != test.engine_ids.shape[0]:
        raise DatasetError(
            f"RUL_{subset}.txt has {rul.shape[0]} values for {test.engine_ids.shape[0]} test engines"
        )
    if np.any(rul < 0):
        raise DatasetError(f"RUL_{subset}.txt: negative RUL")
    names = tuple(f"s{i}" for i in range(1, _N_CMAPSS_SENSORS + 1))
    return CmapssData(subset, train, test, rul.astype(np.float32), names)


# --- synthetic fleet ----------------------------------------------------------------------------
#: C-MAPSS's 21 sensors: which ones move with HPC degradation and which way (+1 up, -1 down), as
#: published with the data set (Saxena et al. 2008) and in the RUL literature; the others only
#: follow the operating regime. A 21-sensor synthetic fleet uses this layout, so its informative
#: sensors are FD001's 14, in the same order and with the same trends (no FD001 value is used).
CMAPSS_TRENDS: dict[int, float] = {
    2: 1.0,
    3: 1.0,
    4: 1.0,
    7: -1.0,
    8: 1.0,
    9: 1.0,
    11: 1.0,
    12: -1.0,
    13: 1.0,
    14: 1.0,
    15: 1.0,
    17: 1.0,
    20: -1.0,
    21: -1.0,
}


def _sensor_layout(
    rng: np.random.Generator, n_sensors: int, n_constant: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per sensor: degradation sensitivity (0 for a regime-only sensor) and noise level."""
    magnitude = rng.uniform(0.8, 2.5, size=n_sensors)
    if n_sensors == _N_CMAPSS_SENSORS and n_constant == _N_CMAPSS_SENSORS - len(CMAPSS_TRENDS):
        signs = np.array([CMAPSS_TRENDS.get(j + 1, 0.0) for j in range(n_sensors)])
    else:  # the last n_constant sensors carry no signal
        signs = rng.choice([-1.0, 1.0], size=n_sensors)
        signs[n_sensors - n_constant :] = 0.0
    return signs * magnitude, rng.uniform(0.8, 1.2, size=n_sensors)


def _simulate_engine(
    rng: np.random.Generator,
    life: int,
    n_cycles: int,
    sensitivity: np.ndarray,
    noise_scale: np.ndarray,
    regime_offsets: np.ndarray,
    regime_settings: np.ndarray,
    noise: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Settings and sensors of one engine for cycles 1..n_cycles of a life of `life` cycles.

    Damage grows exponentially towards failure in absolute cycles (time constant tau, its own
    per engine), on top of a small initial wear: h = w0 + (1 - w0) exp(-(life - t) / tau), so
    h = 1 at failure and the signal rises out of the noise in the last ~100 cycles, as C-MAPSS
    sensors do. Each engine also has its own mix of the sensors' responses and small
    manufacturing offsets.
    """
    n_regimes, n_sensors = regime_offsets.shape
    t = np.arange(1, n_cycles + 1, dtype=np.float64)
    wear0 = rng.uniform(0.0, 0.05)
    tau = rng.uniform(38.0, 52.0)
    health = wear0 + (1 - wear0) * np.exp(-(life - t) / tau)
    regimes = (
        rng.integers(0, n_regimes, size=n_cycles) if n_regimes > 1 else np.zeros(n_cycles, int)
    )
    response = sensitivity * rng.uniform(0.85, 1.15, size=n_sensors)
    manufacturing = rng.normal(0.0, 0.1, size=n_sensors) * (sensitivity != 0)
    sensors = (
        regime_offsets[regimes]
        + manufacturing
        + health[:, None] * response[None, :]
        + rng.normal(0.0, 1.0, size=(n_cycles, n_sensors)) * (noise * noise_scale)
    )
    constant = sensitivity == 0
    sensors[:, constant] = regime_offsets[regimes][:, constant]
    settings = regime_settings[regimes] + rng.normal(0.0, 1e-4, size=(n_cycles, _N_SETTINGS))
    return settings, sensors


def synthetic_fleet(
    n_engines: int = 100,
    seed: int = 0,
    *,
    n_test_engines: int | None = None,
    n_sensors: int = _N_CMAPSS_SENSORS,
    n_constant: int = _N_CMAPSS_SENSORS - len(CMAPSS_TRENDS),
    n_regimes: int = 1,
    noise: float = 0.5,
    min_life: int = 128,
    max_life: int = 360,
) -> CmapssData:
    """A reproducible C-MAPSS-like fleet: training engines run to failure, test engines truncated.

    One fleet model draws both sets: per-sensor sensitivities and noise levels, and regime
    offsets. Each engine has its own lifetime, initial wear, damage time constant, sensor
    response mix and manufacturing offsets (see ``_simulate_engine``). A test engine is cut
    off at a uniformly drawn cycle and its true RUL recorded, as in C-MAPSS's test files.
    With the defaults (21 sensors, 7 regime-only) the informative sensors are FD001's 14 with
    C-MAPSS's trend directions (``CMAPSS_TRENDS``); other sizes put the regime-only sensors
    last. Every cycle runs in one of ``n_regimes`` operating regimes (distinct settings) that
    shift all sensor baselines.
    """
    n_test = n_engines if n_test_engines is None else n_test_engines
    if n_engines < 1 or n_test < 1:
        raise DatasetError("synthetic_fleet needs at least one training and one test engine")
    if (
        not 0 <= n_constant < n_sensors
        or n_regimes < 1
        or noise < 0
        or not 2 <= min_life <= max_life
    ):
        raise DatasetError("synthetic_fleet: invalid sensor, regime, noise or lifetime arguments")
    rng = np.random.default_rng(seed)
    sensitivity, noise_scale = _sensor_layout(rng, n_sensors, n_constant)
    regime_offsets = rng.normal(0.0, 3.0, size=(n_regimes, n_sensors))
    regime_settings = np.column_stack(
        [
            np.arange(n_regimes) * 10.0,
            np.round(rng.uniform(0, 0.9, n_regimes), 1),
            np.full(n_regimes, 100.0),
        ]
    )

    def fleet(n: int, first_unit: int, truncate: bool) -> tuple[Fleet, np.ndarray]:
        cols: dict[str, list[np.ndarray]] = {"u": [], "c": [], "s": [], "x": []}
        rul = np.zeros(n, dtype=np.float32)
        for i in range(n):
            life = int(rng.integers(min_life, max_life + 1))
            seen = int(rng.integers(max(2, life // 5), life)) if truncate else life
            settings, sensors = _simulate_engine(
                rng, life, seen, sensitivity, noise_scale, regime_offsets, regime_settings, noise
            )
            cols["u"].append(np.full(seen, first_unit + i, dtype=np.int64))
            cols["c"].append(np.arange(1, seen + 1, dtype=np.int64))
            cols["s"].append(settings)
            cols["x"].append(sensors)
            rul[i] = life - seen
        return (
            Fleet(
                units=np.concatenate(cols["u"]),
                cycles=np.concatenate(cols["c"]),
                settings=np.concatenate(cols["s"]).astype(np.float32),
                sensors=np.concatenate(cols["x"]).astype(np.float32),
            ),
            rul,
        )

    train, _ = fleet(n_engines, 1, truncate=False)
    test, test_rul = fleet(n_test, 1, truncate=True)
    names = tuple(f"s{i}" for i in range(1, n_sensors + 1))
    return CmapssData(f"synthetic-{seed}", train, test, test_rul, names)


# --- features -------------------------------------------------------------------------------------
def piecewise_rul(fleet: Fleet, cap: float = DEFAULT_RUL_CAP, final_rul: Any = None) -> np.ndarray:
    """Per-row RUL = cycles left to failure, capped at `cap` (early life counts as healthy).

    For training engines failure is the last cycle; for test engines pass `final_rul`, the RUL
    after each engine's last row (ordered like fleet.engine_ids).
    """
    ids, last = _last_index_per_unit(fleet.units)
    last_cycle = fleet.cycles[last].astype(np.float64)
    extra = np.zeros_like(last_cycle) if final_rul is None else np.asarray(final_rul, np.float64)
    if extra.shape != last_cycle.shape:
        raise DatasetError(f"final_rul has {extra.shape[0]} values for {ids.shape[0]} engines")
    pos = np.searchsorted(ids, fleet.units)
    rul = last_cycle[pos] - fleet.cycles + extra[pos]
    return np.minimum(rul, cap).astype(np.float32)


def regime_ids(settings: np.ndarray, decimals: Sequence[int] | None = None) -> np.ndarray:
    """Operating-regime keys: each row's settings rounded (1 regime for FD001/FD003).

    ``decimals`` per setting column defaults to C-MAPSS's (0, 2, 0); no setting column at all,
    or empty ``decimals`` (statistics pooled over every regime), is one regime keyed (0.0,).
    """
    s = np.asarray(settings, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] == 0 or (decimals is not None and len(decimals) == 0):
        return np.zeros((s.shape[0], 1))
    dec = REGIME_DECIMALS if decimals is None else tuple(decimals)
    if len(dec) != s.shape[1]:
        raise DatasetError(f"{s.shape[1]} setting columns but {len(dec)} regime roundings")
    cols = [np.round(s[:, j], dec[j]) + 0.0 for j in range(s.shape[1])]
    return np.column_stack(cols)


def _regime_index(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    return uniq, inverse.reshape(-1)


def informative_sensors(
    fleet: Fleet, sensor_names: Sequence[str], min_levels: float = 1.0
) -> tuple[str, ...]:
    """Sensors whose within-regime spread exceeds `min_levels` quantisation steps.

    Spread is the pooled within-regime standard deviation on the given (training) rows; the
    quantisation step is the smallest gap between distinct recorded values. A sensor that only
    flickers between two neighbouring readings (FD001's s6) or never moves is dropped.
    """
    x = fleet.sensors.astype(np.float64)
    _, inv = _regime_index(regime_ids(fleet.settings))
    means = np.zeros((inv.max() + 1, x.shape[1]))
    np.add.at(means, inv, x)
    means /= np.bincount(inv)[:, None]
    pooled_std = np.sqrt(np.mean((x - means[inv]) ** 2, axis=0))
    keep = []
    for j, name in enumerate(sensor_names):
        levels = np.unique(np.round(x[:, j], 6))
        if levels.shape[0] < 2:
            continue
        step = float(np.min(np.diff(levels)))
        if pooled_std[j] > min_levels * step:
            keep.append(name)
    return tuple(keep)


@dataclass
class Normalizer:
    """Per-regime, per-column z-scoring; fitted on training rows, stored as plain floats."""

    columns: tuple[str, ...] = ()
    regimes: list[list[float]] = field(default_factory=list)
    mean: list[list[float]] = field(default_factory=list)
    std: list[list[float]] = field(default_factory=list)
    #: Decimals each setting is rounded to when naming a regime (None: C-MAPSS's; []: one
    #: regime pooling them all, the settings are not looked at).
    decimals: list[int] | None = None

    def fit(
        self,
        values: np.ndarray,
        settings: np.ndarray,
        columns: Sequence[str],
        decimals: Sequence[int] | None = None,
    ) -> Normalizer:
        """Learn mean/std per regime and column from training rows only."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(columns) or x.shape[0] == 0:
            raise DatasetError(
                f"cannot fit normaliser on shape {x.shape} for {len(columns)} columns"
            )
        self.decimals = None if decimals is None else [int(d) for d in decimals]
        keys, inv = _regime_index(regime_ids(settings, self.decimals))
        self.columns = tuple(columns)
        self.regimes, self.mean, self.std = [], [], []
        for r, key in enumerate(keys):
            rows = x[inv == r]
            sd = rows.std(axis=0)
            self.regimes.append([float(v) for v in key])
            self.mean.append([float(v) for v in rows.mean(axis=0)])
            self.std.append([float(v) if v > 1e-8 else 1.0 for v in sd])
        return self

    def transform(self, values: np.ndarray, settings: np.ndarray) -> np.ndarray:
        """Z-score rows with their regime's statistics (float32)."""
        if not self.regimes:
            raise DatasetError("normaliser used before fit")
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise DatasetError(f"expected {len(self.columns)} columns, got shape {x.shape}")
        known = np.asarray(self.regimes, dtype=np.float64)
        keys = regime_ids(settings, self.decimals)
        match = np.all(keys[:, None, :] == known[None, :, :], axis=2)
        if not np.all(match.any(axis=1)):
            bad = keys[~match.any(axis=1)][0].tolist()
            raise DatasetError(f"operating regime {bad} was not seen in the training data")
        idx = match.argmax(axis=1)
        mean, std = np.asarray(self.mean)[idx], np.asarray(self.std)[idx]
        return ((x - mean) / std).astype(np.float32)

    def transform_windows(
        self, windows: np.ndarray, settings: np.ndarray | None = None
    ) -> np.ndarray:
        """Z-score raw windows (n, window, F) (float32): each row with its regime's statistics
        when ``settings`` (n, window, S) are given and the statistics are per regime; windows
        without settings, or pooled statistics (decimals []), use the one regime there is."""
        x = np.asarray(windows, dtype=np.float64)
        if x.ndim != 3 or x.shape[2] != len(self.columns):
            raise DatasetError(f"expected windows (n, window, {len(self.columns)}), got {x.shape}")
        if settings is not None and self.decimals != []:
            s = np.asarray(settings, dtype=np.float64)
            if s.ndim != 3 or s.shape[:2] != x.shape[:2]:
                raise DatasetError(f"settings {s.shape} do not match windows {x.shape}")
            rows = self.transform(x.reshape(-1, x.shape[2]), s.reshape(-1, s.shape[2]))
            return rows.reshape(x.shape)
        if len(self.regimes) != 1:
            raise DatasetError(f"windows carry no operating settings: normalising them needs "
                               f"one regime's statistics, these have {len(self.regimes)}")  # fmt: skip
        mean, std = np.asarray(self.mean[0]), np.asarray(self.std[0])
        return ((x - mean) / std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and floats (msgpack/JSON friendly)."""
        out: dict[str, Any] = {
            "columns": list(self.columns),
            "regimes": [list(r) for r in self.regimes],
            "mean": [list(m) for m in self.mean],
            "std": [list(s) for s in self.std],
        }
        if self.decimals is not None:
            out["decimals"] = list(self.decimals)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Normalizer:
        """Inverse of to_dict, validating shapes."""
        try:
            cols = tuple(str(c) for c in d["columns"])
            regimes = [[float(v) for v in r] for r in d["regimes"]]
            mean = [[float(v) for v in m] for m in d["mean"]]
            std = [[float(v) for v in s] for s in d["std"]]
            decimals = None if d.get("decimals") is None else [int(v) for v in d["decimals"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"malformed normaliser: {exc}") from exc
        ok = len(regimes) == len(mean) == len(std) and all(
            len(m) == len(cols) and len(s) == len(cols) for m, s in zip(mean, std, strict=True)
        )
        if not ok or any(v <= 0 or not math.isfinite(v) for s in std for v in s):
            raise DatasetError("malformed normaliser: inconsistent lengths or non-positive std")
        if decimals == [] and regimes != [[0.0]]:
            raise DatasetError("malformed normaliser: pooled statistics (decimals []) have the "
                               "one regime [0.0]")  # fmt: skip
        if decimals and any(len(r) != len(decimals) for r in regimes):
            raise DatasetError("malformed normaliser: regimes and decimals differ in length")
        return cls(cols, regimes, mean, std, decimals)


def make_windows(
    features: np.ndarray,
    units: np.ndarray,
    labels: np.ndarray | None = None,
    window: int = DEFAULT_WINDOW,
    *,
    last_only: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sliding windows per engine over rows sorted by (unit, cycle).

    Returns (X (n, window, F) float32, y (n,) float32 = label of each window's last row,
    engine ids (n,) int64). Every row from the window-th of an engine ends one window; an engine
    shorter than `window` is padded at the front by repeating its first row and yields one
    window. `last_only` keeps only each engine's final window (test-set evaluation).
    """
    feats = np.asarray(features, dtype=np.float32)
    units = np.asarray(units)
    if window < 1 or feats.ndim != 2 or feats.shape[0] != units.shape[0]:
        raise DatasetError("make_windows: features must be (rows, F) matching units; window >= 1")
    lab = np.zeros(units.shape[0], np.float32) if labels is None else np.asarray(labels, np.float32)
    xs, ys, ids = [], [], []
    ids_sorted, first = np.unique(units, return_index=True)
    bounds = np.append(first, units.shape[0])
    for k, u in enumerate(ids_sorted):
        block, y_block = feats[bounds[k] : bounds[k + 1]], lab[bounds[k] : bounds[k + 1]]
        if block.shape[0] < window:
            pad = np.repeat(block[:1], window - block.shape[0], axis=0)
            block = np.concatenate([pad, block])
            y_block = np.concatenate([np.full(pad.shape[0], y_block[0]), y_block])
        if last_only:
            win = block[None, -window:]
            yy = y_block[-1:]
        else:
            win = np.lib.stride_tricks.sliding_window_view(block, window, axis=0)
            win = win.transpose(0, 2, 1)
            yy = y_block[window - 1 :]
        xs.append(np.ascontiguousarray(win))
        ys.append(yy)
        ids.append(np.full(win.shape[0], u, dtype=np.int64))
    if not xs:
        raise DatasetError("make_windows: no rows")
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32), np.concatenate(ids)


# --- prepared windows -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    """Windows (X), RUL labels (y), the engine each window came from and, when the data declares
    operating settings, each window row's raw settings and the decimals that name a regime."""

    X: np.ndarray  # float32 (n, window, F)
    y: np.ndarray  # float32 (n,)
    engine_ids: np.ndarray  # int64 (n,)
    settings: np.ndarray | None = None  # float32 (n, window, S): raw settings per window row
    decimals: tuple[int, ...] = ()  # per setting: decimals it is rounded to (len S)

    def __post_init__(self) -> None:
        if self.X.ndim != 3 or self.y.ndim != 1 or self.engine_ids.ndim != 1:
            raise DatasetError("partition arrays must be X (n,w,F), y (n,), engine_ids (n,)")
        if not self.X.shape[0] == self.y.shape[0] == self.engine_ids.shape[0]:
            raise DatasetError("partition arrays have different lengths")
        if self.settings is None:
            if self.decimals:
                raise DatasetError("partition has regime decimals but no settings")
            return
        s = self.settings
        if s.ndim != 3 or s.shape[:2] != self.X.shape[:2] or s.shape[2] != len(self.decimals):
            raise DatasetError(f"partition settings must be (n, window, {len(self.decimals)}) "
                               f"next to X {self.X.shape}, got {s.shape}")  # fmt: skip
        if not s.shape[2] or any(not 0 <= d <= 6 for d in self.decimals):
            raise DatasetError("partition settings need 1+ columns, each rounded to 0..6 decimals")

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def engines(self) -> np.ndarray:
        """Sorted distinct engine ids in this partition."""
        return np.unique(self.engine_ids)

    def take(self, index: np.ndarray) -> Partition:
        """The windows at ``index`` (a boolean mask or integer positions), settings kept."""
        s = None if self.settings is None else self.settings[index]
        return Partition(self.X[index], self.y[index], self.engine_ids[index], s, self.decimals)

    def select(self, engines: Sequence[int] | np.ndarray) -> Partition:
        """The windows of the given engines only."""
        return self.take(np.isin(self.engine_ids, np.asarray(engines)))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain numpy arrays for a PySyft asset: X, y, engine_ids (and settings, decimals)."""
        out = {"X": self.X, "y": self.y, "engine_ids": self.engine_ids}
        if self.settings is not None:
            out["settings"] = self.settings
            out["decimals"] = np.asarray(self.decimals, dtype=np.int64)
        return out

    def save(self, path: str | Path) -> Path:
        """Write the arrays to an uncompressed .npz file (no pickled objects)."""
        path = Path(path)
        with open(path, "wb") as fh:
            np.savez(fh, **self.to_arrays())
        return path

    @classmethod
    def load(cls, path: str | Path) -> Partition:
        """Read a file written by save(); object arrays are refused (allow_pickle=False)."""
        try:
            with np.load(Path(path), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetError(f"cannot read partition file {path}: {exc}") from exc
        return cls.from_arrays(arrays)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> Partition:
        """Inverse of to_arrays; validates keys, dtypes and shapes (no settings: one regime)."""
        try:
            X = np.asarray(arrays["X"], dtype=np.float32)
            y = np.asarray(arrays["y"], dtype=np.float32)
            e = np.asarray(arrays["engine_ids"], dtype=np.int64)
            s = arrays.get("settings")
            s = None if s is None else np.asarray(s, dtype=np.float32)
            dec = arrays.get("decimals")
            dec = () if dec is None else tuple(int(d) for d in np.asarray(dec).reshape(-1))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"malformed partition arrays: {exc}") from exc
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(y))):
            raise DatasetError("partition arrays contain non-finite values")
        if s is not None and not np.all(np.isfinite(s)):
            raise DatasetError("partition settings contain non-finite values")
        return cls(X, y, e, s, dec)


@dataclass(frozen=True)
class Prepared:
    """Model-ready data: all training windows, last test windows, and how they were made."""

    name: str
    train: Partition
    test: Partition
    features: tuple[str, ...]
    normalizer: Normalizer
    window: int
    rul_cap: float
    train_lifetimes: dict[int, int]

    @property
    def n_features(self) -> int:
        return len(self.features)


def prepare(
    data: CmapssData,
    *,
    window: int = DEFAULT_WINDOW,
    rul_cap: float = DEFAULT_RUL_CAP,
    sensors: Sequence[str] | None = None,
    normalise: bool = True,
    keep_settings: bool = False,
) -> Prepared:
    """Select sensors and fit the normaliser on training rows, then window train and test.

    Train: one window per row from each engine's window-th cycle, label = capped RUL. Test:
    each engine's last window, label = capped true RUL from the RUL file. ``normalise=False``
    keeps both windows' raw sensor values (what a factory stores: a federation normalises at
    training time with statistics its factories computed together, federation.ml.fedstats);
    ``normalizer`` is then the central fit, for comparison only. ``keep_settings`` keeps each
    window row's operating settings in the partitions (C-MAPSS's regime rounding), so the
    federation can z-score per regime.
    """
    chosen = (
        tuple(sensors)
        if sensors is not None
        else informative_sensors(data.train, data.sensor_names)
    )
    unknown = [s for s in chosen if s not in data.sensor_names]
    if unknown or not chosen:
        raise DatasetError(f"unknown or empty sensor selection: {unknown or chosen}")
    cols = [data.sensor_names.index(s) for s in chosen]
    norm = Normalizer().fit(data.train.sensors[:, cols], data.train.settings, chosen)
    train_x, test_x = data.train.sensors[:, cols], data.test.sensors[:, cols]
    if normalise:
        train_x = norm.transform(train_x, data.train.settings)
        test_x = norm.transform(test_x, data.test.settings)
    Xtr, ytr, etr = make_windows(
        train_x, data.train.units, piecewise_rul(data.train, rul_cap), window
    )
    test_rul = piecewise_rul(data.test, rul_cap, final_rul=data.test_rul)
    Xte, yte, ete = make_windows(test_x, data.test.units, test_rul, window, last_only=True)
    train, test = Partition(Xtr, ytr, etr), Partition(Xte, yte, ete)
    if keep_settings:  # each window row's raw settings, for per-regime z-scoring later
        dec = REGIME_DECIMALS
        Str = make_windows(data.train.settings, data.train.units, None, window)[0]
        Ste = make_windows(data.test.settings, data.test.units, None, window, last_only=True)[0]
        train, test = Partition(Xtr, ytr, etr, Str, dec), Partition(Xte, yte, ete, Ste, dec)
    return Prepared(
        name=data.name,
        train=train,
        test=test,
        features=chosen,
        normalizer=norm,
        window=window,
        rul_cap=rul_cap,
        train_lifetimes=data.train.lifetimes(),
    )


def load_dataset(path: str | Path | None = None, *, seed: int = 0, **kwargs: Any) -> Prepared:
    """Prepared C-MAPSS data from `path`, or the synthetic fleet (embedded default) when None."""
    data = load_cmapss(path) if path is not None else synthetic_fleet(seed=seed)
    return prepare(data, **kwargs)
