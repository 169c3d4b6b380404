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
from .data import Transformed, build_transform, create_loader, load_splits
from .distributed import DistEnv, agree, barrier, broadcast_object, init_distributed, shutdown
from .errors import UserError
from .objectives import Objective, ce_objective, generous_objective, student_objective
from .models import (
    ModelSpec, count_macs, count_params, create_model, default_normalization, load_model, load_weights,
    resolve_model_name, save_checkpoint,
)
from .rundir import RunDir, mark_latest, new_run_path, resolve_run, write_text
from .train import Context, Stage, fit, make_optimizer, seed_everything

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


def _load_resumed(out: Path | None) -> tuple[RunConfig, RunDir]:
    run = resolve_run(out)
    return RunConfig.model_validate(yaml.safe_load(run.config.read_text())), run


def _new_run(out: Path | None) -> RunDir:
    """Rank 0's choice of a fresh run directory."""
    out = out or new_run_path()
    if (out / "config.yaml").exists():
        raise UserError(f"{out} already holds a run", "continue it with --resume, or choose another --out")
    return RunDir(out)


def _check(cfg: RunConfig) -> None:
    if cfg.teacher.pretrained and cfg.teacher.checkpoint:
        raise UserError("--pretrained and --teacher-checkpoint both given", "pick one source of teacher weights")
    if cfg.generous.init == "standard" and (cfg.generous.arch or cfg.teacher.arch) != cfg.teacher.arch:
        raise UserError("--gt-init standard needs the Generous Teacher to share the teacher's architecture",
                        "drop generous.arch or use --gt-init scratch")


def run_distill(
    cfg: RunConfig | None = None, out: Path | None = None, resume: bool = False, console: Console | None = None,
    dry_run: bool = False,
) -> RunDir | None:
    """Run every stage of the pipeline, or resume the run in `out` with its saved configuration.

    Under torchrun every rank calls this; rank 0 alone prints and writes. With `dry_run`, build the data,
    models and optimizers, report them and stop without writing anything (returns None).
    """
    console = console or Console()
    if resume:
        cfg, run = _load_resumed(out)
    cfg = cfg or RunConfig()
    env, device = init_distributed(cfg.device, cfg.precision)
    try:
        return _run(cfg, None if resume else out, run if resume else None, env, device, console, dry_run)
    finally:
        shutdown(env)


def _run(cfg: RunConfig, out: Path | None, run: RunDir | None, env: DistEnv, device: torch.device,
         console: Console, dry_run: bool) -> RunDir | None:
    say = console.print if env.is_main else (lambda *a, **k: None)
    if run is None:
        requested = {"teacher": cfg.teacher.arch, "student": cfg.student.arch}
        notes = agree(env, lambda: resolve_names(cfg))
        for note in notes:
            say(f"resolved {note}")
        _check(cfg)
        if not dry_run:
            run = agree(env, lambda: _new_run(out) if env.is_main else None)
            run = RunDir(broadcast_object(run.path if run else None, env))
            cfg.environment = environment(cfg, env, device, requested)
            if env.is_main:
                write_text(run.config, dump_config(cfg))
                mark_latest(run.path)
            barrier(env)
            say(f"run directory: {run.path}")

    splits = agree(env, lambda: load_splits(cfg.data))
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
    eval_transform = build_transform(cfg.data, splits, img_size, mean, std, training=False)
    cache = cfg.cache_teacher_logits if cfg.cache_teacher_logits is not None else not cfg.data.augment_train
    ctx = Context(
        run=run, device=device, dist=env, precision=cfg.precision, channels_last=cfg.channels_last, seed=cfg.seed,
        workers=workers, console=console, compile=cfg.compile,
        train_data=Transformed(splits.train, build_transform(cfg.data, splits, img_size, mean, std, training=True)),
        val_data=Transformed(splits.val, eval_transform),
        # with augmentation, cached logits are the teacher's on the un-augmented image: an approximation
        cache_data=Transformed(splits.train, eval_transform) if cache else None,
    )
    writer = _tensorboard(run) if cfg.tensorboard and env.is_main and run is not None else None

    def on_epoch(record: dict[str, Any]) -> None:
        _append_history(run, record)
        if writer is not None:
            for key, value in record.items():
                if key not in ("stage", "epoch") and isinstance(value, (int, float)):
                    writer.add_scalar(f"{record['stage']}/{key}", value, record["epoch"])
            writer.flush()

    def stage(name: str, arch: str, build: Callable[[], nn.Module], train, objective: Objective,
              teacher: nn.Module | None = None, **extra: Any) -> nn.Module:
        if dry_run:
            model = agree(env, build)
            optimizer = make_optimizer(model, train)
            say(f"{name}: {arch}, {count_params(model) / 1e6:.2f}M params, {count_macs(model, img_size) / 1e6:.1f} "
                f"MMACs at {img_size}px; {train.epochs} epochs of {type(optimizer).__name__} lr {train.lr}, "
                f"global batch {train.batch_size}")
            return model
        done = run.metrics().get(name)
        if done is not None and run.checkpoint(name).exists():
            say(f"{name}: complete (top-1 {done['top1']:.2f}%), loaded from {run.checkpoint(name).name}")
            return load_model(run.checkpoint(name))[0]
        seed_everything(cfg.seed, SEED_OFFSETS[name])
        st = Stage(name, agree(env, build), train, objective, teacher, SEED_OFFSETS[name])
        metrics = fit(st, ctx, splits.num_classes, on_epoch)
        metrics = {"arch": arch, **metrics, "params": count_params(st.model),
                   "macs": count_macs(st.model, img_size), **extra}
        if env.is_main:
            save_checkpoint(run.checkpoint(name), st.model, spec(arch), name, metrics)
            run.update_metrics(name, metrics)
            run.progress(name).unlink(missing_ok=True)
        barrier(env)
        return st.model

    if dry_run:
        x, _ = next(iter(create_loader(ctx.train_data, cfg.student.train.batch_size, training=True, workers=0)))
        say(f"data: {cfg.data.name}, {len(splits.train)} train / {len(splits.val)} test images, "
            f"{splits.num_classes} classes, batches of {tuple(x.shape)}")

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
        if run is not None:
            say(f"\n[yellow]interrupted: continue with `gtcompress distill --resume --out {run.path}`")
        raise
    finally:
        if writer is not None:
            writer.close()
    return None if dry_run else run


def _tensorboard(run: RunDir):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run.path / "tensorboard"))


def _append_history(run: RunDir, record: dict[str, Any]) -> None:
    """Add an epoch's record, dropping records of that stage from this epoch on (left by an interrupted run)."""
    kept = [r for r in run.history() if not (r["stage"] == record["stage"] and r["epoch"] >= record["epoch"])]
    run.write_history(kept + [record])
