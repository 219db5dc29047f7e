"""The model bundle a run leaves, `pdmfed predict` on a factory table, `pdmfed export` verified."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from federation.cli import main
from federation.data_cli import write_import
from federation.ml.bundle import BUNDLE_FILE, BundleError, load_bundle
from federation.ml.data import Normalizer
from federation.ml.export import TOLERANCE, check_windows, export_bundle, verify_export
from federation.ml.models import build_model
from federation.ml.predict import predict_units
from federation.ml.tabular import CMAPSS_COLUMNS, cmapss_schema, load_schema
from federation.ml.train import predict, train_local
from federation.orchestrator.summary import write_run

PROJECT_ROOT = Path(__file__).resolve().parents[3]
FD001 = PROJECT_ROOT.parent / "shared" / "data" / "cmapss" / "FD001"
SENSORS = ["temp", "vib"]
CONFIG = {
    "training": {"model_type": "cnn", "n_features": 2, "window": 3},
    "record_privacy": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0},
    "privacy": {"enabled": False, "delta": 1e-5},
    "robustness": {"enabled": True, "rule": {"name": "trimmed_mean"}},
}
ROUNDS = [{"round_num": 1, "record_epsilon": {"f1": 1.5, "f2": 2.5}, "participants": ["f1", "f2"],
           "rejected": {"f3": "byzantine"}, "byzantine": ["f3"]}]  # fmt: skip


def _plant_csv(path: Path, units: dict[str, int], bad: dict | None = None) -> Path:
    lines = ["engine,cycle,load,temp,vib"]
    for u, n in units.items():
        for c in range(1, n + 1):
            row = {"temp": 500.0 + c * 0.5 + len(u), "vib": 0.1 * c}
            row.update((bad or {}).get((u, c), {}))
            lines.append(f"{u},{c},1,{row['temp']},{row['vib']}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _schema(path: Path) -> Path:
    path.write_text(
        "unit: engine\ncycle: cycle\nsettings: {load: 0}\nsensors: [temp, vib]\nwindow: 3\n"
    )
    return path


@pytest.fixture
def run(tmp_path):
    """A run folder whose bundle was trained on an imported plant table."""
    schema = _schema(tmp_path / "plant.yaml")
    card = write_import(tmp_path / "site", data=_plant_csv(tmp_path / "train.csv", {"A": 9, "B": 8}),
                        schema=schema)  # fmt: skip
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in build_model("cnn", 2, 3).state_dict().items()}
    summary = {"campaign_id": "plant-2026", "config": CONFIG, "rounds": ROUNDS,
               "final": {"rmse": None, "epsilon": None, "rounds": 1, "reason": "max_rounds"}}  # fmt: skip
    write_run(tmp_path / "run", summary, state, bundle={
        "features": card["features"], "normalizer": card["normalizer"], "rul_cap": 125.0,
        "data_cards": [card], "schema": load_schema(schema).to_dict(),
    })  # fmt: skip
    return tmp_path / "run"


def test_a_run_leaves_a_bundle_with_everything_needed_to_use_and_judge_the_model(run):
    manifest = json.loads((run / BUNDLE_FILE).read_text())
    assert manifest["campaign_id"] == "plant-2026"
    assert manifest["architecture"]["model_type"] == "cnn" and manifest["window"] == 3
    assert manifest["features"] == SENSORS and manifest["normalizer"]["columns"] == SENSORS
    assert manifest["data_cards"][0]["units"] == 2
    assert manifest["privacy"]["record_level"] == {
        "epsilon": 2.5, "delta": 1e-5, "scope": "record-level (one sensor window), worst factory",
        "per_factory": {"f1": 1.5, "f2": 2.5}, "noise_multiplier": 1.0, "max_grad_norm": 1.0,
    }  # fmt: skip
    assert manifest["robustness"]["rounds"][0]["rejected"] == {"f3": "byzantine"}
    assert set(manifest["versions"]) >= {"pdm-federation", "torch", "numpy", "python"}
    assert not any(p.suffix in (".pkl", ".pt", ".pth") for p in run.iterdir())


def test_a_bundle_without_dp_says_there_is_no_guarantee(tmp_path):
    cfg = {**CONFIG, "record_privacy": {"enabled": False}}
    state = build_model("cnn", 2, 3).state_dict()
    write_run(tmp_path, {"campaign_id": "c", "config": cfg, "rounds": [], "final": {"rmse": None,
              "epsilon": None, "rounds": 0, "reason": "x"}}, dict(state))  # fmt: skip
    assert "no differential privacy" in json.loads((tmp_path / BUNDLE_FILE).read_text())[
        "privacy"]["none"]  # fmt: skip


def test_altered_weights_are_refused(run):
    raw = bytearray((run / "model.msgpack").read_bytes())
    raw[-1] ^= 1
    (run / "model.msgpack").write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="SHA-256 differs"):
        load_bundle(run)


def test_a_folder_without_a_bundle_says_so(tmp_path):
    with pytest.raises(BundleError, match="no model bundle here"):
        load_bundle(tmp_path)


def test_predict_gives_one_rul_per_unit_from_its_last_window(run, tmp_path):
    data = _plant_csv(tmp_path / "engines.csv", {"E-17": 5, "E-03": 4})
    rows = predict_units(load_bundle(run), data)
    assert [(r["unit"], r["last_cycle"]) for r in rows] == [("E-17", 5), ("E-03", 4)]
    bundle = load_bundle(run)
    norm = Normalizer.from_dict(bundle.manifest["normalizer"])
    x = norm.transform(
        np.array([[500.0 + c * 0.5 + 4, 0.1 * c] for c in (3, 4, 5)]), np.ones((3, 1))
    )
    expected = np.clip(predict(bundle.model, x[None].astype(np.float32))[0], 0, 125)
    assert rows[0]["rul"] == pytest.approx(float(expected), abs=0.01)


def test_predict_cli_writes_csv_or_json(run, tmp_path, capsys):
    data = _plant_csv(tmp_path / "engines.csv", {"E-17": 5, "E-03": 4})
    assert main(["predict", "--bundle", str(run), "--data", str(data)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["unit"] for r in rows] == ["E-17", "E-03"] and float(rows[0]["rul"]) > -1e9
    out = tmp_path / "rul.json"
    assert main(["predict", "--bundle", str(run / BUNDLE_FILE), "--data", str(data),
                 "--format", "json", "--out", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["campaign_id"] == "plant-2026" and doc["rul_unit"] == "cycles"
    assert [u["unit"] for u in doc["units"]] == ["E-17", "E-03"]


@pytest.mark.parametrize(
    ("units", "bad", "reason"),
    [
        ({"E1": 5}, {("E1", 4): {"vib": "x"}}, "engines.csv, row 4, unit E1, column 'vib': 'x' is not a number"),
        ({"E1": 5}, {("E1", 2): {"temp": "nan"}}, "row 2, unit E1, column 'temp': empty/NaN value"),
        ({"E1": 5, "E2": 2}, {}, "unit E2: 2 cycles, shorter than the window of 3"),
    ],
)  # fmt: skip
def test_predict_refuses_bad_data_like_import_does(run, tmp_path, capsys, units, bad, reason):
    data = _plant_csv(tmp_path / "engines.csv", units, bad)
    assert main(["predict", "--bundle", str(run), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pdmfed: ") and reason in err and len(err.strip().splitlines()) == 1


def test_predict_refuses_a_schema_whose_sensors_are_not_the_models_features(run, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text("unit: engine\ncycle: cycle\nsettings: {load: 0}\nsensors: [vib, temp]\n")
    data = _plant_csv(tmp_path / "engines.csv", {"E1": 5})
    assert main(["predict", "--bundle", str(run), "--data", str(data), "--schema", str(other)]) == 2
    assert (
        "are not the model's features ['temp', 'vib'] (same names, same order)"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_exported_file_that_is_not_the_bundles_model_is_refused(run, tmp_path, fmt):
    bundle = load_bundle(run)
    done = export_bundle(bundle, fmt, tmp_path / f"m.{fmt}")
    assert done.path.is_file() and done.max_rel_diff <= TOLERANCE and done.windows == 256
    windows = check_windows(bundle)
    with (
        torch.no_grad()
    ):  # the bundle's weights move by one step of 1e-3: the file no longer matches
        next(iter(bundle.model.parameters())).add_(1e-3)
    with pytest.raises(BundleError, match="differs from PyTorch by"):
        verify_export(bundle, fmt, done.path, windows)


@pytest.fixture(scope="module")
def fd001_run(tmp_path_factory):
    """A hybrid model trained briefly on FD001's training engines, imported through the schema."""
    if not (FD001 / "test_FD001.txt").is_file():
        pytest.skip(f"real C-MAPSS FD001 data not found at {FD001}")
    from federation.ml.data import Partition

    tmp = tmp_path_factory.mktemp("fd001")
    card = write_import(tmp / "site", data=FD001 / "train_FD001.txt",
                        schema=PROJECT_ROOT / "examples" / "cmapss.schema.yaml")  # fmt: skip
    part = Partition.load(tmp / "site" / "partition.npz")
    trained = train_local(None, part.X, part.y, {"model_type": "hybrid", "epochs": 1,
                          "batch_size": 256, "max_batches": 10, "learning_rate": 0.003}, seed=0)  # fmt: skip
    cfg = {**CONFIG, "training": {"model_type": "hybrid", "n_features": 14, "window": 30}}
    write_run(tmp / "run", {"campaign_id": "fd001", "config": cfg, "rounds": ROUNDS,
              "final": {"rmse": None, "epsilon": None, "rounds": 1, "reason": "x"}},
              trained["model_update"], bundle={"features": card["features"],
              "normalizer": card["normalizer"], "rul_cap": 125.0,
              "schema": cmapss_schema(card["features"]).to_dict()})  # fmt: skip
    return tmp / "run"


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_on_fd001_test_windows_the_export_equals_pytorch_within_1e_5(fd001_run, fmt, capsys):
    assert main(["export", str(fd001_run), "--format", fmt,
                 "--data", str(FD001 / "test_FD001.txt")]) == 0  # fmt: skip
    line = capsys.readouterr().out
    assert "on 10196 windows of test_FD001.txt" in line and f"(<= {TOLERANCE:g})" in line
    assert (fd001_run / ("model.pt" if fmt == "torchscript" else "model.onnx")).is_file()


