"""The distill pipeline: Standard Teacher -> Generous Teacher -> student(s), in one resumable run directory."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
import yaml
from rich.console import Console
from torch import nn

from . import __version__
from .config import RunConfig, dump_config
from .data import Transformed, build_transform, load_splits
from .distributed import DistEnv, all_ranks_ok, barrier, init_distributed
from .errors import UserError
from .losses import Objective, ce_objective, generous_objective, student_objective
from .models import (
    ModelSpec, count_macs, count_params, create_model, default_normalization, load_model, load_weights,
    resolve_model_name, save_checkpoint,
)
from .rundir import RunDir, mark_latest, new_run_path, resolve_run, write_text
from .train import Context, Stage, fit, seed_everything

# Students of every arm share one seed offset: the same initial weights and data order.
SEED_OFFSETS = {"standard_teacher": 0, "generous_teacher": 1, "student": 2, "student_from_standard": 2,
                "student_ce": 2}


def resolve_names(cfg: RunConfig) -> list[str]:
    """Replace the configured model names by exact timm names; return how each was resolved."""
    notes = []
    for block in (cfg.teacher, cfg.student, cfg.generous):
        if block.arch is None:
            continue
        block.arch, note = resolve_model_name(block.arch)
        if note:
            notes.append(note)
    return notes


def environment(cfg: RunConfig, env: DistEnv, device: torch.device, requested: dict[str, str]) -> dict[str, Any]:
    return {
        "requested": requested,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
        or platform.machine(),
        "world_size": env.world_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)),
        "versions": {
            "gtcompress": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__,
        },
    }


def _prepare_run(cfg: RunConfig | None, out: Path | None, resume: bool) -> tuple[RunConfig, RunDir]:
    if resume:
        run = resolve_run(out)
        cfg = RunConfig.model_validate(yaml.safe_load(run.config.read_text()))
        return cfg, run
    out = out or new_run_path()
    if (out / "config.yaml").exists():
        raise UserError(f"{out} already holds a run", "continue it with --resume, or choose another --out")
    return cfg or RunConfig(), RunDir(out)


def run_distill(
    cfg: RunConfig | None = None, out: Path | None = None, resume: bool = False, console: Console | None = None
) -> RunDir:
    """Run every stage of the pipeline, or resume the run in `out` with its saved configuration."""
    console = console or Console()
    cfg, run = _prepare_run(cfg, out, resume)
    env, device = init_distributed(cfg.device, cfg.precision)
    say = console.print if env.is_main else (lambda *a, **k: None)
    if not resume:
        requested = {"teacher": cfg.teacher.arch, "student": cfg.student.arch}
        for note in resolve_names(cfg):
            say(f"resolved {note}")
        if cfg.teacher.pretrained and cfg.teacher.checkpoint:
            raise UserError("--pretrained and --teacher-checkpoint both given", "pick one source of teacher weights")
        if cfg.generous.init == "standard" and (cfg.generous.arch or cfg.teacher.arch) != cfg.teacher.arch:
            raise UserError("--gt-init standard needs the Generous Teacher to share the teacher's architecture",
                            "drop generous.arch or use --gt-init scratch")
        cfg.environment = environment(cfg, env, device, requested)
        if env.is_main:
            write_text(run.config, dump_config(cfg))
            mark_latest(run.path)
    say(f"run directory: {run.path}")

    splits, error = None, None
    try:
        splits = load_splits(cfg.data)
    except UserError as e:
        error = e
    all_ranks_ok(env, error)
    if splits.skipped:
        names = ", ".join(Path(p).name for p in splits.skipped[:10])
        say(f"[yellow]skipped {len(splits.skipped)} unreadable image(s): {names}"
            f"{', ...' if len(splits.skipped) > 10 else ''}")

    img_size = cfg.data.img_size or splits.img_size
    teacher_mean, teacher_std = default_normalization(cfg.teacher.arch)
    mean, std = cfg.data.mean or teacher_mean, cfg.data.std or teacher_std

    def spec(arch: str) -> ModelSpec:
        return ModelSpec(arch, splits.num_classes, img_size, tuple(mean), tuple(std), tuple(splits.class_names))

    workers = cfg.data.workers if cfg.data.workers is not None else (0 if splits.in_memory else 8)
    ctx = Context(
        run=run, device=device, dist=env, precision=cfg.precision, channels_last=cfg.channels_last, seed=cfg.seed,
        workers=workers, console=console,
        train_data=Transformed(splits.train, build_transform(cfg.data, splits, img_size, mean, std, training=True)),
        val_data=Transformed(splits.val, build_transform(cfg.data, splits, img_size, mean, std, training=False)),
    )

    def stage(name: str, arch: str, build: Callable[[], nn.Module], train, objective: Objective,
              teacher: nn.Module | None = None, **extra: Any) -> nn.Module:
        done = run.metrics().get(name)
        if done is not None and run.checkpoint(name).exists():
            say(f"{name}: complete (top-1 {done['top1']:.2f}%), loaded from {run.checkpoint(name).name}")
            return load_model(run.checkpoint(name))[0]
        seed_everything(cfg.seed, SEED_OFFSETS[name])
        st = Stage(name, build(), train, objective, teacher, SEED_OFFSETS[name])
        metrics = fit(st, ctx, splits.num_classes, lambda record: _append_history(run, record))
        metrics = {"arch": arch, **metrics, "params": count_params(st.model),
                   "macs": count_macs(st.model, img_size), **extra}
        if env.is_main:
            save_checkpoint(run.checkpoint(name), st.model, spec(arch), name, metrics)
            run.update_metrics(name, metrics)
            run.progress(name).unlink(missing_ok=True)
        barrier(env)
        return st.model

    try:
        t = cfg.teacher

        def build_standard() -> nn.Module:
            model = create_model(t.arch, splits.num_classes, t.pretrained)
            if t.checkpoint is not None:
                load_weights(model, t.checkpoint, t.arch, splits.num_classes)
            return model

        st_train = t.train.model_copy(update={"epochs": 0}) if t.checkpoint else t.train
        source = "checkpoint" if t.checkpoint else "pretrained" if t.pretrained else "scratch"
        standard = stage("standard_teacher", t.arch, build_standard, st_train,
                         ce_objective(t.train.label_smoothing), source=source)

        g = cfg.generous
        gt_arch = g.arch or t.arch

        def build_generous() -> nn.Module:
            model = create_model(gt_arch, splits.num_classes)
            if g.checkpoint is not None:
                load_weights(model, g.checkpoint, gt_arch, splits.num_classes)
            elif g.init == "standard":
                model.load_state_dict(standard.state_dict())
            return model

        gt_train = g.train.model_copy(update={"epochs": 0}) if g.checkpoint else g.train
        generous = stage("generous_teacher", gt_arch, build_generous, gt_train, generous_objective(g),
                         teacher=standard, source="checkpoint" if g.checkpoint else "trained", init=g.init,
                         beta=g.beta, k=g.k)

        s = cfg.student
        build_student = lambda: create_model(s.arch, splits.num_classes)  # noqa: E731
        stage("student", s.arch, build_student, s.train, student_objective(s), teacher=generous,
              teacher_stage="generous_teacher", method=s.method)
        if cfg.compare:
            stage("student_from_standard", s.arch, build_student, s.train, student_objective(s), teacher=standard,
                  teacher_stage="standard_teacher", method=s.method)
            stage("student_ce", s.arch, build_student, s.train, ce_objective(s.train.label_smoothing),
                  method="ce")
    except KeyboardInterrupt:
        say(f"\n[yellow]interrupted: continue with `gtcompress distill --resume --out {run.path}`")
        raise
    return run


def _append_history(run: RunDir, record: dict[str, Any]) -> None:
    """Add an epoch's record, dropping records of that stage from this epoch on (left by an interrupted run)."""
    kept = [r for r in run.history() if not (r["stage"] == record["stage"] and r["epoch"] >= record["epoch"])]
    run.write_history(kept + [record])
