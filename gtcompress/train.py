"""One training loop for every stage: a model, an objective, an optional frozen teacher.

timm's optimizer/scheduler factories and EMA, channels_last, autocast on CUDA, DDP under torchrun,
evaluation and an atomic resumable checkpoint after every epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, NativeScaler, accuracy, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset

from .config import TrainConfig
from .data import Indexed, create_loader
from .distributed import DistEnv, agree, all_reduce_sum, barrier, sync_batchnorm
from .errors import UserError
from .files import torch_save
from .models import unwrap
from .objectives import Objective
from .rundir import RunDir
from .stream import epoch_batches

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Context:
    """What every stage of a run shares."""

    run: RunDir
    train_data: Dataset
    val_data: Dataset
    device: torch.device
    dist: DistEnv = field(default_factory=DistEnv)
    precision: str = "fp32"
    dist_bn: str = "reduce"  # how the ranks' BatchNorm statistics are made equal (distributed.sync_batchnorm)
    channels_last: bool = True
    seed: int = 0
    workers: int = 0
    console: Console = field(default_factory=Console)
    compile: bool = False
    # Training images under a deterministic transform: set, the frozen teacher's logits are computed on
    # them once per stage and reused every epoch instead of a teacher forward pass per step.
    cache_data: Dataset | None = None
    logits: dict[str, torch.Tensor] = field(default_factory=dict)  # cached teacher logits by teacher stage

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last and x.ndim == 4 else torch.contiguous_format
        return x.to(self.device, memory_format=fmt, non_blocking=True)


@dataclass
class Job:
    """One model to train: `teacher` (frozen) feeds its logits to `objective`."""

    name: str
    model: nn.Module
    train: TrainConfig
    objective: Objective
    teacher: nn.Module | None = None
    seed_offset: int = 0
    teacher_name: str | None = None  # the teacher's stage: its cached logits serve every job it teaches
    # what the model becomes before its first step, from training batches on its device (fake quantizers: qat.py)
    prepare: Callable[[nn.Module, Iterable[torch.Tensor]], nn.Module] | None = None


def seed_everything(*keys: int) -> None:
    """Seed Python, NumPy and torch from a tuple (run seed, stage, epoch, rank)."""
    seed = int(np.random.SeedSequence(list(keys)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer factory (weight decay off for biases and norms)."""
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    except (AssertionError, ValueError) as e:  # timm asserts on unknown optimizer names
        raise UserError(f"timm has no optimizer '{cfg.opt}' ({e})", "use sgd, adamw, lamb, ... (timm.optim)") from None


@torch.no_grad()
def dataset_logits(teacher: nn.Module, dataset: Dataset, ctx: Context, batch_size: int) -> torch.Tensor:
    """The teacher's fp32 logits for every image of `dataset` on CPU (each rank computes a shard): in the data
    set's order, or for a stream (no index to order by) rank after rank."""
    loader = create_loader(dataset, batch_size, training=False, workers=ctx.workers, dist=ctx.dist)
    batches = []
    for x, *_ in loader:
        with ctx.autocast():
            batches.append(teacher(ctx.to_device(x)).float())
    local = torch.cat(batches)
    if not ctx.dist.enabled:
        return local.cpu()
    world = ctx.dist.world_size
    counts = torch.zeros(world, dtype=torch.long, device=local.device)
    counts[ctx.dist.rank] = len(local)
    counts = all_reduce_sum(counts, ctx.dist).tolist()
    padded = torch.zeros(max(counts), local.shape[1], device=local.device)  # all_gather takes equal shapes
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    shards = [shard[:n].cpu() for shard, n in zip(gathered, counts)]
    if isinstance(dataset, IterableDataset):
        return torch.cat(shards)
    out = torch.empty(len(dataset), local.shape[1])
    for rank, shard in enumerate(shards):  # map-style shards are rank::world slices: interleave them back
        out[rank::world] = shard
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, ctx: Context, num_classes: int) -> dict[str, float]:
    """Top-1/top-5 (%) and CE loss over the whole test split, reduced over ranks."""
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # n, correct@1, correct@k, loss
    for x, y in loader:
        x, y = ctx.to_device(x), y.to(ctx.device)
        with ctx.autocast():
            logits = model(x)
        top1, topk = accuracy(logits.float(), y, topk=(1, k))
        n = y.shape[0]
        loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        sums += torch.stack([torch.tensor(n, device=ctx.device), top1 * n / 100, topk * n / 100, loss]).double()
    n, c1, ck, loss = all_reduce_sum(sums, ctx.dist).tolist()
    metrics = {"top1": 100 * c1 / n, "val_loss": loss / n}
    if num_classes >= 5:
        metrics["top5"] = 100 * ck / n
    return metrics


