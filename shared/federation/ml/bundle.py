"""The model bundle a campaign leaves: weights plus everything needed to use them (bundle.json)."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import PdmFedError

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "WEIGHTS_FILE",
    "Bundle",
    "BundleError",
    "build_manifest",
    "bundle_info_from_cards",
    "load_bundle",
    "privacy_section",
    "write_bundle",
]

BUNDLE_FILE = "bundle.json"
#: The weights, in the project's tensor msgpack (federation.wire.codec): no pickle anywhere.
WEIGHTS_FILE = "model.msgpack"
BUNDLE_FORMAT = "pdmfed-model-bundle"
BUNDLE_VERSION = 1
#: Record-level DP-SGD's δ (federation.privacy.dpsgd's default; campaigns do not change it).
RECORD_DELTA = 1e-5


class BundleError(PdmFedError):
    """A bundle that is missing, altered or inconsistent."""

    reason = "bundle"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import torch

    try:
        own = version("pdm-federation")
    except PackageNotFoundError:
        own = "source tree"
    return {
        "pdm-federation": own,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


#: Round 0's statistics sent exact (``federation.wire.messages.StatsPrivacy.noised`` false).
STATS_NOT_NOISED = ("not noised: each factory's exact per-sensor counts, sums and sums of squares, "
                    "outside every DP guarantee")  # fmt: skip


def _statistics_privacy(released: Mapping[str, Any]) -> dict | str:
    """Round 0's normalisation statistics as released (a round.open's ``normalizer_privacy``)."""
    if not released.get("noised"):
        return f"normalisation statistics (round 0) {STATS_NOT_NOISED}"
    return {
        "epsilon": released.get("epsilon"),
        "delta": released.get("delta"),
        "scope": f"normalisation statistics (round 0): {released.get('scope') or 'scope not stated'}",
        "noise_multiplier": released.get("noise_multiplier"),
    }


def privacy_section(
    config: Mapping[str, Any],
    rounds: Sequence[Mapping[str, Any]],
    statistics: Mapping[str, Any] | None = None,
) -> dict:
    """ε with its δ and scope for each DP layer the campaign ran (none: stated as such), and how
    round 0 released the normalisation statistics (``statistics``: a round.open's
    ``normalizer_privacy``; None: the run has none, or its trainer-dispatch did not say)."""
    out: dict[str, Any] = {}
    rec = config.get("record_privacy") or {}
    last = rounds[-1] if rounds else {}
    if rec.get("enabled"):
        per_site = {k: float(v) for k, v in (last.get("record_epsilon") or {}).items()}
        out["record_level"] = {
            "epsilon": max(per_site.values()) if per_site else None,
            "delta": RECORD_DELTA,
            "scope": "record-level (one sensor window), worst factory",
            "per_factory": per_site,
            "noise_multiplier": rec.get("noise_multiplier"),
            "max_grad_norm": rec.get("max_grad_norm"),
        }
    cli = config.get("privacy") or {}
    if cli.get("enabled"):
        out["client_level"] = {
            "epsilon": last.get("client_epsilon"),
            "delta": cli.get("delta"),
            "scope": "client-level (a factory's whole contribution)",
            "mode": cli.get("mode"),
            "noise_multiplier": cli.get("noise_multiplier"),
        }
    if not out:
        out["none"] = "no differential privacy: the weights carry no formal guarantee"
    if statistics is not None:
        out["statistics"] = _statistics_privacy(statistics)
    return out


def build_manifest(
    *,
    campaign_id: str,
    config: Mapping[str, Any],
    rounds: Sequence[Mapping[str, Any]],
    weights_sha256: str,
    features: Sequence[str] | None,
    normalizer: Mapping[str, Any] | None,
    rul_cap: float | None,
    data_cards: Sequence[Mapping[str, Any]] = (),
    schema: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    privacy: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The bundle manifest: architecture, inputs, normalisation, data, privacy, robustness, versions.

    ``privacy``: the run's ``privacy_section`` when the caller has it (with round 0's statistics);
    else one from the config and rounds."""
    training = config.get("training") or {}
    robust = config.get("robustness") or {}
    return {
        "format": BUNDLE_FORMAT,
        "bundle_version": BUNDLE_VERSION,
        "campaign_id": campaign_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": {
            "builder": "federation.ml.models:build_model",
            "model_type": training.get("model_type"),
            "n_features": training.get("n_features"),
            "window": training.get("window"),
            "input": "float32 (batch, window, n_features): z-scored sensors, oldest cycle first",
            "output": "float32 (batch,): remaining useful life in cycles",
            **_own_model_source(training.get("model_type")),
        },
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": weights_sha256,
            "format": "pdmfed tensor msgpack (federation.wire.codec)",
        },  # fmt: skip
        "features": None if features is None else list(features),
        "window": training.get("window"),
        "rul_cap": rul_cap,
        "normalizer": None if normalizer is None else dict(normalizer),
        "schema": None if schema is None else dict(schema),
        "data_cards": [dict(c) for c in data_cards],
        "privacy": dict(privacy) if privacy is not None else privacy_section(config, rounds),
        "robustness": {
            "enabled": bool(robust.get("enabled")),
            "rule": robust.get("rule"),
            "rounds": [
                {
                    "round": r.get("round_num"),
                    "kept": list(r.get("participants") or []),
                    "rejected": dict(r.get("rejected") or {}),
                    "byzantine": list(r.get("byzantine") or []),
                }
                for r in rounds
            ],  # fmt: skip
        },
        "training": dict(training),
        "rounds": len(rounds),
        "evaluation": None if evaluation is None else dict(evaluation),
        "versions": _versions(),
    }


