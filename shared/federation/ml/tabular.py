"""A factory's own sensor table (CSV/Parquet) read through a declared YAML schema, with located errors."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from federation.ml.data import DEFAULT_RUL_CAP, DEFAULT_WINDOW, REGIME_DECIMALS, DatasetError

__all__ = [
    "CMAPSS_COLUMNS",
    "DataSchema",
    "ImportError_",
    "SensorTable",
    "cmapss_schema",
    "load_schema",
    "read_table",
    "schema_from_dict",
]

#: C-MAPSS rounding of its three operating settings into regimes (what the loader has always used).
_DEFAULT_DECIMALS = 1
_WHITESPACE = ("whitespace", " ", r"\s+")
_MISSING = ("", "nan", "na", "n/a", "null", "none")
_INFINITE = ("inf", "infinity")


class ImportError_(DatasetError):  # noqa: N801 - `ImportError` is a builtin
    """Bad factory data or schema, located: file, and where known unit, row (1-based) and column."""

    reason = "data_import"

    def __init__(
        self,
        what: str,
        *,
        file: str | Path | None = None,
        unit: Any = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.unit, self.row, self.column = unit, row, column
        where = [p for p in (
            self.file,
            None if row is None else f"row {row}",
            None if unit is None else f"unit {unit}",
            None if column is None else f"column {column!r}",
        ) if p]  # fmt: skip
        super().__init__(f"{', '.join(where)}: {what}" if where else what)


@dataclass(frozen=True)
class DataSchema:
    """What each column of a factory's table means (the YAML of `pdmfed data import --schema`).

    ``settings`` maps each operating-setting column to the decimals it is rounded to when
    naming an operating regime (normalisation statistics are per regime); no settings = one
    regime. ``label`` is ``failure_at_last_cycle`` (run-to-failure: RUL = last cycle - cycle)
    or ``rul`` with ``rul_column`` (an explicit remaining-life column).
    """

    unit: str
    cycle: str
    sensors: tuple[str, ...]
    settings: tuple[tuple[str, int], ...] = ()
    label: Literal["failure_at_last_cycle", "rul", "none"] = "failure_at_last_cycle"
    rul_column: str | None = None
    timestamp: str | None = None
    ignore: tuple[str, ...] = ()
    window: int = DEFAULT_WINDOW
    rul_cap: float = DEFAULT_RUL_CAP
    separator: str = ","
    header: bool = True
    columns: tuple[str, ...] = ()
    name: str = "schema"
    sha256: str = ""

    @property
    def setting_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.settings)

    @property
    def decimals(self) -> tuple[int, ...]:
        return tuple(d for _, d in self.settings)

    def used_columns(self, *, with_label: bool = True) -> tuple[str, ...]:
        """Every column the schema reads (unit, cycle, timestamp, settings, sensors, label)."""
        cols = [self.unit, self.cycle, *([self.timestamp] if self.timestamp else [])]
        cols += [*self.setting_names, *self.sensors]
        if with_label and self.label == "rul" and self.rul_column:
            cols.append(self.rul_column)
        return tuple(cols)

    def to_dict(self) -> dict[str, Any]:
        """The schema as YAML would give it (``schema_from_dict`` reads it back)."""
        read: dict[str, Any] = {"separator": self.separator, "header": self.header}
        if self.columns:
            read["columns"] = list(self.columns)
        return {
            "unit": self.unit,
            "cycle": self.cycle,
            "timestamp": self.timestamp,
            "settings": {n: d for n, d in self.settings},
            "sensors": list(self.sensors),
            "ignore": list(self.ignore),
            "label": {"rul_column": self.rul_column} if self.label == "rul" else self.label,
            "window": self.window,
            "rul_cap": self.rul_cap,
            "read": read,
        }


#: NASA C-MAPSS's 26 columns as shipped (examples/cmapss.schema.yaml names them the same way).
CMAPSS_COLUMNS = (
    "unit", "cycle", "setting_1", "setting_2", "setting_3", *(f"s{i}" for i in range(1, 22)),
)  # fmt: skip


def cmapss_schema(sensors: Sequence[str], *, window: int = DEFAULT_WINDOW,
                  rul_cap: float = DEFAULT_RUL_CAP, header: bool = False) -> DataSchema:  # fmt: skip
    """C-MAPSS (or the synthetic fleet, same layout) as a schema using `sensors` as features.

    ``header=False`` reads the NASA text files as shipped; True a CSV with a header row.
    """
    raw = {
        "unit": "unit",
        "cycle": "cycle",
        "settings": dict(zip(CMAPSS_COLUMNS[2:5], REGIME_DECIMALS, strict=True)),
        "sensors": list(sensors),
        "ignore": [c for c in CMAPSS_COLUMNS[5:] if c not in sensors],
        "label": "failure_at_last_cycle",
        "window": window,
        "rul_cap": rul_cap,
        "read": {"separator": "whitespace", "header": False, "columns": list(CMAPSS_COLUMNS)}
        if not header
        else {"separator": ",", "header": True},
    }
    return schema_from_dict(raw, name="cmapss")


_KEYS = {
    "unit", "cycle", "timestamp", "settings", "sensors", "label", "ignore", "window", "rul_cap",
    "read",
}  # fmt: skip


def _names(raw: Any, key: str, file: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ImportError_(f"schema key {key!r} must be a list of column names", file=file)
    names = tuple(str(v) for v in raw)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ImportError_(f"schema key {key!r} names {dupes} twice", file=file)
    return names


def _settings(raw: Any, file: str) -> tuple[tuple[str, int], ...]:
    if raw is None:
        return ()
    if isinstance(raw, Mapping):
        out = []
        for name, dec in raw.items():
            if not isinstance(dec, int) or isinstance(dec, bool) or not 0 <= dec <= 6:
                raise ImportError_(
                    f"setting {name!r}: regime rounding must be 0..6 decimals, got {dec!r}",
                    file=file,
                )
            out.append((str(name), dec))
        return tuple(out)
    return tuple((n, _DEFAULT_DECIMALS) for n in _names(raw, "settings", file))


def schema_from_dict(raw: Any, *, name: str = "schema", sha256: str = "") -> DataSchema:
    """Validate a parsed schema mapping (an ImportError_ naming the key when it is wrong)."""
    file = name
    if not isinstance(raw, Mapping):
        raise ImportError_(
            "a schema must be a mapping (unit, cycle, sensors, label, ...)", file=file
        )
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ImportError_(f"unknown schema keys {unknown}; known: {sorted(_KEYS)}", file=file)
    for key in ("unit", "cycle"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ImportError_(f"schema must name the {key} column ({key}: NAME)", file=file)
    sensors = _names(raw.get("sensors"), "sensors", file)
    if not sensors:
        raise ImportError_("schema names no sensor column (sensors: [..]): nothing to learn from",
                           file=file)  # fmt: skip
    label_raw = raw.get("label", "failure_at_last_cycle")
    rul_column = None
    if isinstance(label_raw, Mapping):
        rul_column = label_raw.get("rul_column")
        label_raw = "rul" if rul_column else label_raw.get("kind")
    if label_raw not in ("failure_at_last_cycle", "rul", "none"):
        raise ImportError_(
            f"label must be failure_at_last_cycle, none or {{rul_column: NAME}}, got {label_raw!r}",
            file=file,
        )
    if label_raw == "rul" and not isinstance(rul_column, str):
        raise ImportError_("label rul needs {rul_column: NAME}", file=file)
    read = raw.get("read") or {}
    if not isinstance(read, Mapping) or set(read) - {"separator", "header", "columns"}:
        raise ImportError_("read: takes separator, header and columns only", file=file)
    window, cap = raw.get("window", DEFAULT_WINDOW), raw.get("rul_cap", DEFAULT_RUL_CAP)
    if not isinstance(window, int) or isinstance(window, bool) or not 2 <= window <= 500:
        raise ImportError_(f"window must be an integer in 2..500, got {window!r}", file=file)
    if not isinstance(cap, int | float) or isinstance(cap, bool) or not cap > 0:
        raise ImportError_(f"rul_cap must be a positive number, got {cap!r}", file=file)
    schema = DataSchema(
        unit=raw["unit"],
        cycle=raw["cycle"],
        sensors=sensors,
        settings=_settings(raw.get("settings"), file),
        label=label_raw,
        rul_column=rul_column,
        timestamp=raw.get("timestamp"),
        ignore=_names(raw.get("ignore"), "ignore", file),
        window=window,
        rul_cap=float(cap),
        separator=str(read.get("separator", ",")),
        header=bool(read.get("header", True)),
        columns=_names(read.get("columns"), "read.columns", file),
        name=name,
        sha256=sha256,
    )
    used = schema.used_columns()
    twice = sorted({c for c in used if used.count(c) > 1} | (set(used) & set(schema.ignore)))
    if twice:
        raise ImportError_(f"schema gives columns {twice} two roles", file=file)
    if not schema.header and not schema.columns:
        raise ImportError_("read.header is false: list the file's columns in read.columns",
                           file=file)  # fmt: skip
    return schema


def load_schema(path: str | Path) -> DataSchema:
    """Read and validate a schema YAML file."""
    import yaml

    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ImportError_(f"cannot read schema: {exc.strerror}", file=p) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ImportError_(f"not valid YAML: {exc}", file=p) from exc
    if raw is None:
        raise ImportError_("the schema is empty: it names no column", file=p)
    return schema_from_dict(raw, name=str(p), sha256=hashlib.sha256(text).hexdigest())


@dataclass(frozen=True)
class SensorTable:
    """Validated rows sorted by (unit, cycle): numeric arrays plus the units' own ids."""

    unit_ids: tuple[str, ...]  # the file's unit id of each code 0..n_units-1
    unit_numbers: np.ndarray  # int64 (n_units,): the id itself when integer, else code + 1
    units: np.ndarray  # int64 (rows,): code into unit_ids
    cycles: np.ndarray  # int64 (rows,)
    settings: np.ndarray  # float64 (rows, n_settings)
    sensors: np.ndarray  # float64 (rows, n_sensors)
    rul: np.ndarray | None  # float64 (rows,): label before capping, None without a label
    timestamps: tuple[str, str] | None  # first and last timestamp in the file
    sha256: str  # of the file's bytes

    def __len__(self) -> int:
        return int(self.units.shape[0])