def _progress(ctx: Context) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=ctx.console,
        transient=True,
        # a live bar only on a terminal (logs get the per-epoch lines), and only from rank 0
        disable=not (ctx.dist.is_main and ctx.console.is_terminal),
    )


@dataclass
class Kit:
    """What training a job builds and uses: the model in its training layout, its teacher, data loaders, optimizer,
    scheduler, loss scaler and EMA."""

    model: nn.Module
    teacher: nn.Module | None
    loader: DataLoader
    val_loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: NativeScaler | None  # fp16 only: bf16 and fp32 need no loss scaling
    ema: ModelEmaV3 | None

    def stateful(self) -> dict[str, Any]:
        """The objects whose state a checkpoint keeps, by checkpoint key."""
        return {
            "model": unwrap(self.model),
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "ema": self.ema,
        }


@dataclass
class TrainState:
    """How far a job has got: written after every epoch (with its kit's state), read to resume."""

    epoch: int = 0
    train_seconds: float = 0.0
    train_images: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)

    def save(self, path: Path, kit: Kit) -> None:
        state = {key: obj.state_dict() if obj is not None else None for key, obj in kit.stateful().items()}
        torch_save({**state, **asdict(self)}, path)

    @classmethod
    def load(cls, path: Path, kit: Kit, device: torch.device) -> TrainState:
        state = torch.load(path, map_location=device, weights_only=True)
        for key, obj in kit.stateful().items():
            if obj is not None and state.get(key) is not None:
                obj.load_state_dict(state[key])
        return cls(**{f.name: state[f.name] for f in fields(cls)})


def _place(model: nn.Module, ctx: Context) -> nn.Module:
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if ctx.channels_last else model


def build(job: Job, ctx: Context) -> Kit:
    """The model, teacher, loaders, optimizer, scheduler, scaler and EMA of a job, on its device."""
    cfg = job.train
    teacher = _place(job.teacher, ctx).eval().requires_grad_(False) if job.teacher is not None else None
    loader = create_loader(
        ctx.train_data if isinstance(ctx.train_data, IterableDataset) else Indexed(ctx.train_data),
        cfg.batch_size,
        training=True,
        workers=ctx.workers,
        seed=ctx.seed + job.seed_offset,
        dist=ctx.dist,
        pin_memory=ctx.device.type == "cuda",
    )
    model = _place(job.model, ctx)
    if job.prepare is not None:
        model = job.prepare(model, (ctx.to_device(x) for x, *_ in loader))
    optimizer = make_optimizer(model, cfg)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=cfg.sched,
        num_epochs=cfg.epochs,
        decay_milestones=list(cfg.decay_milestones),
        decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr,
        warmup_epochs=cfg.warmup_epochs,
        step_on_epochs=False,
        updates_per_epoch=len(loader),
    )
    return Kit(
        model,
        teacher,
        loader,
        _val_loader(job, ctx),
        optimizer,
        scheduler,
        NativeScaler(ctx.device.type) if ctx.precision == "fp16" else None,
        ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None,
    )


def score(model: nn.Module, job: Job, ctx: Context, num_classes: int) -> dict[str, float]:
    """`model`'s test metrics, evaluated as `job`'s epochs are."""
    return evaluate(_place(model, ctx), _val_loader(job, ctx), ctx, num_classes)


def _val_loader(job: Job, ctx: Context) -> DataLoader:
    return create_loader(ctx.val_data, job.train.batch_size * 2, training=False, workers=ctx.workers, dist=ctx.dist)


def _check_batch(job: Job, ctx: Context) -> None:
    if job.train.batch_size % ctx.dist.world_size:
        raise UserError(
            f"batch size {job.train.batch_size} is not divisible by the world size {ctx.dist.world_size}",
            "pick a batch size that is a multiple of the number of processes",
        )