def test_predict_on_fd001_test_engines_gives_the_rul_of_each_of_the_100(fd001_run, capsys):
    assert main(["predict", "--bundle", str(fd001_run), "--data", str(FD001 / "test_FD001.txt"),
                 "--format", "json"]) == 0  # fmt: skip
    units = json.loads(capsys.readouterr().out)["units"]
    assert [u["unit"] for u in units] == [str(i) for i in range(1, 101)]
    assert units[0]["last_cycle"] == 31 and all(0 <= u["rul"] <= 200 for u in units)
    assert len(CMAPSS_COLUMNS) == 26


def test_the_factories_data_cards_give_the_campaigns_bundle_its_inputs(tmp_path):
    from federation.ml.bundle import bundle_info_from_cards

    schema = _schema(tmp_path / "plant.yaml")
    a = write_import(tmp_path / "a", data=_plant_csv(tmp_path / "a.csv", {"A": 9}), schema=schema)
    (tmp_path / "a.json").write_text(json.dumps(a))
    shared = write_import(tmp_path / "b", data=_plant_csv(tmp_path / "b.csv", {"B": 12}),
                          schema=schema, normalizer=tmp_path / "a.json")  # fmt: skip
    own = write_import(
        tmp_path / "c", data=_plant_csv(tmp_path / "c.csv", {"C": 12}), schema=schema
    )
    training = {"n_features": 2, "window": 3}
    info = bundle_info_from_cards([a, shared], training)
    assert info["features"] == SENSORS and info["normalizer"] == a["normalizer"]
    assert info["rul_cap"] == 125.0 and len(info["data_cards"]) == 2
    # each factory scaled its own way: no statistics in the bundle (predict asks for them)
    assert bundle_info_from_cards([a, own], training)["normalizer"] is None
    with pytest.raises(BundleError, match="n_features=14"):
        bundle_info_from_cards([a], {"n_features": 14, "window": 3})
    with pytest.raises(BundleError, match="disagree on features"):
        bundle_info_from_cards([a, {**own, "features": ["vib", "temp"]}], training)


