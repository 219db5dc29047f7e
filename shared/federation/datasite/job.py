"""The approved training job: the code a datasite runs on its private partition, and its runtime."""

from __future__ import annotations

import hashlib
import linecache
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "ENV_DATASITE_ID",
    "ENV_KEYS_DIR",
    "ENV_ATTACK",
    "compromise_delta",
    "model_training_job",
    "pdmfed_stats_job",
    "pdmfed_train_job",
    "run_stats_job",
    "run_training_job",
    "training_delta",
]

#: Set in the datasite's server process only: its identity and where its signing key lives.
ENV_DATASITE_ID = "PDMFED_DATASITE_ID"
ENV_KEYS_DIR = "PDMFED_DATASITE_KEYS_DIR"
#: Demo/evaluation only: what a compromised factory does to its update ("scaling[:k]", "signflip[:k]").
ENV_ATTACK = "PDMFED_DATASITE_ATTACK"

_JOB_THREADS = 1  # deterministic results regardless of the host's core count


def pdmfed_train_job(features, labels, global_model, train_config):
    # The source of this function is what the orchestrator submits to PySyft and what the
    # datasite's allow-list pins by hash; it only hands over to code installed at the factory.
    from federation.datasite.job import run_training_job

    return run_training_job(features, labels, global_model, train_config)


_OWN_MODEL_JOB = """\
def pdmfed_train_job(features, labels, global_model, train_config):
    # The source of this function is what the orchestrator submits to PySyft and what the
    # datasite's allow-list pins by hash. The model is the factory's own installed package,
    # named here with the SHA-256 of its source: another model, or another version of it,
    # is another request that stays pending until the factory approves it.
    from federation.datasite.job import run_training_job

    model = ({entry_point!r}, {digest!r})
    return run_training_job(features, labels, global_model, train_config, model=model)
"""


def model_training_job(entry_point: str, digest: str | None = None):  # noqa: ANN201
    """The training job for an own model: its entry point and source digest are in its code.

    ``digest`` defaults to the source digest of the package installed here. The function is
    compiled from a template (and its source registered with linecache, so PySyft can read
    it back with ``inspect.getsource`` as it does for any submitted function).
    """
    from federation.ml.own_model import is_entry_point, source_digest

    if not is_entry_point(entry_point):
        raise ValueError(f"{entry_point!r} is not a 'package.module:function' entry point")
    digest = source_digest(entry_point) if digest is None else str(digest)
    source = _OWN_MODEL_JOB.format(entry_point=entry_point, digest=digest)
    filename = f"<pdmfed-job {entry_point} {digest[:16]}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own fixed template
    return namespace["pdmfed_train_job"]


def pdmfed_stats_job(features, stats_config):
    # Round 0 of a campaign: this factory's exact sensor statistics for federated normalisation
    # (pinned by hash like the training job; the computation is installed at the factory).
    from federation.datasite.job import run_stats_job

    return run_stats_job(features, stats_config)


