"""A bundle's model as TorchScript or ONNX, verified against PyTorch on real or seeded windows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from federation.ml.bundle import Bundle, BundleError

__all__ = [
    "EXPORT_FORMATS",
    "TOLERANCE",
    "Exported",
    "check_windows",
    "default_path",
    "export_bundle",
    "verify_export",
]

EXPORT_FORMATS = ("torchscript", "onnx")
#: Largest accepted |exported - PyTorch| relative to the prediction: 1e-5 x max(1, |RUL|) cycles.
#: An absolute 1e-5 cycles is below float32's resolution at RUL ~ 100 (one ulp is 7.6e-6 there):
#: LSTM kernels that sum in another order differ by a few ulps.
TOLERANCE = 1e-5
_SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


@dataclass(frozen=True)
class Exported:
    """The exported file and how closely it reproduces PyTorch."""

    path: Path
    format: str
    windows: int
    max_abs_diff: float
    max_rel_diff: float


def check_windows(bundle: Bundle, n: int = 256, seed: int = 0) -> np.ndarray:
    """Seeded z-scored-like windows in the model's input shape (when no real data is given)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, bundle.window, bundle.n_features)).astype(np.float32)


def _write(model: torch.nn.Module, fmt: str, example: torch.Tensor, path: Path) -> None:
    if fmt == "torchscript":
        torch.jit.trace(model, example, check_trace=False).save(str(path))
        return
    _onnxruntime()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["windows"],
        output_names=["rul"],
        dynamic_axes={"windows": {0: "batch"}, "rul": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise BundleError("ONNX export needs onnx and onnxruntime (pip install "
                          "'pdm-federation[export]')") from exc  # fmt: skip
    return onnxruntime


def _runner(fmt: str, path: Path):
    """The exported file, loaded by its own runtime (our own file: never a received one)."""
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path))
        loaded.eval()

        def run(X: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return loaded(torch.from_numpy(X)).numpy()

        return run
    session = _onnxruntime().InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda X: session.run(["rul"], {"windows": X})[0]


def verify_export(bundle: Bundle, fmt: str, path: Path, windows: np.ndarray) -> tuple[float, float]:
    """(max |exported - PyTorch| in cycles, max of it / max(1, |RUL|)) on `windows`.

    BundleError when the relative difference exceeds ``TOLERANCE``.
    """
    from federation.ml.train import predict

    if not windows.shape[0]:
        raise BundleError("no windows to verify the export on")
    run = _runner(fmt, Path(path))
    expected = predict(bundle.model, windows).astype(np.float64)
    got = np.concatenate(
        [run(windows[i : i + 512]).reshape(-1) for i in range(0, windows.shape[0], 512)]
    ).astype(np.float64)
    diff = np.abs(got - expected)
    worst_abs = float(np.max(diff))
    worst_rel = float(np.max(diff / np.maximum(1.0, np.abs(expected))))
    if not worst_rel <= TOLERANCE:
        raise BundleError(
            f"the {fmt} model differs from PyTorch by {worst_abs:.3g} cycles ({worst_rel:.3g} "
            f"relative, > {TOLERANCE:g}) on {windows.shape[0]} windows"
        )
    return worst_abs, worst_rel


def export_bundle(
    bundle: Bundle, fmt: str, out: Path, windows: np.ndarray | None = None
) -> Exported:
    """Write the model to `out` in `fmt`, reload it and compare with PyTorch on `windows`.

    A difference above ``TOLERANCE`` removes the file and raises BundleError.
    """
    if fmt not in EXPORT_FORMATS:
        raise BundleError(f"unknown export format {fmt!r}; supported: {EXPORT_FORMATS}")
    X = check_windows(bundle) if windows is None else np.ascontiguousarray(windows, np.float32)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(bundle.model.eval(), fmt, torch.from_numpy(X[:2].copy()), out)
    try:
        worst_abs, worst_rel = verify_export(bundle, fmt, out, X)
    except BundleError as exc:
        out.unlink(missing_ok=True)
        raise BundleError(f"{exc}: not written") from exc
    return Exported(out, fmt, int(X.shape[0]), worst_abs, worst_rel)


def default_path(bundle: Bundle, fmt: str) -> Path:
    """<run folder>/model.pt or model.onnx."""
    return bundle.path.parent / f"model{_SUFFIX[fmt]}"
