"""`gtcompress eval`: the test-split accuracy of any checkpoint, ONNX file or TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backends import load_backend
from .errors import UserError
from .export.sidecar import read_sidecar
from .export.source import _data_config, _run_of, load_eval_data
from .export.verify import predict
from .models import ModelSpec, read_checkpoint, spec_of


def evaluate_artefact(
    path: Path, dataset: str | None = None, data_root: Path | None = None, device: str = "cpu", batch_size: int = 64
) -> dict[str, Any]:
    """Test-split top-1 of a .pt, .onnx or .engine file; the data set is its run's unless given."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", "pass a .pt, .onnx or .engine file")
    if path.suffix not in (".pt", ".onnx", ".engine"):
        raise UserError(f"{path.name} is not a model artefact gtcompress can run", "pass a .pt, .onnx or .engine file")
    if path.suffix == ".pt":
        spec = spec_of(read_checkpoint(path))
    else:
        meta = read_sidecar(path)
        spec = ModelSpec(
            meta["arch"],
            meta["num_classes"],
            meta["img_size"],
            tuple(meta["mean"]),
            tuple(meta["std"]),
            tuple(meta["class_names"]),
        )
    data = load_eval_data(_data_config(_run_of(path), dataset, data_root, path.name), spec)
    backend = load_backend(path, device=device)
    logits = predict(backend, data, batch_size)
    top1 = logits.argmax(1)
    k = min(5, spec.num_classes)
    topk = np.argsort(-logits, axis=1)[:, :k]
    return {
        "path": str(path),
        "backend": backend.name,
        "precision": backend.precision,
        "images": len(data.labels),
        "top1": float(100 * (top1 == data.labels).mean()),
        f"top{k}": float(100 * (topk == data.labels[:, None]).any(1).mean()),
        "data": data.description,
    }