def _read_frame(path: Path, schema: DataSchema) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            whitespace = schema.separator in _WHITESPACE
            frame = pd.read_csv(
                path,
                sep=r"\s+" if whitespace else schema.separator,
                header=0 if schema.header else None,
                names=list(schema.columns) if schema.columns else None,
                dtype=str,
                keep_default_na=False,
                skipinitialspace=True,
                index_col=False,
            )
    except FileNotFoundError as exc:
        raise ImportError_("file not found", file=path) from exc
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        raise ImportError_(f"cannot read as {'Parquet' if suffix in ('.parquet', '.pq') else 'CSV'}: "
                           f"{' '.join(str(exc).split())}", file=path) from exc  # fmt: skip
    if len(frame) == 0:
        raise ImportError_("no rows", file=path)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _numeric(frame: Any, col: str, path: Path, unit_of: Any) -> np.ndarray:
    """The column as float64; the first non-number or NaN/inf run is a located error."""
    import pandas as pd

    raw = frame[col]
    text = raw.astype(str).str.strip() if raw.dtype == object else None
    values = pd.to_numeric(text if text is not None else raw, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if not bad.any():
        return values
    i = int(np.flatnonzero(bad)[0])
    word = text.iloc[i].lower() if text is not None else ""
    if (
        text is not None
        and word not in _MISSING
        and word.lstrip("+-") not in _INFINITE
        and np.isnan(values[i])
    ):
        raise ImportError_(f"{raw.iloc[i]!r} is not a number", file=path, row=i + 1,
                           unit=unit_of(i), column=col)  # fmt: skip
    run = i
    while run + 1 < bad.shape[0] and bad[run + 1]:
        run += 1
    what = "empty/NaN" if word in _MISSING or np.isnan(values[i]) else "infinite"
    raise ImportError_(
        f"{what} value ({run - i + 1} in a row from here, {int(bad.sum())} in the column)",
        file=path, row=i + 1, unit=unit_of(i), column=col,
    )  # fmt: skip


def read_table(path: str | Path, schema: DataSchema, *, with_label: bool = True) -> SensorTable:
    """Read and validate a factory table against `schema` (every problem an ImportError_).

    Checks, in order: the columns (missing ones, and extra ones the schema neither uses nor
    ignores), numbers (non-numeric, NaN/inf), units and cycles (integer cycles, no duplicate
    and no decreasing cycle within a unit in file order), labels (RUL >= 0), and every unit at
    least one window long (training data only: ``with_label``).
    """
    p = Path(path)
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise ImportError_(f"cannot read: {exc.strerror}", file=p) from exc
    frame = _read_frame(p, schema)
    needed = schema.used_columns(with_label=with_label)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ImportError_(f"missing column(s) {missing} named by the schema; the file has "
                           f"{list(frame.columns)}", file=p)  # fmt: skip
    label_cols = (schema.rul_column,) if schema.rul_column else ()
    extra = [c for c in frame.columns if c not in (*needed, *schema.ignore, *label_cols)]
    if extra:
        raise ImportError_(f"extra column(s) {extra} the schema neither uses nor ignores "
                           f"(list them under ignore: to drop them)", file=p)  # fmt: skip
    unit_raw = frame[schema.unit].astype(str).str.strip().to_numpy()
    empty = np.flatnonzero(unit_raw == "")
    if empty.size:
        raise ImportError_("empty unit id", file=p, row=int(empty[0]) + 1, column=schema.unit)
    first_seen = list(dict.fromkeys(unit_raw.tolist()))
    numbered = all(u.lstrip("-").isdigit() for u in first_seen) and len(
        {int(u) for u in first_seen}
    ) == len(first_seen)
    if numbered:  # integer unit ids keep their numbers and their order
        first_seen.sort(key=int)
    codes = {u: k for k, u in enumerate(first_seen)}
    unit_codes = np.fromiter((codes[u] for u in unit_raw), np.int64, unit_raw.shape[0])

    def unit_of(i: int) -> str:
        return str(unit_raw[i])

    cycles = _numeric(frame, schema.cycle, p, unit_of)
    frac = np.flatnonzero(cycles != np.round(cycles))
    if frac.size:
        i = int(frac[0])
        raise ImportError_(f"cycle {cycles[i]:g} is not a whole number", file=p, row=i + 1,
                           unit=unit_of(i), column=schema.cycle)  # fmt: skip
    cyc = cycles.astype(np.int64)
    order = np.argsort(unit_codes, kind="stable")  # file order kept within a unit
    u_sorted, c_sorted = unit_codes[order], cyc[order]
    same = u_sorted[1:] == u_sorted[:-1]
    for cond, what in (
        (same & (c_sorted[1:] == c_sorted[:-1]), "duplicate cycle {c} (already at row {prev})"),
        (same & (c_sorted[1:] < c_sorted[:-1]), "cycle {c} after cycle {pc} (row {prev}): "
                                                "cycles must increase within a unit"),
    ):  # fmt: skip
        hits = np.flatnonzero(cond)
        if hits.size:
            k = int(hits[0])
            i, prev = int(order[k + 1]), int(order[k])
            raise ImportError_(what.format(c=cyc[i], pc=cyc[prev], prev=prev + 1), file=p,
                               row=i + 1, unit=unit_of(i), column=schema.cycle)  # fmt: skip
    settings = np.column_stack(
        [_numeric(frame, c, p, unit_of) for c in schema.setting_names]
    ) if schema.settings else np.zeros((len(frame), 0))  # fmt: skip
    sensors = np.column_stack([_numeric(frame, c, p, unit_of) for c in schema.sensors])
    rul = None
    if with_label and schema.label == "rul":
        rul = _numeric(frame, schema.rul_column, p, unit_of)
        neg = np.flatnonzero(rul < 0)
        if neg.size:
            i = int(neg[0])
            raise ImportError_(f"negative remaining life {rul[i]:g}", file=p, row=i + 1,
                               unit=unit_of(i), column=schema.rul_column)  # fmt: skip
    elif with_label and schema.label == "failure_at_last_cycle":
        last = np.zeros(len(codes), np.int64)
        np.maximum.at(last, unit_codes, cyc)
        rul = (last[unit_codes] - cyc).astype(np.float64)
    lengths = np.bincount(unit_codes, minlength=len(codes))
    # a unit shorter than the window cannot fill one input (training or prediction)
    short = np.flatnonzero(lengths < schema.window)
    if short.size:
        u = int(short[0])
        names = [first_seen[k] for k in short[:5]]
        raise ImportError_(
            f"{lengths[u]} cycles, shorter than the window of {schema.window} "
            f"({short.size} unit(s) too short: {names}{' ...' if short.size > 5 else ''}; "
            f"drop them or lower window:)",
            file=p, unit=first_seen[u], row=int(np.flatnonzero(unit_codes == u)[0]) + 1,
        )  # fmt: skip
    stamps = None
    if schema.timestamp:
        import pandas as pd

        ts = pd.to_datetime(frame[schema.timestamp], errors="coerce", utc=True)
        bad = np.flatnonzero(ts.isna().to_numpy())
        if bad.size:
            i = int(bad[0])
            raise ImportError_(f"{frame[schema.timestamp].iloc[i]!r} is not a date/time", file=p,
                               row=i + 1, unit=unit_of(i), column=schema.timestamp)  # fmt: skip
        stamps = (ts.min().isoformat(), ts.max().isoformat())
    sort = np.lexsort((cyc, unit_codes))
    return SensorTable(
        unit_ids=tuple(first_seen),
        unit_numbers=np.array(
            [int(u) for u in first_seen] if numbered else range(1, len(first_seen) + 1), np.int64
        ),
        units=unit_codes[sort],
        cycles=cyc[sort],
        settings=settings[sort],
        sensors=sensors[sort],
        rul=None if rul is None else rul[sort],
        timestamps=stamps,
        sha256=digest,
    )
