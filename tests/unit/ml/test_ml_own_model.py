"""Own models by entry point: resolution, source digest, DP-SGD support, the campaign check."""

from __future__ import annotations

import inspect
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from federation.campaign import CampaignConfig
from federation.errors import ConfigError, PrivacyError
from federation.ml.models import ModelConfigError, build_model
from federation.ml.own_model import package_digest, source_digest
from federation.ml.train import train_local
from federation.privacy.dp_support import check_dpsgd_support

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "tcn_rul"
TCN = "tcn_rul.model:build"


@pytest.fixture(autouse=True)
def example_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))


def _package(tmp_path: Path, monkeypatch, name: str, body: str) -> str:
    """A one-module model package ``name`` on sys.path; returns its entry point."""
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    sys.modules.pop(f"{name}.model", None)
    return f"{name}.model:build"


_BATCHNORM = """
    from torch import nn

    class Net(nn.Module):
        def __init__(self, n, w):
            super().__init__()
            self.norm = nn.BatchNorm1d(n)
            self.head = nn.Linear(n, 1)

        def forward(self, x):
            return self.head(self.norm(x.transpose(1, 2)).mean(-1)).squeeze(-1)

    def build(n_features, window):
        return Net(n_features, window)
"""

_DROPOUT = """
    from torch import nn

    def build(n_features, window):
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(n_features * window, 1),
                             nn.Flatten(0))
"""

_CROSS_SAMPLE = """
    from torch import nn

    class Net(nn.Module):
        def __init__(self, n, w):
            super().__init__()
            self.head = nn.Linear(n, 1)

        def forward(self, x):
            h = x.mean(1)
            return self.head(h - h.mean(0, keepdim=True)).squeeze(-1)  # reads the other samples

    def build(n_features, window):
        return Net(n_features, window)
"""


def test_an_entry_point_builds_the_example_model_with_one_rul_per_window():
    model = build_model(TCN, 14, 30)
    assert type(model).__name__ == "TemporalConvNet"
    assert model(torch.zeros(5, 30, 14)).shape == (5,)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("os.path:join", "not a model package"),
        ("federation.ml.models:build_model", "not a model package"),
        ("no_such_pkg_xyz.model:build", "not installed here"),
        ("tcn_rul.model:RUL_SCALE", "not a function defined in tcn_rul.model"),
        ("tcn_rul.model:nn", "not a function defined in tcn_rul.model"),
        ("tcn_rul.model", "unknown model kind"),
        ("rm -rf /", "unknown model kind"),
    ],
)
def test_what_is_not_an_own_model_is_refused_with_the_reason(kind, reason):
    with pytest.raises(ModelConfigError, match=reason):
        build_model(kind, 14, 30)


def test_a_builder_that_does_not_return_a_module_is_refused(tmp_path, monkeypatch):
    ep = _package(tmp_path, monkeypatch, "not_a_module_pkg", "def build(n, w):\n    return 42\n")
    with pytest.raises(ModelConfigError, match="returned int, not a torch.nn.Module"):
        build_model(ep, 3, 4)


def test_the_source_digest_covers_every_file_of_the_package(tmp_path):
    copy = tmp_path / "tcn_rul"
    shutil.copytree(EXAMPLE / "tcn_rul", copy)
    original = package_digest(copy)
    assert original == source_digest(TCN)
    model_py = copy / "model.py"
    model_py.write_text(model_py.read_text().replace("channels: int = 24", "channels: int = 25"))
    changed = package_digest(copy)
    assert changed != original
    (copy / "helpers.py").write_text("X = 1\n")
    assert package_digest(copy) not in (original, changed)


def test_campaign_config_takes_built_ins_and_entry_points_and_refuses_anything_else():
    assert CampaignConfig.from_payload({"training": {"model_type": TCN}}).training.model_type == TCN
    assert (
        CampaignConfig.from_payload({"training": {"model_type": "lstm"}}).training.model_type
        == "lstm"
    )
    with pytest.raises(ConfigError, match="neither a built-in model"):
        CampaignConfig.from_payload({"training": {"model_type": "transformer"}})