def _wrap(model: nn.Module, ctx: Context) -> nn.Module:
    """DDP under torchrun, then torch.compile if asked: the module the training steps call."""
    if ctx.dist.enabled:
        model = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
    return torch.compile(model) if ctx.compile else model


def fit(job: Job, ctx: Context, num_classes: int, on_epoch: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train `job` for its epochs, resuming from its last completed epoch; returns final metrics.

    `on_epoch` gets each epoch's history record (rank 0 only) after its checkpoint is safely written.
    """
    if job.train.epochs == 0:
        return {**score(job.model, job, ctx, num_classes), "epochs": 0, "train_seconds": 0.0}
    kit = agree(ctx.dist, lambda: _check_batch(job, ctx) or build(job, ctx))
    state, progress = TrainState(), ctx.run.progress(job.name)
    if progress.exists():
        state = TrainState.load(progress, kit, ctx.device)
        if ctx.dist.is_main:
            ctx.console.print(f"{job.name}: resuming after epoch {state.epoch}/{job.train.epochs}")
    cache = None
    if kit.teacher is not None and ctx.cache_data is not None and state.epoch < job.train.epochs:
        cache = _cached_logits(job, kit.teacher, ctx)
    epoch = Epoch(job, kit, _wrap(kit.model, ctx), cache, ctx)
    with _progress(ctx) as bar:
        for index in range(state.epoch, job.train.epochs):
            record = epoch.run(index, bar, num_classes, state)
            if ctx.dist.is_main:
                state.save(progress, kit)
                on_epoch(record)
                _say_epoch(job, record, ctx)
            barrier(ctx.dist)
    job.model = kit.ema.module if kit.ema is not None else kit.model
    return {
        **state.metrics,
        "epochs": job.train.epochs,
        "train_seconds": state.train_seconds,
        "images_per_second": state.train_images / max(state.train_seconds, 1e-9),
    }


def _cached_logits(job: Job, teacher: nn.Module, ctx: Context) -> torch.Tensor:
    """The frozen teacher's logits on the cache images: computed once per teacher stage of a run, so several
    students of one teacher share them."""
    if job.teacher_name is None:
        return dataset_logits(teacher, ctx.cache_data, ctx, job.train.batch_size * 2)
    if job.teacher_name not in ctx.logits:
        ctx.logits[job.teacher_name] = dataset_logits(teacher, ctx.cache_data, ctx, job.train.batch_size * 2)
    return ctx.logits[job.teacher_name]


def _say_epoch(job: Job, record: dict[str, Any], ctx: Context) -> None:
    ctx.console.print(
        f"{job.name} epoch {record['epoch']}/{job.train.epochs}: loss {record['train_loss']:.4f}  "
        f"top1 {record['top1']:.2f}%  {record['images_per_second']:.0f} img/s  {record['seconds']:.1f}s"
    )


@dataclass
class Epoch:
    """One training pass and its evaluation, for a built job."""

    job: Job
    kit: Kit
    step_model: nn.Module  # the (DDP-wrapped, compiled) module the steps call
    cache: torch.Tensor | None  # the teacher's logits by sample index, or None: a forward pass per step
    ctx: Context

    def run(self, index: int, bar: Progress, num_classes: int, state: TrainState) -> dict[str, Any]:
        """Train epoch `index`, evaluate, advance `state`; returns the epoch's history record."""
        ctx, kit = self.ctx, self.kit
        seed_everything(ctx.seed, self.job.seed_offset, index, ctx.dist.rank)
        if isinstance(kit.loader.dataset, IterableDataset):  # the reader reshuffles its shards by epoch
            kit.loader.dataset.set_epoch(index)
        else:
            kit.loader.sampler.set_epoch(index)
        task = bar.add_task(f"{self.job.name} {index + 1}/{self.job.train.epochs}", total=len(kit.loader), status="")
        terms, seconds, images = self.train(
            index, lambda s: bar.update(task, advance=1, **({"status": s} if s else {}))
        )
        bar.remove_task(task)
        sync_batchnorm(kit.model, ctx.dist, ctx.dist_bn)  # before evaluation and checkpoint: the saved model
        if kit.ema is not None:
            sync_batchnorm(kit.ema.module, ctx.dist, ctx.dist_bn)
        state.epoch, state.train_seconds, state.train_images = (
            index + 1,
            state.train_seconds + seconds,
            state.train_images + images,
        )
        state.metrics = evaluate(kit.ema.module if kit.ema is not None else kit.model, kit.val_loader, ctx, num_classes)
        return {
            "stage": self.job.name,
            "epoch": index + 1,
            "train_loss": terms.pop("loss"),
            **{f"train_{k}": v for k, v in terms.items()},
            **state.metrics,
            "lr": kit.optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "images_per_second": images / seconds,
        }

    def teacher_logits(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        """The teacher's logits for this batch: cached by sample index, or a forward pass (None: no teacher)."""
        if self.cache is not None:
            return self.cache[idx].to(self.ctx.device, non_blocking=True)
        if self.kit.teacher is None:
            return None
        with torch.no_grad():
            return self.kit.teacher(x)

    def step(self, loss: torch.Tensor) -> None:
        """Backward, clip and update: timm's NativeScaler on fp16, a plain step otherwise."""
        kit, clip = self.kit, self.job.train.clip_grad
        kit.optimizer.zero_grad(set_to_none=True)
        if kit.scaler is not None:
            kit.scaler(loss, kit.optimizer, clip_grad=clip, parameters=self.step_model.parameters())
            return
        loss.backward()
        if clip:
            dispatch_clip_grad(self.step_model.parameters(), clip)
        kit.optimizer.step()

    def train(self, epoch: int, tick: Callable[[str | None], None]) -> tuple[dict[str, float], float, float]:
        """One pass over the loader; returns mean loss terms, seconds and images seen (all ranks)."""
        ctx, kit = self.ctx, self.kit
        self.step_model.train()
        steps, sums, images, start = len(kit.loader), {}, 0, time.perf_counter()
        for i, (x, y, *idx) in enumerate(epoch_batches(kit.loader, steps)):  # map-style batches carry sample indices
            idx = idx[0] if idx else None
            x, y = ctx.to_device(x), y.to(ctx.device, non_blocking=True)
            with ctx.autocast():
                logits = self.step_model(x)
                t_logits = self.teacher_logits(x, idx)
            terms = self.job.objective(logits, t_logits, y, epoch + i / steps)
            self.step(terms["loss"])
            updates = epoch * steps + i + 1
            kit.scheduler.step_update(num_updates=updates)
            if kit.ema is not None:
                kit.ema.update(unwrap(self.step_model), step=updates)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach().float()
            images += y.shape[0]
            tick(self._status(sums, i, steps, epoch, images / (time.perf_counter() - start)))
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        return self._totals(sums, steps, images, time.perf_counter() - start)

    def _status(self, sums: dict[str, torch.Tensor], i: int, steps: int, epoch: int, rate: float) -> str | None:
        """The progress bar's text every 10 steps, after checking that the loss is still finite."""
        if i % 10 != 9 and i != steps - 1:
            return None
        mean_loss = sums["loss"].item() / (i + 1)
        if not math.isfinite(mean_loss):
            fix = "lower --lr" + (", or train with --precision fp32" if self.ctx.precision != "fp32" else "")
            raise UserError(f"{self.job.name}: the loss became {mean_loss} in epoch {epoch + 1}", fix)
        return f"loss {mean_loss:.3f}  {rate:.0f} img/s"

    def _totals(
        self, sums: dict[str, torch.Tensor], steps: int, images: int, seconds: float
    ) -> tuple[dict[str, float], float, float]:
        """Mean loss terms over every rank's steps, the epoch's seconds and all ranks' images."""
        ctx, names = self.ctx, sorted(sums)
        totals = torch.stack([sums[n] for n in names] + [torch.tensor(float(images), device=ctx.device)]).double()
        divisors = torch.tensor(
            [steps * ctx.dist.world_size] * len(names) + [1.0], device=ctx.device, dtype=torch.float64
        )
        *means, total_images = (all_reduce_sum(totals, ctx.dist) / divisors).tolist()
        return dict(zip(names, means)), seconds, total_images