def training_delta(
    update: Mapping[str, torch.Tensor], global_state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """update - global for float tensors (as the connector computes it), the update otherwise."""
    out = {}
    for name, value in update.items():
        if value.is_floating_point() and name in global_state:
            out[name] = value.to(torch.float32) - global_state[name].to(torch.float32)
        else:
            out[name] = value
    return out


def compromise_delta(delta: Mapping[str, torch.Tensor], attack: str) -> dict[str, torch.Tensor]:
    """What a compromised factory sends instead of its honest delta (for demos and evaluation)."""
    kind, _, arg = attack.partition(":")
    if kind == "scaling":
        factor = float(arg or 20.0)
    elif kind == "signflip":
        factor = -float(arg or 4.0)
    else:
        raise ValueError(f"unknown attack {attack!r}; expected scaling[:k] or signflip[:k]")
    return {k: v * factor if v.is_floating_point() else v for k, v in delta.items()}


def _config(raw: Any) -> dict[str, Any]:
    from federation.errors import MalformedMessage
    from federation.wire.codec import decode_payload

    cfg = decode_payload(bytes(raw))
    if not isinstance(cfg, dict):
        raise MalformedMessage("training config is not a map")
    return cfg


def _refuse_requester_noise_seed(cfg: Mapping[str, Any]) -> None:
    """DP noise is drawn here from a CSPRNG-seeded generator; a requester never chooses its seed.

    Knowing the seed, the requester could regenerate the noise and subtract it, while the
    factory still reported (and signed) an epsilon. Seeds are for tests calling train_local.
    """
    from federation.errors import PrivacyError

    dp = cfg.get("dp")
    if isinstance(dp, Mapping) and "noise_seed" in dp:
        raise PrivacyError(
            "a training request may not choose dp.noise_seed: the datasite draws "
            "its DP noise from its own CSPRNG-seeded generator"
        )


def run_training_job(
    features: Any,
    labels: Any,
    global_model: Any,
    train_config: Any,
    model: tuple[str, str] | None = None,
) -> dict:
    """Train on the private partition, sign the result with the factory key; errors as data.

    ``model`` is (entry point, source digest) when the approved job names an own model;
    without it only the built-in models train.
    """
    try:
        return _run(features, labels, global_model, train_config, model)
    except Exception as exc:  # the orchestrator gets a clear error, never a datasite traceback
        return {"error": f"{type(exc).__name__}: {exc}"}


def run_stats_job(features: Any, stats_config: Any) -> dict:
    """Count, sum and sum of squares of the raw partition's sensor values, signed; errors as data."""
    try:
        return _stats(features, stats_config)
    except Exception as exc:  # the orchestrator gets a clear error, never a datasite traceback
        return {"error": f"{type(exc).__name__}: {exc}"}


def _identity() -> Any:
    from federation.crypto.signing import SigningIdentity
    from federation.errors import ConfigError

    datasite_id = os.environ.get(ENV_DATASITE_ID)
    keys_dir = os.environ.get(ENV_KEYS_DIR)
    if not datasite_id or not keys_dir:
        raise ConfigError("this process is not a pdmfed datasite (no identity or key dir)")
    return SigningIdentity.load(keys_dir, datasite_id)


def _stats(features: Any, stats_config: Any) -> dict:
    from federation.datasite.partition import job_windows, regime_decimals
    from federation.datasite.signing import sign_stats
    from federation.ml.fedstats import window_stats

    identity = _identity()
    cfg = _config(stats_config)
    campaign_id = str(cfg.get("campaign_id", ""))
    decimals = regime_decimals()
    X, settings = job_windows(features, decimals)
    columns = feature_columns(X.shape[2])
    noise = cfg.get("noise")
    if noise is None:  # per operating regime when the partition keeps its settings
        stats = window_stats(X, columns, settings, decimals).to_dict()
    else:  # the campaign's DP on the statistics (pooled): noise drawn here, from the OS's entropy
        from federation.ml.fedstats import window_rows
        from federation.privacy.stats_dp import StatsNoise, noisy_row_stats

        if not isinstance(noise, dict) or "seed" in noise:
            raise ValueError("the statistics' noise config is not a map, or names a seed")
        mech = StatsNoise(float(noise["noise_multiplier"]),
                          tuple((float(lo), float(hi)) for lo, hi in noise["bounds"]))  # fmt: skip
        rows = window_rows(X)
        stats = noisy_row_stats(rows, columns, mech, np.random.default_rng()).to_dict()
    return {
        "stats": stats,
        "stats_signature": sign_stats(identity, stats, campaign_id=campaign_id),
        "factory_key_id": identity.sender,
        "datasite_id": identity.sender,
        "campaign_id": campaign_id,
        "round_number": 0,
    }


def feature_columns(n_features: int) -> tuple[str, ...]:
    """Positional names of a partition's features (its windows carry no sensor names)."""
    return tuple(f"x{i + 1}" for i in range(int(n_features)))


def normalised_features(
    features: Any, normalizer: Any, decimals: tuple[int, ...] = ()
) -> np.ndarray:
    """The raw partition's sensor windows z-scored with the campaign's federated statistics:
    each row with its operating regime's when the features carry settings (``decimals``)."""
    from federation.datasite.partition import job_windows
    from federation.ml.data import Normalizer

    X, settings = job_windows(features, decimals)
    if normalizer is None:
        return X
    if not isinstance(normalizer, dict):
        raise ValueError("the training config's normalizer is not a map")
    return Normalizer.from_dict(normalizer).transform_windows(X, settings)


def _pin_model(cfg: dict[str, Any], model: tuple[str, str] | None) -> None:
    """The model trained is the one the approved code names, at the approved source digest.

    The training config is an upload the allow-list does not cover: it may name a built-in
    model or exactly the approved job's own model, nothing else, and that model's installed
    source must still be what was approved.
    """
    from federation.errors import ConfigError
    from federation.ml.models import SUPPORTED_MODELS
    from federation.ml.own_model import source_digest

    if model is None:
        kind = cfg.get("model_type", "cnn")
        if kind not in SUPPORTED_MODELS:
            raise ConfigError(
                f"model {kind!r} is not a built-in, and the approved job names no "
                "own model (an own model is named by the job's code)"
            )
        return
    entry_point, approved = model
    if cfg.setdefault("model_type", entry_point) != entry_point:
        raise ConfigError(
            f"the training config names model {cfg['model_type']!r} but the "
            f"approved job is for {entry_point!r}"
        )
    installed = source_digest(entry_point)
    if installed != approved:
        raise ConfigError(
            f"the installed source of {entry_point} (sha256 {installed[:12]}) is "
            f"not the approved one ({str(approved)[:12]}): approve it again"
        )


def _run(
    features: Any, labels: Any, global_model: Any, train_config: Any, model: tuple[str, str] | None
) -> dict:
    from federation.datasite.signing import sign_tensors
    from federation.ml.train import train_local
    from federation.wire.codec import decode_state_dict, encode_state_dict

    identity = _identity()
    datasite_id = identity.sender

    model_bytes = bytes(global_model)
    global_state = decode_state_dict(model_bytes)
    cfg = _config(train_config)
    _refuse_requester_noise_seed(cfg)
    _pin_model(cfg, model)
    seed = int(cfg.pop("seed", 0))
    round_number = int(cfg.get("round_number", 0))
    # Signed with the update: it cannot be moved to another campaign or base model.
    campaign_id = str(cfg.pop("campaign_id", ""))
    model_version = int(cfg.pop("model_version", 0))

    # The partition is stored raw; the campaign's round 0 agreed on the statistics to z-score with.
    normalizer = cfg.pop("normalizer", None)
    from federation.datasite.partition import regime_decimals

    X = normalised_features(features, normalizer, regime_decimals())
    torch.set_num_threads(_JOB_THREADS)
    out = train_local(global_state, X, np.asarray(labels), cfg, seed)
    update = out["model_update"]
    delta = training_delta(update, global_state)
    attack = os.environ.get(ENV_ATTACK)
    if attack:
        delta = compromise_delta(delta, attack)
        update = {
            k: (global_state[k].to(torch.float32) + delta[k]).to(update[k].dtype)
            if update[k].is_floating_point() and k in global_state
            else update[k]
            for k in update
        }
    bound = {"campaign_id": campaign_id, "model_version": model_version}
    update_digest, update_sig = sign_tensors(identity, "update", update, round_number, **bound)
    delta_digest, delta_sig = sign_tensors(identity, "delta", delta, round_number, **bound)
    return {
        "loss": float(out["loss"]),
        "rmse": float(out["rmse"]),
        "accuracy": float(out["accuracy"]),
        "num_samples": int(out["num_samples"]),
        "training_time": float(out["training_time"]),
        "model_update": encode_state_dict(update),
        "delta": encode_state_dict(delta),
        "update_digest": update_digest,
        "delta_digest": delta_digest,
        "update_signature": update_sig,
        "factory_signature": delta_sig,
        "factory_key_id": datasite_id,
        "datasite_id": datasite_id,
        "round_number": round_number,
        "campaign_id": campaign_id,
        "model_version": model_version,
        "seed": seed,
        "global_model_digest": hashlib.sha256(model_bytes).hexdigest(),
        # record-level DP-SGD: what this training spent (z, sample rate, steps, delta, epsilon)
        "dp": out.get("dp"),
    }