@pytest.mark.parametrize("kind", ["cnn", "lstm", "hybrid", TCN])
def test_the_built_ins_and_the_example_pass_the_dp_sgd_check(kind):
    cfg = CampaignConfig.from_payload(
        {
            "training": {"model_type": kind, "n_features": 4, "window": 8},
            "record_privacy": {"enabled": True},
        }
    )
    cfg.check_model()


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_BATCHNORM, "BatchNorm1d at 'norm' normalises each sample with its batch's statistics"),
        (_DROPOUT, "torch.func cannot compute per-sample gradients"),
        (
            _CROSS_SAMPLE,
            "the batch gradient of 'head.weight' is not the sum of its per-sample gradients",
        ),
    ],
    ids=["batchnorm", "dropout", "cross-sample"],
)
def test_a_model_dp_sgd_cannot_train_is_refused_before_the_campaign_starts(
    tmp_path, monkeypatch, body, reason
):
    ep = _package(tmp_path, monkeypatch, f"bad_{abs(hash(body)) % 10**6}", body)
    cfg = CampaignConfig.from_payload(
        {
            "training": {"model_type": ep, "n_features": 3, "window": 5},
            "record_privacy": {"enabled": True},
        }
    )
    with pytest.raises(
        ConfigError,
        match=f"campaign refused: model '{ep}' cannot train under "
        "record-level DP-SGD: .*" + reason.replace("(", r"\("),
    ):
        cfg.check_model()
    with pytest.raises(PrivacyError, match=reason.replace("(", r"\(")):
        check_dpsgd_support(build_model(ep, 3, 5), 3, 5)
    # without record-level DP the same model may train (nothing to bound per sample)
    cfg.model_copy(
        update={"record_privacy": cfg.record_privacy.model_copy(update={"enabled": False})}
    ).check_model()


def test_a_model_with_the_wrong_output_shape_is_refused(tmp_path, monkeypatch):
    ep = _package(
        tmp_path,
        monkeypatch,
        "wide_out_pkg",
        """
        from torch import nn

        def build(n_features, window):
            return nn.Sequential(nn.Flatten(), nn.Linear(n_features * window, 2))
    """,
    )
    cfg = CampaignConfig.from_payload(
        {"training": {"model_type": ep, "n_features": 3, "window": 5}}
    )
    with pytest.raises(ConfigError, match=r"one RUL per window, shape \(batch,\), got \(2, 2\)"):
        cfg.check_model()


def test_train_local_trains_the_example_with_dp_sgd_and_refuses_a_batchnorm_model(
    tmp_path, monkeypatch
):
    gen = torch.Generator().manual_seed(3)
    X = torch.randn((40, 8, 4), generator=gen).numpy()
    y = (torch.rand(40, generator=gen) * 120).numpy()
    dp = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "noise_seed": 1}
    out = train_local(None, X, y, {"model_type": TCN, "batch_size": 8, "dp": dp}, seed=0)
    assert out["dp"]["epsilon"] > 0 and out["steps"] == 5
    assert set(out["model_update"]) == set(build_model(TCN, 4, 8).state_dict())
    ep = _package(tmp_path, monkeypatch, "bn_train_pkg", _BATCHNORM)
    from federation.errors import TrainingError

    with pytest.raises(TrainingError, match="cannot train under DP-SGD: BatchNorm1d"):
        train_local(None, X, y, {"model_type": ep, "batch_size": 8, "dp": dp}, seed=0)


def test_the_check_leaves_the_model_and_the_global_rng_as_they_were():
    model = build_model(TCN, 4, 8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    check_dpsgd_support(model, 4, 8)
    assert torch.equal(torch.rand(3), expected)
    assert not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_job_for_an_own_model_names_it_and_its_digest_in_its_code():
    from federation.datasite.job import model_training_job

    job = model_training_job(TCN)
    code = inspect.getsource(job)
    assert repr(TCN) in code and source_digest(TCN) in code
    assert code.startswith("def pdmfed_train_job(features, labels, global_model, train_config):")


def test_a_bundle_of_an_own_model_loads_only_with_the_source_it_was_trained_with(
    tmp_path, monkeypatch
):
    from federation.ml.bundle import BundleError, load_bundle
    from federation.orchestrator.summary import write_run

    torch.manual_seed(0)
    state = build_model(TCN, 4, 8).state_dict()
    config = {"training": {"model_type": TCN, "n_features": 4, "window": 8}}
    summary = {"campaign_id": "own", "config": config, "rounds": [],
               "final": {"rmse": None, "epsilon": None, "rounds": 1, "reason": "max_rounds"}}  # fmt: skip
    write_run(tmp_path / "run", summary, state)
    bundle = load_bundle(tmp_path / "run")
    assert bundle.manifest["architecture"]["source_sha256"] == source_digest(TCN)
    assert type(bundle.model).__name__ == "TemporalConvNet"
    changed = tmp_path / "newer"
    shutil.copytree(EXAMPLE / "tcn_rul", changed / "tcn_rul")
    (changed / "tcn_rul" / "model.py").write_text(
        (changed / "tcn_rul" / "model.py").read_text() + "\n# same shapes, other code\n"
    )
    monkeypatch.syspath_prepend(str(changed))
    for name in ("tcn_rul", "tcn_rul.model"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(BundleError, match="is not the one the bundle was trained with"):
        load_bundle(tmp_path / "run")
