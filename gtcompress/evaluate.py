"""`gtcompress eval`: the test-split accuracy of any checkpoint, ONNX file or TensorRT engine, on any backend
that runs it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import artefact_kind, load_backend
from .errors import UserError
from .export.sidecar import read_sidecar
from .export.source import data_config, load_eval_data, run_of
from .export.verify import predict
from .models import ModelSpec, read_checkpoint, spec_of


def _spec_and_precision(path: Path) -> tuple[ModelSpec, str]:
    """How to rebuild and feed the artefact, and its precision: from the checkpoint, or its export sidecar."""
    if artefact_kind(path) == "checkpoint":
        return spec_of(read_checkpoint(path)), "fp32"
    meta = read_sidecar(path)
    names = tuple(meta["class_names"])
    spec = ModelSpec(
        meta["arch"], meta["num_classes"], meta["img_size"], tuple(meta["mean"]), tuple(meta["std"]), names
    )
    return spec, meta["files"][path.name]


@dataclass(frozen=True)
class Predictions:
    """An artefact's logits on every test image, with the labels, and what produced them."""

    logits: np.ndarray
    labels: np.ndarray
    backend: str
    precision: str
    data: str  # the test data's description


def predict_artefact(
    path: Path,
    dataset: str | None = None,
    data_root: Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    backend: str | None = None,
) -> Predictions:
    """Logits of a .pt, .onnx or .engine file on the test split, on `backend` (default: the first that runs it);
    the data set is its run's unless given."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", "pass a .pt, .onnx or .engine file")
    spec, precision = _spec_and_precision(path)
    data = load_eval_data(data_config(run_of(path), dataset, data_root, path.name), spec)
    runner = load_backend(path, device, backend, precision)
    return Predictions(predict(runner, data, batch_size), data.labels, runner.name, runner.precision, data.description)


def evaluate_artefact(path: Path, **options: Any) -> dict[str, Any]:
    """Test-split top-1 (and top-5) of an artefact, as `predict_artefact` computes its logits."""
    p = predict_artefact(path, **options)
    k = min(5, p.logits.shape[1])
    topk = np.argsort(-p.logits, axis=1)[:, :k]
    return {
        "path": str(path),
        "backend": p.backend,
        "precision": p.precision,
        "images": len(p.labels),
        "top1": float(100 * (p.logits.argmax(1) == p.labels).mean()),
        f"top{k}": float(100 * (topk == p.labels[:, None]).any(1).mean()),
        "data": p.data,
    }
