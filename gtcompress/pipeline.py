"""The distill pipeline: Standard Teacher -> Generous Teacher -> student(s), in one resumable run directory.

`resolve` makes the run's one frozen `Run` first; then each stage, in `stages(cfg)`'s order, is trained (or loaded
where an earlier attempt finished it) and recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from torch import nn
from torch.utils.data import Dataset

from .config import MatchScale, RunConfig, dump_config
from .data import build_transform, create_loader, loader_workers, transformed
from .distributed import AgreedError, agree, barrier, init_distributed, raised_here, shutdown
from .errors import UserError
from .files import write_text
from .logit_scale import measure_scale, resolve_scale, student_temperature, with_scale
from .models import ModelSpec, count_macs, count_params, default_normalization, load_model, save_checkpoint
from .records import LogitScale, StageRecord
from .resolve import Run, load_resumed, resolve, resumed
from .rundir import RunDir
from .stages import Models, Stage, qat_copy, stages
from .train import Context, Job, dataset_logits, fit, make_optimizer, score, seed_everything
from .typed import with_values


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
    saved = load_resumed(out, cfg, given or set()) if resume else None
    cfg = saved[0] if saved else cfg or RunConfig()
    env, device = init_distributed(cfg.device, cfg.precision)
    try:
        run = (
            resumed(cfg, saved[1], env, device, console) if saved else resolve(cfg, env, device, console, out, dry_run)
        )
        return _stages(run)
    except UserError as e:
        raise e if isinstance(e, AgreedError) else raised_here(e, env)
    finally:
        shutdown(env)


def add_qat(run: RunDir, epochs: int, stage: str, console: Console | None = None) -> str:
    """`export RUN --qat EPOCHS`: the finished run gains its students' quantization-aware copies (its saved
    configuration records the epochs, as if distill had been given --qat), trained by resuming it. Returns the
    name of `stage`'s copy. A run whose QAT began with other epochs is refused: they would not be the ones
    recorded."""
    saved = run.saved_config()
    copy = qat_copy(saved, stage)  # before anything is written: `stage` may be no student
    if saved.student.qat.epochs != epochs:
        copies, records = [s.name for s in stages(saved) if s.qat], run.stage_records()
        begun = [name for name in copies if name in records or run.progress(name).exists()]
        if begun:
            raise UserError(
                f"{run.path} already trains {begun[0]} with {saved.student.qat.epochs} QAT epochs",
                f"pass --qat {saved.student.qat.epochs}, or distill a new run with --qat {epochs}",
            )
        write_text(run.config, dump_config(with_values(saved, {"student.qat.epochs": epochs})))
    run_distill(out=run.path, resume=True, console=console)
    return copy


@dataclass
class _Setup:
    """What every stage of one run shares: the run, the training context and the checkpoints' model spec."""

    run: Run
    ctx: Context
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_eval: Dataset  # the training images under the evaluation transform (teachers' logits on them)

    @property
    def cfg(self) -> RunConfig:
        return self.run.cfg

    def spec(self, arch: str) -> ModelSpec:
        s = self.run.splits
        names = tuple(s.class_names)
        return ModelSpec(arch, s.num_classes, self.img_size, self.mean, self.std, names, self.cfg.small_stem)


def _setup(run: Run) -> _Setup:
    """The training context of a resolved run: its transforms, data, and the teachers' logit cache."""
    cfg, splits = run.cfg, run.splits
    if splits.skipped:
        names = ", ".join(Path(p).name for p in splits.skipped[:10])
        more = ", ..." if len(splits.skipped) > 10 else ""
        run.say(f"warning: skipped {len(splits.skipped)} unreadable image(s): {names}{more}")
    if splits.eval_split:
        run.say(f"evaluating on the '{splits.eval_split}' split of {cfg.data.name}")
    img_size = cfg.data.img_size or splits.img_size
    teacher_mean, teacher_std = default_normalization(cfg.teacher.arch)
    mean, std = tuple(cfg.data.mean or teacher_mean), tuple(cfg.data.std or teacher_std)
    eval_transform = build_transform(cfg.data, splits, img_size, mean, std, training=False)
    cache = cfg.cache_teacher_logits if cfg.cache_teacher_logits is not None else not cfg.data.augment_train
    cache = cache and not splits.streaming  # cached logits are looked up by sample index: streams have none
    train_eval = transformed(splits.train, eval_transform)
    ctx = Context(
        run=run.dir,
        device=run.device,
        dist=run.env,
        precision=cfg.precision,
        dist_bn=cfg.dist_bn,
        channels_last=cfg.channels_last,
        seed=cfg.seed,
        workers=loader_workers(cfg.data, splits),
        console=run.console,
        compile=cfg.compile,
        train_data=transformed(splits.train, build_transform(cfg.data, splits, img_size, mean, std, training=True)),
        val_data=transformed(splits.val, eval_transform),
        # with augmentation, cached logits are the teacher's on the un-augmented image: an approximation
        cache_data=train_eval if cache else None,
    )
    return _Setup(run, ctx, img_size, mean, std, train_eval)


