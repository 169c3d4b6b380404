"""The distill pipeline: Standard Teacher -> Generous Teacher -> student(s), in one resumable run directory."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from . import terminal
from .candidates import candidate_table, measure, within_budget
from .config import MatchScale, RunConfig, differences, dump_config
from .data import Splits, build_transform, create_loader, load_splits, loader_workers, transformed
from .distributed import AgreedError, DistEnv, agree, barrier, broadcast_object, init_distributed, raised_here, shutdown
from .environment import command_line, device_name, versions
from .errors import UserError
from .logit_scale import measure_scale, resolve_scale, student_temperature, with_scale
from .models import (
    ModelSpec,
    base_arch,
    count_macs,
    count_params,
    default_normalization,
    load_model,
    model_source,
    resolve_model_name,
    save_checkpoint,
)
from .records import CandidateCheck, LogitScale, StageRecord
from .rundir import RunDir, mark_latest, new_run_path, resolve_run, write_text
from .stages import Models, Stage, recorded_stages, stages
from .stream import stream_workers
from .train import Context, Job, dataset_logits, fit, make_optimizer, seed_everything


def resolve_names(cfg: RunConfig) -> list[str]:
    """Replace the configured model names by exact timm names; return how each was resolved."""
    notes = []
    for block in (cfg.teacher, cfg.generous):
        if block.arch is not None:
            block.arch, note = resolve_model_name(block.arch)
            notes.append(note)
    students = [resolve_model_name(arch) for arch in cfg.student.arch]
    cfg.student.arch = [name for name, _ in students]
    return [note for note in [*notes, *(note for _, note in students)] if note]


def environment(env: DistEnv, device: torch.device, requested: dict[str, str], splits: Splits) -> dict[str, Any]:
    """What config.yaml records about where and how the run was started, and the split it is evaluated on."""
    return {
        "requested": requested,
        "eval_split": splits.eval_split or "test",
        "device": str(device),
        "device_name": device_name(device),
        "world_size": env.world_size,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "versions": versions(),
    }


def _load_resumed(out: Path | None, requested: RunConfig | None, keys: set[str]) -> tuple[RunConfig, RunDir]:
    """The run to continue and its saved configuration; `keys` of `requested` (the command line's) must agree."""
    run = resolve_run(out)
    saved = run.saved_config()
    recorded_stages(run, saved)  # a damaged metrics.json or history.jsonl is refused now, not after an epoch
    run.history()
    if requested is not None and keys:
        resolve_names(requested)
        diffs = differences(saved, requested, keys)
        if diffs:
            raise UserError(
                f"--resume: options differ from the run's saved configuration: {'; '.join(diffs)}",
                "drop those options, or start a new run without --resume",
            )
    return saved, run


def _new_run(out: Path | None) -> RunDir:
    """Rank 0's choice of a fresh run directory."""
    out = out or new_run_path()
    if RunDir(out).config.exists():
        raise UserError(f"{out} already holds a run", "continue it with --resume, or choose another --out")
    return RunDir(out)


def _check(cfg: RunConfig) -> None:
    if cfg.teacher.pretrained and cfg.teacher.checkpoint:
        raise UserError("--pretrained and --teacher-checkpoint both given", "pick one source of teacher weights")
    if model_source(cfg.teacher.arch) and cfg.teacher.checkpoint:
        raise UserError(
            f"--teacher {cfg.teacher.arch} brings its weights and --teacher-checkpoint was given too",
            "pick one source of teacher weights",
        )
    gt_arch = base_arch(cfg.generous.arch or cfg.teacher.arch)
    if cfg.generous.init == "standard" and gt_arch != base_arch(cfg.teacher.arch):
        raise UserError(
            "--gt-init standard needs the Generous Teacher to share the teacher's architecture",
            "drop generous.arch or use --gt-init scratch",
        )
    scale = cfg.student.method_config.teacher_scale
    teachers = [s.name for s in stages(cfg) if s.role != "student" and s.skip(cfg) is None]
    if isinstance(scale, MatchScale) and scale.match not in teachers:
        raise UserError(
            f"teacher_scale match:{scale.match}: this run has no such teacher stage",
            f"match one of {', '.join(teachers)}",
        )


def run_distill(
    cfg: RunConfig | None = None,
    out: Path | None = None,
    resume: bool = False,
    console: Console | None = None,
    dry_run: bool = False,
    given: set[str] | None = None,
) -> RunDir | None:
    """Run every stage of the pipeline, or resume the run in `out` with its saved configuration.

    On resume, `cfg` is the command line's configuration and `given` the keys it set: they must agree with the
    saved ones (re-running the starting command plus --resume is fine). Under torchrun every rank calls this;
    rank 0 alone prints and writes. With `dry_run`, build the data, models and optimizers, report them and stop
    without writing anything (returns None).
    """
    console = console or Console()
    if resume:
        cfg, run = _load_resumed(out, cfg, given or set())
    cfg = cfg or RunConfig()
    env, device = init_distributed(cfg.device, cfg.precision)
    try:
        return _run(cfg, None if resume else out, run if resume else None, env, device, console, dry_run)
    except UserError as e:
        raise e if isinstance(e, AgreedError) else raised_here(e, env)
    finally:
        shutdown(env)


def _prepare(
    cfg: RunConfig, env: DistEnv, console: Console, say: Callable[..., None]
) -> tuple[Splits, CandidateCheck | None]:
    """Before anything is written: resolve the model names, check the configuration, load the data and, with a
    latency budget, time the candidate students on the target (rank 0) and keep those within it. Returns the
    data and the budget check's record."""
    for note in agree(env, lambda: resolve_names(cfg)):
        say(f"resolved {note}")
    agree(env, lambda: _check(cfg))
    splits = agree(env, lambda: load_splits(cfg.data))
    if splits.streaming:  # a rank without a training shard is refused here, before anything is written
        agree(env, lambda: stream_workers(splits.train, loader_workers(cfg.data, splits), env.world_size, quiet=True))
    if cfg.budget.latency_ms is None:
        return splits, None

    def check() -> CandidateCheck | None:
        if not env.is_main:
            return None
        result = measure(cfg, splits.num_classes, cfg.data.img_size or splits.img_size, say)
        console.print(candidate_table(result))
        return result

    result = broadcast_object(agree(env, check), env)
    kept = within_budget(result)  # every rank has the result: none fits is one error on all of them
    cfg.student.arch = kept
    return splits, result


def _start(
    cfg: RunConfig,
    out: Path | None,
    env: DistEnv,
    device: torch.device,
    say: Callable[..., None],
    requested: dict[str, Any],
    splits: Splits,
    candidates: CandidateCheck | None,
) -> RunDir:
    """Create the run directory and write config.yaml (and the latency check's candidates.json)."""
    run = agree(env, lambda: _new_run(out) if env.is_main else None)
    run = RunDir(broadcast_object(run.path if run else None, env))
    cfg.environment = environment(env, device, requested, splits)
    if env.is_main:
        write_text(run.config, dump_config(cfg))
        if candidates is not None:
            run.write_candidate_check(candidates)
        mark_latest(run.path)
    barrier(env)
    say(f"run directory: {run.path}")
    return run


@dataclass
class _Setup:
    """What every stage of one run shares: the data, the training context and the checkpoints' model spec."""

    cfg: RunConfig
    splits: Splits
    ctx: Context
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_eval: Dataset  # the training images under the evaluation transform (teachers' logits on them)

    def spec(self, arch: str) -> ModelSpec:
        s = self.splits
        names = tuple(s.class_names)
        return ModelSpec(arch, s.num_classes, self.img_size, self.mean, self.std, names, self.cfg.small_stem)


def _setup(
    cfg: RunConfig,
    run: RunDir | None,
    env: DistEnv,
    device: torch.device,
    console: Console,
    say: Callable[..., None],
    splits: Splits | None,
) -> _Setup:
    splits = splits or agree(env, lambda: load_splits(cfg.data))
    if splits.skipped:
        names = ", ".join(Path(p).name for p in splits.skipped[:10])
        say(
            f"warning: skipped {len(splits.skipped)} unreadable image(s): {names}"
            f"{', ...' if len(splits.skipped) > 10 else ''}"
        )
    if splits.eval_split:
        say(f"evaluating on the '{splits.eval_split}' split of {cfg.data.name}")
    img_size = cfg.data.img_size or splits.img_size
    teacher_mean, teacher_std = default_normalization(cfg.teacher.arch)
    mean, std = tuple(cfg.data.mean or teacher_mean), tuple(cfg.data.std or teacher_std)
    eval_transform = build_transform(cfg.data, splits, img_size, mean, std, training=False)
    cache = cfg.cache_teacher_logits if cfg.cache_teacher_logits is not None else not cfg.data.augment_train
    cache = cache and not splits.streaming  # cached logits are looked up by sample index: streams have none
    train_eval = transformed(splits.train, eval_transform)
    ctx = Context(
        run=run,
        device=device,
        dist=env,
        precision=cfg.precision,
        dist_bn=cfg.dist_bn,
        channels_last=cfg.channels_last,
        seed=cfg.seed,
        workers=loader_workers(cfg.data, splits),
        console=console,
        compile=cfg.compile,
        train_data=transformed(splits.train, build_transform(cfg.data, splits, img_size, mean, std, training=True)),
        val_data=transformed(splits.val, eval_transform),
        # with augmentation, cached logits are the teacher's on the un-augmented image: an approximation
        cache_data=train_eval if cache else None,
    )
    return _Setup(cfg, splits, ctx, img_size, mean, std, train_eval)


def _describe(stage: Stage, setup: _Setup, models: Models, say: Callable[..., None]) -> nn.Module:
    """--dry-run: build the stage's model and optimizer and say what training would do."""
    cfg, env = setup.cfg, setup.ctx.dist
    model = agree(env, lambda: stage.build(cfg, setup.splits.num_classes, models))
    train = stage.train(cfg)
    optimizer = make_optimizer(model, train)
    say(
        f"{stage.name}: {stage.arch(cfg)}, {count_params(model) / 1e6:.2f}M params, "
        f"{count_macs(model, setup.img_size) / 1e6:.1f} MMACs at {setup.img_size}px; {train.epochs} epochs of "
        f"{type(optimizer).__name__} lr {train.lr}, global batch {train.batch_size}"
    )
    return model


def _train(
    stage: Stage, setup: _Setup, models: Models, on_epoch: Callable[[dict[str, Any]], None], say: Callable[..., None]
) -> nn.Module:
    """Train one stage (or load it, when a previous attempt finished it) and record its metrics."""
    cfg, run, env = setup.cfg, setup.ctx.run, setup.ctx.dist
    done = run.stage_records().get(stage.name)
    if done is not None and run.checkpoint(stage.name).exists():
        say(f"{stage.name}: complete (top-1 {done.top1:.2f}%), loaded from {run.checkpoint(stage.name).name}")
        return load_model(run.checkpoint(stage.name))[0]
    seed_everything(cfg.seed, stage.seed_offset)
    model = agree(env, lambda: stage.build(cfg, setup.splits.num_classes, models))
    scaled, scale = _scaled(stage, cfg, run)
    job = Job(
        stage.name,
        model,
        stage.train(cfg),
        stage.objective(scaled),
        models[stage.teacher] if stage.teacher else None,
        stage.seed_offset,
        stage.teacher,
    )
    metrics = fit(job, setup.ctx, setup.splits.num_classes, on_epoch)
    arch = stage.arch(cfg)
    record = StageRecord(
        arch=arch,
        **stage.identity(),
        **metrics,
        params=count_params(job.model),
        macs=count_macs(job.model, setup.img_size),
        **stage.record(cfg),
        **scale,
        logit_scale=_logit_scale(stage, job.model, setup) if stage.role != "student" else None,
    )
    if env.is_main:
        save_checkpoint(run.checkpoint(stage.name), job.model, setup.spec(arch), stage.name, record.as_json())
        run.write_stage(stage.name, record)
        run.progress(stage.name).unlink(missing_ok=True)
    barrier(env)
    return job.model


def _scaled(stage: Stage, cfg: RunConfig, run: RunDir) -> tuple[RunConfig, dict[str, Any]]:
    """A student's configuration with its teacher_scale resolved to a number, and what its record says of it."""
    configured = cfg.student.method_config.teacher_scale
    if stage.role != "student" or stage.teacher is None or configured == 1.0:
        return cfg, {}
    scale = resolve_scale(cfg, stage.teacher, run.stage_records())
    match = configured.match if isinstance(configured, MatchScale) else None
    return with_scale(cfg, scale), {"teacher_scale": scale, "teacher_scale_match": match}


def _logit_scale(stage: Stage, model: nn.Module, setup: _Setup) -> LogitScale:
    """A teacher's logit scale on the test split and its median per-image std on the training split; with cached
    teacher logits, the training split's logits are its students' cache."""
    ctx, batch = setup.ctx, 2 * stage.train(setup.cfg).batch_size
    model.eval()
    train = None
    if not setup.splits.streaming:  # a stream's images have no index to gather them back in order by
        train = ctx.logits.get(stage.name)
        train = dataset_logits(model, setup.train_eval, ctx, batch) if train is None else train
        if ctx.cache_data is not None:
            ctx.logits[stage.name] = train
    return measure_scale(dataset_logits(model, ctx.val_data, ctx, batch), train, student_temperature(setup.cfg))


def _run(
    cfg: RunConfig,
    out: Path | None,
    run: RunDir | None,
    env: DistEnv,
    device: torch.device,
    console: Console,
    dry_run: bool,
) -> RunDir | None:
    say = functools.partial(terminal.say, to=console) if env.is_main else (lambda line: None)
    splits = None
    if run is None:
        requested = {"teacher": cfg.teacher.arch, "student": cfg.student.arch}
        splits, candidates = _prepare(cfg, env, console, say)
        if not dry_run:
            run = _start(cfg, out, env, device, say, requested, splits, candidates)
    setup = _setup(cfg, run, env, device, console, say, splits)
    if dry_run:
        x, _ = next(iter(create_loader(setup.ctx.train_data, cfg.student.train.batch_size, training=True, workers=0)))
        say(
            f"data: {cfg.data.name}, {len(setup.splits.train)} train / {len(setup.splits.val)} test images, "
            f"{setup.splits.num_classes} classes, batches of {tuple(x.shape)}"
        )
    writer = _tensorboard(run) if cfg.tensorboard and env.is_main and run is not None else None
    models: Models = {}
    noted: set[str] = set()
    try:
        for stage in stages(cfg):
            reason = stage.skip(cfg)
            if reason is not None:
                if cfg.compare and reason not in noted:  # once per reason: a control and its student share it
                    say(f"{stage.name}: skipped ({reason})")
                    noted.add(reason)
                continue
            models[stage.name] = (
                _describe(stage, setup, models, say)
                if dry_run
                else _train(stage, setup, models, lambda r: _on_epoch(run, writer, r), say)
            )
    except KeyboardInterrupt:
        if run is not None:
            say(f"\ninterrupted: continue with `gtcompress distill --resume --out {run.path}`")
        raise
    finally:
        if writer is not None:
            writer.close()
    return None if dry_run else run


def _on_epoch(run: RunDir, writer: Any, record: dict[str, Any]) -> None:
    _append_history(run, record)
    if writer is not None:
        for key, value in record.items():
            if key not in ("stage", "epoch") and isinstance(value, (int, float)):
                writer.add_scalar(f"{record['stage']}/{key}", value, record["epoch"])
        writer.flush()


def _tensorboard(run: RunDir):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run.path / "tensorboard"))


def _append_history(run: RunDir, record: dict[str, Any]) -> None:
    """Add an epoch's record, dropping records of that stage from this epoch on (left by an interrupted run)."""
    kept = [r for r in run.history() if not (r["stage"] == record["stage"] and r["epoch"] >= record["epoch"])]
    run.write_history(kept + [record])