def test_a_bundle_without_normalisation_statistics_asks_for_them(run, tmp_path, capsys):
    manifest = json.loads((run / BUNDLE_FILE).read_text())
    manifest["normalizer"] = None
    (run / BUNDLE_FILE).write_text(json.dumps(manifest))
    data = _plant_csv(tmp_path / "engines.csv", {"E1": 5})
    assert main(["predict", "--bundle", str(run), "--data", str(data)]) == 2
    assert "records no normalisation statistics" in capsys.readouterr().err
    (tmp_path / "norm.json").write_text(json.dumps(load_bundle(run).manifest["data_cards"][0]))
    assert main(["predict", "--bundle", str(run), "--data", str(data),
                 "--normalizer", str(tmp_path / "norm.json")]) == 0  # fmt: skip


def test_predicted_rul_stays_between_zero_and_the_training_cap(run, tmp_path):
    from federation.ml.predict import read_windows

    data = _plant_csv(tmp_path / "e.csv", {"E1": 5, "E2": 6, "E3": 7, "E4": 8})
    bundle = load_bundle(run)
    with torch.no_grad():  # outputs spread around zero: some below 0, some above the cap
        bundle.model.head[-1].bias.fill_(0.0)
    raw = predict(bundle.model, read_windows(bundle, data)[0])
    cap = float(np.median(raw[raw > 0])) if (raw > 0).any() else 1.0
    bundle.manifest["rul_cap"] = cap
    got = np.array([r["rul"] for r in predict_units(bundle, data)])
    assert np.allclose(got, np.clip(raw, 0, cap), atol=0.01)
    assert got.min() >= 0 and got.max() <= cap


