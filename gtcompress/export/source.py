"""Where an export comes from: the checkpoint, the run it belongs to, and that run's test data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, IterableDataset, Subset

from ..config import DataConfig
from ..data import Splits, build_transform, load_splits, loader_workers, transformed
from ..errors import UserError
from ..models import ModelSpec
from ..rundir import RunDir, resolve_run
from ..stages import stages
from .config import ExportConfig


@dataclass(frozen=True)
class Source:
    """The model to export, the data to verify it on, and where the results go."""

    name: str  # artefact stem: student, generous_teacher, ... (or the checkpoint's file stem)
    checkpoint: Path
    base: Path  # export/ and metrics.json live here
    data: DataConfig


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


def _run_data(run: Path) -> DataConfig:
    try:
        return RunDir(run).saved_config().data
    except UserError as e:  # a hand-edited or foreign config.yaml
        raise UserError(e.message, "pass --dataset NAME to name the data set instead") from None


def data_config(run: Path | None, dataset: str | None, data_root: Path | None, what: str) -> DataConfig:
    """The run's data configuration with --dataset/--data-root applied; --dataset is needed without a run."""
    if run is None and dataset is None:
        raise UserError(
            f"{what} is not inside a gtcompress run, so the data set is unknown",
            "pass --dataset NAME (and --data-root DIR) to verify on its test split",
        )
    data = _run_data(run) if run is not None else DataConfig()
    updates = {k: v for k, v in {"name": dataset, "root": data_root}.items() if v is not None}
    return data.model_copy(update=updates) if updates else data


def resolve_source(cfg: ExportConfig) -> Source:
    """Which checkpoint to export and where: a run's `<model>.pt`, or `--checkpoint FILE`."""
    if cfg.checkpoint is not None:
        ckpt = Path(cfg.checkpoint)
        if not ckpt.is_file():
            raise UserError(f"checkpoint {ckpt} not found", "pass the path of a .pt file written by gtcompress")
        run = ckpt.parent if RunDir(ckpt.parent).config.is_file() else None
        data = data_config(run, cfg.dataset, cfg.data_root, str(ckpt))
        # dots would read as a precision in the artefact names (`my.model.onnx`)
        return Source(ckpt.stem.replace(".", "_"), ckpt.resolve(), Path(cfg.out or ckpt.parent).resolve(), data)
    run = resolve_run(cfg.run)
    known = [s.name for s in stages(run.saved_config())]
    if cfg.stage not in known:
        raise UserError(f"unknown stage '{cfg.stage}'", f"this run's stages: {', '.join(known)}")
    ckpt = run.checkpoint(cfg.stage)
    if not ckpt.is_file():
        hint = "finish it with `gtcompress distill --resume --out RUN`"
        raise UserError(f"{run.path} has no {ckpt.name} (the {cfg.stage} stage did not finish)", hint)
    data = data_config(run.path, cfg.dataset, cfg.data_root, str(run.path))
    return Source(cfg.stage, ckpt, Path(cfg.out or run.path).resolve(), data)


def load_eval_data(data_cfg: DataConfig, spec: ModelSpec) -> EvalData:
    """The data set's splits under the checkpoint's eval transform (its img_size, mean, std)."""
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
