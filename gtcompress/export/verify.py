"""Verification: an artefact's logits against the PyTorch model's on the whole test split."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..backends import Backend
from ..data import create_loader
from .precisions import Tolerance
from .source import EvalData


def batches(dataset: Dataset, batch_size: int, workers: int = 0) -> Iterator[np.ndarray]:
    """Float32 NCHW batches of a transformed data set, in order."""
    for x, _ in create_loader(dataset, batch_size, training=False, workers=workers):
        yield x.numpy()


def predict(backend: Backend, data: EvalData, batch_size: int) -> np.ndarray:
    """Logits of `backend` on the whole test split, (N, C) float32."""
    return np.concatenate([backend.infer(x) for x in batches(data.test, batch_size, data.workers)])


def agreement(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy of `logits` and how closely they follow the PyTorch `reference` (percent, max |delta|)."""
    finite = bool(np.isfinite(logits).all())
    top1 = logits.argmax(1)
    return {
        "top1": float(100 * (top1 == labels).mean()),
        "top1_agreement": float(100 * (top1 == reference.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(logits - reference).max()) if finite else float("inf"),
        "finite": finite,
    }


def tolerance_failure(stats: dict[str, Any], tol: Tolerance) -> tuple[str, str] | None:
    """The tolerance `stats` fail (finite | max_abs_diff | min_agreement) and why, or None when they pass."""
    if not stats["finite"]:
        return "finite", "its logits contain NaN or Inf"
    if tol.max_abs_diff is not None and stats["max_abs_diff"] > tol.max_abs_diff:
        return "max_abs_diff", f"max |delta logits| {stats['max_abs_diff']:.3g} > {tol.max_abs_diff:g}"
    if stats["top1_agreement"] < tol.min_agreement:
        return "min_agreement", f"top-1 agreement {stats['top1_agreement']:.2f}% < {tol.min_agreement:g}%"
    return None
