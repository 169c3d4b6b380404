"""Evaluation: a model's test data, its logits on any backend, and how closely an artefact follows its PyTorch
model. `gtcompress eval` (any checkpoint, ONNX file or engine, on any backend that runs it) and export's
verification both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, IterableDataset, Subset

from .backends import Backend, Kind, artefact_kind, backend, runs
from .config import DataConfig, Tolerance
from .data import Splits, build_transform, create_loader, load_splits, loader_workers, transformed
from .errors import UserError
from .models import ModelSpec, load_model, read_checkpoint, spec_of
from .rundir import RunDir, read_sidecar


@dataclass(frozen=True)
class EvalData:
    """The test split (and training split, for calibration) under the model's eval transform."""

    test: Dataset
    train: Dataset
    labels: np.ndarray
    transform: Callable
    description: str
    workers: int


def run_of(path: Path) -> Path | None:
    """The run directory holding `path` (a checkpoint in it, or an artefact in its export/), if any."""
    for parent in (path.parent, path.parent.parent):
        if RunDir(parent).config.is_file():
            return parent
    return None


def data_config(
    run: Path | None, dataset: str | None, data_root: Path | None, what: str, download: bool = False
) -> DataConfig:
    """The run's data configuration with --dataset/--data-root/--download applied; --dataset is needed without a
    run."""
    if run is None and dataset is None:
        raise UserError(
            f"{what} is not inside a gtcompress run, so the data set is unknown",
            "pass --dataset NAME (and --data-root DIR) to verify on its test split",
        )
    try:
        data = RunDir(run).saved_config().data if run is not None else DataConfig()
    except UserError as e:  # a hand-edited or foreign config.yaml
        raise UserError(e.message, "pass --dataset NAME to name the data set instead") from None
    updates = {k: v for k, v in {"name": dataset, "root": data_root, "download": download or None}.items() if v}
    return data.model_copy(update=updates) if updates else data


def load_eval_data(data_cfg: DataConfig, spec: ModelSpec) -> EvalData:
    """The data set's splits under the model's eval transform (its img_size, mean, std)."""
    splits: Splits = load_splits(data_cfg)
    if splits.num_classes != spec.num_classes:
        raise UserError(
            f"the model has {spec.num_classes} classes but {data_cfg.name} has {splits.num_classes}",
            "pass the --dataset the model was trained on",
        )
    transform = build_transform(data_cfg, splits, spec.img_size, spec.mean, spec.std, training=False)
    labels = np.asarray(_targets(splits.val), dtype=np.int64)
    # a stream read here first (for its labels) has built its shard pipeline in this process: loader workers
    # would each copy all of it, so it is read in-process
    workers = 0 if splits.streaming else loader_workers(data_cfg, splits)
    return EvalData(
        transformed(splits.val, transform),
        transformed(splits.train, transform),
        labels,
        transform,
        f"{len(labels)} {data_cfg.name} test images",
        workers,
    )


def _targets(dataset: Dataset) -> list[int]:
    """Labels of a data set without decoding its images (where it keeps them apart)."""
    if isinstance(dataset, Subset):
        inner = _targets(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, IterableDataset):  # a stream: its labels come with its (decoded) images
        return [int(target) for _, target in dataset]
    targets = getattr(dataset, "targets", None)
    return list(targets) if targets is not None else [dataset[i][1] for i in range(len(dataset))]


def batches(dataset: Dataset, batch_size: int, workers: int = 0) -> Iterator[np.ndarray]:
    """Float32 NCHW batches of a transformed data set, in order."""
    for x, _ in labelled_batches(dataset, batch_size, workers):
        yield x


def labelled_batches(dataset: Dataset, batch_size: int, workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(float32 NCHW images, int64 labels) batches of a transformed data set, in order."""
    for x, y in create_loader(dataset, batch_size, training=False, workers=workers):
        yield x.numpy(), y.numpy()


def predict(runner: Backend, data: EvalData, batch_size: int) -> np.ndarray:
    """Logits of an opened runner on the whole test split, (N, C) float32."""
    return np.concatenate([runner.infer(x) for x in batches(data.test, batch_size, data.workers)])


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


@dataclass(frozen=True)
class Artefact:
    """A model file as evaluation opens it: what it is, how to rebuild and feed its model, its precision."""

    path: Path
    kind: Kind
    spec: ModelSpec
    precision: str

    @classmethod
    def of(cls, path: Path) -> Artefact:
        """A checkpoint, described by itself (at fp32: a runner applies its own precision to the model), or an
        exported file described by the sidecar beside it; one clear line where neither."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} not found", "pass a .pt, .onnx or .engine file")
        kind = artefact_kind(path)
        if kind.model:
            return cls(path, kind, spec_of(read_checkpoint(path)), "fp32")
        sidecar = read_sidecar(path)
        return cls(path, kind, spec_of(sidecar.model_dump()), sidecar.files[path.name])

    def open(self, device: str = "cpu", name: str | None = None) -> Backend:
        """A runner of the file on backend `name`, else the registry's first that runs its kind: of the model
        loaded from it where its runners take a model, else of the file itself."""
        spec = backend(name) if name else runs(self.kind.name)[0]
        if spec.kind != self.kind:
            able = ", ".join(s.name for s in runs(self.kind.name))
            raise UserError(
                f"backend {spec.name} does not run {self.path.name}", f"{self.kind.name} files run on {able}"
            )
        return spec.open(load_model(self.path)[0] if self.kind.model else self.path, device, self.precision)


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
    download: bool = False,
) -> Predictions:
    """Logits of a .pt, .onnx or .engine file on the test split, on `backend` (default: the first that runs it);
    the data set is its run's unless given."""
    artefact = Artefact.of(path)
    where = data_config(run_of(artefact.path), dataset, data_root, artefact.path.name, download)
    data = load_eval_data(where, artefact.spec)
    with artefact.open(device, backend) as runner:
        logits = predict(runner, data, batch_size)
    return Predictions(logits, data.labels, runner.name, runner.precision, data.description)


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
