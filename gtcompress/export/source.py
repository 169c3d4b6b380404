"""Where an export comes from: the checkpoint, the run it belongs to, and the data set it is verified on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import UserError
from ..evaluate import data_config
from ..rundir import RunDir, resolve_run
from ..settings import ExportConfig
from ..stages import run_stages


@dataclass(frozen=True)
class Source:
    """The model to export, the data to verify it on, and where the results go."""

    name: str  # artefact stem: student, generous_teacher, ... (or the checkpoint's file stem)
    checkpoint: Path
    base: Path  # export/ and metrics.json live here
    data: DataConfig


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
    known = run_stages(run.saved_config())
    if cfg.stage not in known:
        raise UserError(f"unknown stage '{cfg.stage}'", f"this run's stages: {', '.join(known)}")
    ckpt = run.checkpoint(cfg.stage)
    if not ckpt.is_file():
        hint = "finish it with `gtcompress distill --resume --out RUN`"
        raise UserError(f"{run.path} has no {ckpt.name} (the {cfg.stage} stage did not finish)", hint)
    data = data_config(run.path, cfg.dataset, cfg.data_root, str(run.path))
    return Source(cfg.stage, ckpt, Path(cfg.out or run.path).resolve(), data)