def bundle_info_from_cards(cards: Sequence[Mapping[str, Any]], training: Mapping[str, Any]) -> dict:
    """Features, normalisation, schema and RUL cap the factories' data cards agree on.

    Cards that disagree on features or window, or that do not fit the campaign's
    ``n_features``/``window``, are a BundleError (the campaign would train on mixed inputs);
    different normalisation statistics leave the bundle without any (predict then needs
    ``--normalizer``), as each factory scaled its data its own way.
    """
    if not cards:
        return {}
    first = cards[0]
    for key in ("features", "window"):
        values = {json.dumps(c.get(key)) for c in cards}
        if len(values) > 1:
            raise BundleError(f"the data cards disagree on {key}: {sorted(values)}")
    features = list(first.get("features") or [])
    if training.get("n_features") is not None and len(features) != training["n_features"]:
        raise BundleError(f"the data cards have {len(features)} features, the campaign trains "
                          f"on n_features={training['n_features']}")  # fmt: skip
    if training.get("window") is not None and first.get("window") != training["window"]:
        raise BundleError(f"the data cards' window is {first.get('window')}, the campaign's "
                          f"{training['window']}")  # fmt: skip
    norms = {json.dumps(c.get("normalizer"), sort_keys=True) for c in cards}
    caps = {(c.get("label") or {}).get("rul_cap") for c in cards}
    return {
        "features": features,
        "normalizer": first.get("normalizer") if len(norms) == 1 else None,
        "rul_cap": caps.pop() if len(caps) == 1 else None,
        "schema": first.get("schema"),
        "data_cards": [dict(c) for c in cards],
    }


def write_bundle(run_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Write bundle.json next to the run's weights (which must be there already)."""
    path = Path(run_dir) / BUNDLE_FILE
    path.write_text(json.dumps(manifest, indent=2, default=float) + "\n")
    return path


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle: its manifest and the model with its weights."""

    manifest: dict[str, Any]
    model: Any  # torch.nn.Module in eval mode
    path: Path

    @property
    def window(self) -> int:
        return int(self.manifest["architecture"]["window"])

    @property
    def n_features(self) -> int:
        return int(self.manifest["architecture"]["n_features"])


def _manifest_path(path: Path) -> Path:
    path = Path(path)
    return path / BUNDLE_FILE if path.is_dir() else path


def _own_model_source(model_type: Any) -> dict[str, str]:
    """For an own model: the SHA-256 of the source it was trained with (its package installed here)."""
    from federation.ml.own_model import is_entry_point, source_digest

    return {"source_sha256": source_digest(model_type)} if is_entry_point(model_type) else {}


def _check_own_model_source(arch: Mapping[str, Any], mpath: Path) -> None:
    """An own model loads only from the source it was trained with (another version could fit
    the same weights and predict differently)."""
    from federation.ml.own_model import source_digest

    recorded = arch.get("source_sha256")
    if recorded is None:
        return
    try:
        installed = source_digest(str(arch.get("model_type")))
    except PdmFedError as exc:
        raise BundleError(f"{mpath}: {exc}") from exc
    if installed != recorded:
        raise BundleError(f"{mpath}: the installed source of {arch.get('model_type')} (sha256 "
                          f"{installed[:12]}) is not the one the bundle was trained with "
                          f"({str(recorded)[:12]})")  # fmt: skip


def load_bundle(path: str | Path) -> Bundle:
    """Read bundle.json (a run folder or the file), check the weights' SHA-256, build the model.

    The weights are decoded by the project's tensor codec (no pickle, no torch.load).
    """
    from federation.ml.models import build_model
    from federation.ml.train import _load_state
    from federation.wire.codec import decode_state_dict

    mpath = _manifest_path(Path(path))
    try:
        manifest = json.loads(mpath.read_text())
    except FileNotFoundError as exc:
        raise BundleError(f"{mpath}: no model bundle here (a campaign's run folder holds "
                          f"{BUNDLE_FILE})") from exc  # fmt: skip
    except (OSError, ValueError) as exc:
        raise BundleError(f"{mpath}: not a readable bundle manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{mpath}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("bundle_version") != BUNDLE_VERSION:
        raise BundleError(f"{mpath}: bundle version {manifest.get('bundle_version')!r}, this "
                          f"pdmfed reads {BUNDLE_VERSION}")  # fmt: skip
    arch, weights = manifest.get("architecture") or {}, manifest.get("weights") or {}
    wpath = mpath.parent / Path(str(weights.get("file", WEIGHTS_FILE))).name
    try:
        raw = wpath.read_bytes()
    except OSError as exc:
        raise BundleError(f"{wpath}: cannot read the weights: {exc.strerror}") from exc
    if hashlib.sha256(raw).hexdigest() != weights.get("sha256"):
        raise BundleError(f"{wpath}: SHA-256 differs from {mpath.name}'s: the weights were altered")
    _check_own_model_source(arch, mpath)
    try:
        state = decode_state_dict(raw)
        model = build_model(arch.get("model_type"), arch.get("n_features"), arch.get("window"))
        _load_state(model, state)
    except PdmFedError as exc:
        raise BundleError(f"{mpath}: the weights do not fit the architecture: {exc}") from exc
    model.eval()
    return Bundle(manifest, model, mpath)
