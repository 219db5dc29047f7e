"""`pdmfed data import`: a factory's own table + schema -> the datasite's partition and a data card."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pytest
import yaml
from federation.cli import main
from federation.data_cli import CARD_FILE, PARTITION_FILE, write_import
from federation.ml.data import Partition, load_dataset
from federation.ml.tabular import ImportError_, load_schema, read_table

PROJECT_ROOT = Path(__file__).resolve().parents[3]
CMAPSS_SCHEMA = PROJECT_ROOT / "examples" / "cmapss.schema.yaml"

SCHEMA = {
    "unit": "engine",
    "cycle": "cycle",
    "timestamp": "time",
    "settings": {"load": 0},
    "sensors": ["temp", "vib"],
    "label": "failure_at_last_cycle",
    "window": 3,
}


def _rows(units: dict[str, int]) -> list[dict]:
    rows, day = [], 0
    for u, n in units.items():
        for c in range(1, n + 1):
            day += 1
            rows.append({"engine": u, "cycle": c, "time": f"2026-01-{day:02d}T00:00:00Z",
                         "load": 1, "temp": 500.0 + c + len(u), "vib": 0.1 * c})  # fmt: skip
    return rows


def _csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    lines = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _schema(path: Path, **changes) -> Path:
    raw = {**SCHEMA, **changes}
    path.write_text(yaml.safe_dump({k: v for k, v in raw.items() if v is not None}))
    return path


@pytest.fixture
def good(tmp_path):
    return _csv(tmp_path / "plant.csv", _rows({"A7": 5, "B2": 4})), _schema(tmp_path / "s.yaml")


def _refusal(tmp_path, data: Path, schema: Path) -> ImportError_:
    with pytest.raises(ImportError_) as info:
        write_import(tmp_path / "out", data=data, schema=schema)
    assert not (tmp_path / "out" / PARTITION_FILE).exists()
    return info.value


def test_a_valid_table_becomes_windows_labels_and_a_card_without_rows(tmp_path, good):
    data, schema = good
    card = write_import(tmp_path / "out", data=data, schema=schema)
    part = Partition.load(tmp_path / "out" / PARTITION_FILE)
    # unit A7: 5 cycles -> 3 windows, RUL 2,1,0; unit B2: 4 cycles -> 2 windows, RUL 1,0
    assert part.X.shape == (5, 3, 2)
    assert part.y.tolist() == [2.0, 1.0, 0.0, 1.0, 0.0]
    assert part.engine_ids.tolist() == [1, 1, 1, 2, 2]  # string ids are numbered 1..n
    assert card["rows"] == 9 and card["units"] == 2 and card["windows"] == 5
    assert card["cycles"] == {"total": 9, "per_unit_min": 4, "per_unit_median": 4.5,
                              "per_unit_max": 5}  # fmt: skip
    assert card["date_range"] == ["2026-01-01T00:00:00+00:00", "2026-01-09T00:00:00+00:00"]
    assert card["features"] == ["temp", "vib"] and card["columns"]["settings"] == ["load"]
    assert card["source"]["sha256"] == __import__("hashlib").sha256(data.read_bytes()).hexdigest()
    text = (tmp_path / "out" / CARD_FILE).read_text()
    assert json.loads(text) == card and "A7" not in text  # aggregates only, no unit id
    for f in (PARTITION_FILE, CARD_FILE):
        assert stat.S_IMODE((tmp_path / "out" / f).stat().st_mode) == 0o600


def test_parquet_reads_like_csv(tmp_path, good):
    import pandas as pd

    data, schema = good
    pq = tmp_path / "plant.parquet"
    pd.read_csv(data).to_parquet(pq)
    a = write_import(tmp_path / "a", data=data, schema=schema)
    b = write_import(tmp_path / "b", data=pq, schema=schema)
    assert a["normalizer"] == b["normalizer"] and a["windows"] == b["windows"]
    assert np.array_equal(Partition.load(tmp_path / "a" / PARTITION_FILE).X,
                          Partition.load(tmp_path / "b" / PARTITION_FILE).X)  # fmt: skip


def test_an_explicit_rul_column_is_the_label_capped(tmp_path):
    rows = _rows({"1": 4})
    for r, rul in zip(rows, [300, 200, 100, 50], strict=True):
        r["rul"] = rul
    data = _csv(tmp_path / "p.csv", rows)
    schema = _schema(tmp_path / "s.yaml", label={"rul_column": "rul"}, rul_cap=150)
    write_import(tmp_path / "out", data=data, schema=schema)
    assert Partition.load(tmp_path / "out" / PARTITION_FILE).y.tolist() == [100.0, 50.0]


def test_a_missing_column_is_named(tmp_path, good):
    rows = [{k: v for k, v in r.items() if k != "vib"} for r in _rows({"A": 5})]
    err = _refusal(tmp_path, _csv(tmp_path / "p.csv", rows), good[1])
    assert "missing column(s) ['vib']" in str(err) and err.file.endswith("p.csv")


def test_an_extra_column_is_refused_unless_ignored(tmp_path):
    rows = [{**r, "operator": "x"} for r in _rows({"A": 5})]
    data = _csv(tmp_path / "p.csv", rows)
    err = _refusal(tmp_path, data, _schema(tmp_path / "s.yaml"))
    assert "extra column(s) ['operator']" in str(err) and "ignore:" in str(err)
    write_import(
        tmp_path / "ok", data=data, schema=_schema(tmp_path / "s2.yaml", ignore=["operator"])
    )


def test_a_non_numeric_value_is_located_by_row_unit_and_column(tmp_path, good):
    rows = _rows({"A": 5, "B": 5})
    rows[6]["temp"] = "12,5°C".replace(",", ".")
    err = _refusal(tmp_path, _csv(tmp_path / "p.csv", rows), good[1])
    assert (err.row, err.unit, err.column) == (7, "B", "temp")
    assert "'12.5°C' is not a number" in str(err) and "row 7" in str(err)


@pytest.mark.parametrize(("bad", "what"), [("", "empty/NaN"), ("NaN", "empty/NaN"),
                                           ("inf", "infinite")])  # fmt: skip
def test_a_nan_or_inf_run_is_located_with_its_length(tmp_path, good, bad, what):
    rows = _rows({"A": 6})
    for r in rows[2:5]:
        r["vib"] = bad
    err = _refusal(tmp_path, _csv(tmp_path / "p.csv", rows), good[1])
    assert (err.row, err.unit, err.column) == (3, "A", "vib")
    assert f"{what} value (3 in a row from here, 3 in the column)" in str(err)


def test_a_duplicate_cycle_within_a_unit_is_located(tmp_path, good):
    rows = _rows({"A": 5, "B": 5})
    rows[8]["cycle"] = 3
    err = _refusal(tmp_path, _csv(tmp_path / "p.csv", rows), good[1])
    assert (err.row, err.unit, err.column) == (9, "B", "cycle")
    assert "duplicate cycle 3 (already at row 8)" in str(err)


def test_a_cycle_going_backwards_within_a_unit_is_located(tmp_path, good):
    rows = _rows({"A": 5})
    rows[3]["cycle"], rows[4]["cycle"] = 2, 6
    err = _refusal(tmp_path, _csv(tmp_path / "p.csv", rows), good[1])
    assert (err.row, err.unit) == (4, "A") and "cycle 2 after cycle 3 (row 3)" in str(err)


def test_units_may_interleave_in_the_file(tmp_path, good):
    rows = _rows({"A": 4, "B": 4})
    mixed = [r for pair in zip(rows[:4], rows[4:], strict=True) for r in pair]
    table = read_table(_csv(tmp_path / "p.csv", mixed), load_schema(good[1]))
    assert table.cycles.tolist() == [1, 2, 3, 4, 1, 2, 3, 4]


def test_a_unit_shorter_than_the_window_is_named(tmp_path, good):
    err = _refusal(tmp_path, _csv(tmp_path / "p.csv", _rows({"A": 5, "B": 2, "C": 1})), good[1])
    assert err.unit == "B" and err.row == 6
    assert "2 cycles, shorter than the window of 3 (2 unit(s) too short: ['B', 'C']" in str(err)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"sensors": []}, "schema names no sensor column"),
        ({"sensors": None}, "schema names no sensor column"),
        ({"unit": None}, "schema must name the unit column"),
        ({"sensor": ["x"]}, "unknown schema keys ['sensor']"),
        ({"label": "broken"}, "label must be failure_at_last_cycle, none or {rul_column: NAME}"),
        ({"sensors": ["temp", "temp"]}, "names ['temp'] twice"),
        ({"ignore": ["temp"]}, "gives columns ['temp'] two roles"),
        ({"window": 1}, "window must be an integer in 2..500"),
    ],
)
def test_a_schema_that_names_nothing_or_is_inconsistent_is_refused(tmp_path, good, changes, reason):
    err = _refusal(tmp_path, good[0], _schema(tmp_path / "bad.yaml", **changes))
    assert reason in str(err) and err.file.endswith("bad.yaml")


def test_an_empty_schema_file_is_refused(tmp_path, good):
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert "names no column" in str(_refusal(tmp_path, good[0], tmp_path / "empty.yaml"))


def test_agreed_statistics_are_used_instead_of_fitting(tmp_path, good):
    data, schema = good
    first = write_import(tmp_path / "a", data=data, schema=schema)
    other = _csv(tmp_path / "other.csv", _rows({"Z": 6}))
    (tmp_path / "card.json").write_text(json.dumps(first))
    second = write_import(
        tmp_path / "b", data=other, schema=schema, normalizer=tmp_path / "card.json"
    )
    assert second["normalizer"] == first["normalizer"]
    assert second["normalizer_source"].endswith("card.json")


def test_the_cli_prints_one_line_per_outcome(tmp_path, good, capsys):
    data, schema = good
    args = [
        "data",
        "import",
        "--data",
        str(data),
        "--schema",
        str(schema),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(args) == 0
    assert "9 rows, 2 units (4-5 cycles)" in capsys.readouterr().out
    assert main(args) == 2
    assert "--force replaces it" in capsys.readouterr().err
    bad = _csv(tmp_path / "bad.csv", [{**r, "temp": "x"} for r in _rows({"A": 5})])
    assert main([*args[:3], str(bad), *args[4:], "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pdmfed: ") and len(err.strip().splitlines()) == 1
    assert "bad.csv, row 1, unit A, column 'temp': 'x' is not a number" in err


def test_the_shipped_cmapss_schema_gives_the_built_in_loaders_windows(tmp_path):
    fd001 = PROJECT_ROOT.parent / "shared" / "data" / "cmapss" / "FD001"
    if not (fd001 / "train_FD001.txt").is_file():
        pytest.skip(f"real C-MAPSS FD001 data not found at {fd001}")
    card = write_import(tmp_path / "o", data=fd001 / "train_FD001.txt", schema=CMAPSS_SCHEMA)
    part = Partition.load(tmp_path / "o" / PARTITION_FILE)
    ref = load_dataset(fd001, normalise=False).train
    assert card["units"] == 100 and card["rows"] == 20631
    assert np.array_equal(part.y, ref.y) and np.array_equal(part.engine_ids, ref.engine_ids)
    # raw sensor values, as the built-in loader reads them (float32), never z-scored here
    assert np.allclose(part.X, ref.X, rtol=1e-6, atol=1e-3)


def test_the_shipped_cmapss_schema_is_the_one_the_demo_bundles_record():
    from federation.ml.data import FD001_INFORMATIVE_SENSORS
    from federation.ml.tabular import cmapss_schema

    shipped = load_schema(CMAPSS_SCHEMA)
    built = cmapss_schema([f"s{i}" for i in FD001_INFORMATIVE_SENSORS])
    assert shipped.to_dict() == built.to_dict()


def test_a_table_without_operating_settings_is_one_regime(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "load"} for r in _rows({"A": 5, "B": 4})]
    schema = _schema(tmp_path / "s.yaml", settings={})
    card = write_import(tmp_path / "out", data=_csv(tmp_path / "p.csv", rows), schema=schema)
    assert len(card["normalizer"]["regimes"]) == 1 and card["columns"]["settings"] == []


def test_each_setting_is_rounded_as_the_schema_says_when_naming_regimes(tmp_path):
    rows = _rows({"A": 6})
    for r, load in zip(rows, [10.04, 10.02, 20.01, 19.98, 10.01, 20.03], strict=True):
        r["load"] = load
    data = _csv(tmp_path / "p.csv", rows)
    coarse = write_import(tmp_path / "a", data=data, schema=_schema(tmp_path / "a.yaml"))
    fine = write_import(tmp_path / "b", data=data,
                        schema=_schema(tmp_path / "b.yaml", settings={"load": 2}))  # fmt: skip
    assert [r[0] for r in coarse["normalizer"]["regimes"]] == [10.0, 20.0]
    assert len(fine["normalizer"]["regimes"]) == 6 and fine["normalizer"]["decimals"] == [2]


def test_the_partition_keeps_each_window_rows_settings_and_the_schemas_rounding(tmp_path):
    rows = _rows({"A": 5, "B": 4})
    for k, r in enumerate(rows):
        r["load"] = 10.0 * (k % 3)
    data = _csv(tmp_path / "p.csv", rows)
    write_import(tmp_path / "out", data=data, schema=_schema(tmp_path / "s.yaml"))
    part = Partition.load(tmp_path / "out" / PARTITION_FILE)
    assert part.decimals == (0,) and part.settings.shape == (5, 3, 1)
    # unit A rows 0..4 -> windows end at rows 2, 3, 4; unit B rows 5..8 -> at rows 7, 8
    loads = np.array([r["load"] for r in rows], np.float32)
    expect = np.stack([loads[i - 2 : i + 1] for i in (2, 3, 4, 7, 8)])[..., None]
    assert np.array_equal(part.settings, expect)
    no_settings = [{k: v for k, v in r.items() if k != "load"} for r in rows]
    write_import(tmp_path / "old", data=_csv(tmp_path / "q.csv", no_settings),
                 schema=_schema(tmp_path / "t.yaml", settings={}))  # fmt: skip
    old = Partition.load(tmp_path / "old" / PARTITION_FILE)
    assert old.settings is None and old.decimals == ()  # one pooled regime, as before