def test_each_factory_alone_is_trained_as_long_as_the_campaign_and_scored_on_the_same_units():
    from federation.ml.heldout import each_factory_alone

    rng = np.random.default_rng(0)
    parts = []
    for name, n in (("f1", 40), ("f2", 24)):
        X = rng.standard_normal((n, 5, 2)).astype(np.float32)
        parts.append((name, {"X": X, "y": (60 + 20 * X[:, -1, 0]).astype(np.float32)}))
    test_X = rng.standard_normal((10, 5, 2)).astype(np.float32)
    test_y = (60 + 20 * test_X[:, -1, 0]).astype(np.float32)
    training = {"model_type": "cnn", "epochs": 1, "learning_rate": 0.003, "batch_size": 8}
    rows = each_factory_alone(parts, test_X, test_y, 60.0, training=training, dp=None, rounds=2)
    assert [(r["factory"], r["windows"]) for r in rows] == [("f1", 40), ("f2", 24)]
    again = each_factory_alone(parts, test_X, test_y, 60.0, training=training, dp=None, rounds=2)
    assert rows == again  # seeded: the comparison is reproducible
    longer = each_factory_alone(parts, test_X, test_y, 60.0, training=training, dp=None, rounds=3)
    assert [r["rmse"] for r in longer] != [r["rmse"] for r in rows]


def test_predict_z_scores_each_row_with_its_regimes_federated_statistics(tmp_path):
    from federation.datasite.job import feature_columns
    from federation.ml.data import Partition
    from federation.ml.fedstats import merge_stats, named_normalizer, window_stats
    from federation.ml.tabular import ImportError_

    def table(path: Path, units: dict[str, int], loads=(1, 2)) -> Path:
        lines = ["engine,cycle,load,temp,vib"]
        for u, n in units.items():
            for c in range(1, n + 1):
                load = loads[c % len(loads)]  # the regime flips every cycle; temp follows it
                lines.append(f"{u},{c},{load},{500.0 * load + c * 0.5},{0.1 * c * load}")
        path.write_text("\n".join(lines) + "\n")
        return path

    schema = _schema(tmp_path / "plant.yaml")
    parts = []
    for i, units in enumerate(({"A": 9}, {"B": 8, "C": 7})):  # two factories' imports
        write_import(tmp_path / f"s{i}", data=table(tmp_path / f"t{i}.csv", units), schema=schema)
        parts.append(Partition.load(tmp_path / f"s{i}" / "partition.npz"))
    raw = (
        merge_stats(
            window_stats(p.X, feature_columns(2), p.settings, list(p.decimals)) for p in parts
        )
        .normalizer()
        .to_dict()
    )  # round 0, as the datasites sum it
    norm = named_normalizer(raw, SENSORS)
    assert norm.regimes == [[1.0], [2.0]] and norm.decimals == [0]
    torch.manual_seed(0)
    state = {k: v.detach().clone() for k, v in build_model("cnn", 2, 3).state_dict().items()}
    state[[k for k in state if k.endswith(".bias")][-1]] += 0.5  # an output inside [0, cap]
    summary = {"campaign_id": "regimes", "config": CONFIG, "rounds": ROUNDS,
               "final": {"rmse": None, "epsilon": None, "rounds": 1, "reason": "max_rounds"}}  # fmt: skip
    write_run(tmp_path / "run", summary, state, bundle={
        "features": SENSORS, "normalizer": norm.to_dict(), "rul_cap": 125.0,
        "schema": load_schema(schema).to_dict()})  # fmt: skip
    bundle = load_bundle(tmp_path / "run")
    rows = predict_units(bundle, table(tmp_path / "engines.csv", {"E-1": 6}))
    cycles = np.array([4, 5, 6])  # the unit's last window; load is (1, 2)[cycle % 2]
    loads = np.where(cycles % 2 == 0, 1.0, 2.0)
    x = np.column_stack([500.0 * loads + cycles * 0.5, 0.1 * cycles * loads])
    z = norm.transform(x, loads[:, None])
    assert np.abs(z).max() < 3  # per-regime z-scores, not raw temperatures of 500-1000
    got = predict(bundle.model, z[None].astype(np.float32))[0]
    swapped = predict(bundle.model, norm.transform(x, 3.0 - loads[:, None])[None])[0]
    assert 0 < got < 125 and abs(got - swapped) > 0.01  # the regime of each row matters
    assert rows[0]["rul"] == pytest.approx(float(got), abs=0.01)
    with pytest.raises(ImportError_, match=r"operating regime \[3.0\] was not seen"):
        predict_units(bundle, table(tmp_path / "new.csv", {"E-2": 4}, loads=(3,)))