def _describe(stage: Stage, setup: _Setup, models: Models, say: Callable[..., None]) -> nn.Module:
    """--dry-run: build the stage's model and optimizer and say what training would do."""
    cfg, env = setup.cfg, setup.ctx.dist
    model = agree(env, lambda: stage.build(cfg, setup.run.splits.num_classes, models))
    train = stage.train(cfg)
    optimizer = make_optimizer(model, train)
    say(
        f"{stage.name}: {stage.arch(cfg)}, {count_params(model) / 1e6:.2f}M params, "
        f"{count_macs(model, setup.img_size) / 1e6:.1f} MMACs at {setup.img_size}px; {train.epochs} epochs of "
        f"{type(optimizer).__name__} lr {train.lr}, global batch {train.batch_size}, {cfg.precision} on "
        f"{setup.ctx.device}"
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
    model = agree(env, lambda: stage.build(cfg, setup.run.splits.num_classes, models))
    scaled, scale = _scaled(stage, cfg, run)
    job = Job(
        stage.name,
        model,
        stage.train(cfg),
        stage.objective(scaled),
        models[stage.teacher] if stage.teacher else None,
        stage.seed_offset,
        stage.teacher,
        stage.prepare(cfg),
    )
    metrics = fit(job, setup.ctx, setup.run.splits.num_classes, on_epoch)
    model = job.model
    if stage.finish is not None:  # the saved model is another: its own accuracy is recorded
        model = stage.finish(cfg, setup.run.splits.num_classes, job.model)
        trained = metrics["top1"]
        metrics = {**metrics, **score(model, job, setup.ctx, setup.run.splits.num_classes), "trained_top1": trained}
    arch = stage.arch(cfg)
    record = StageRecord(
        arch=arch,
        **stage.identity(),
        **metrics,
        params=count_params(model),
        macs=count_macs(model, setup.img_size),
        num_classes=setup.run.splits.num_classes,
        test_images=len(setup.run.splits.val) if not setup.run.splits.streaming else None,
        **stage.record(cfg),
        **scale,
        logit_scale=_logit_scale(stage, model, setup) if stage.role != "student" else None,
    )
    if env.is_main:
        save_checkpoint(run.checkpoint(stage.name), model, setup.spec(arch), stage.name, record.as_json())
        run.write_stage(stage.name, record)
        run.progress(stage.name).unlink(missing_ok=True)
    barrier(env)
    return model


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
    if not setup.run.splits.streaming:  # a stream's images have no index to gather them back in order by
        train = ctx.logits.get(stage.name)
        train = dataset_logits(model, setup.train_eval, ctx, batch) if train is None else train
        if ctx.cache_data is not None:
            ctx.logits[stage.name] = train
    return measure_scale(dataset_logits(model, ctx.val_data, ctx, batch), train, student_temperature(setup.cfg))


def _stages(run: Run) -> RunDir | None:
    """Train (or, in a dry run, describe) every stage of the run in order; returns its directory."""
    cfg, say, setup = run.cfg, run.say, _setup(run)
    if run.dir is None:  # a dry run
        x, _ = next(iter(create_loader(setup.ctx.train_data, cfg.student.train.batch_size, training=True, workers=0)))
        say(
            f"data: {cfg.data.name}, {len(run.splits.train)} train / {len(run.splits.val)} test images, "
            f"{run.splits.num_classes} classes, batches of {tuple(x.shape)}"
        )
    writer = _tensorboard(run.dir) if cfg.tensorboard and run.env.is_main and run.dir is not None else None
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
                if run.dir is None
                else _train(stage, setup, models, lambda r: _on_epoch(run.dir, writer, r), say)
            )
    except KeyboardInterrupt:
        if run.dir is not None:
            say(f"\ninterrupted: continue with `gtcompress distill --resume --out {run.dir.path}`")
        raise
    finally:
        if writer is not None:
            writer.close()
    return run.dir


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
