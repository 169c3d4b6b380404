"""One training loop for every stage: a model, an objective, an optional frozen teacher.

timm's optimizer/scheduler factories and EMA, channels_last, autocast on CUDA, DDP under torchrun,
evaluation and an atomic resumable checkpoint after every epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, accuracy, dispatch_clip_grad
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .config import TrainConfig
from .data import create_loader
from .distributed import DistEnv, all_reduce_sum, barrier
from .errors import UserError
from .objectives import Objective
from .models import unwrap
from .rundir import RunDir, torch_save

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
    channels_last: bool = True
    seed: int = 0
    workers: int = 0
    console: Console = field(default_factory=Console)
    compile: bool = False
    # Training images under a deterministic transform: set, the frozen teacher's logits are computed on
    # them once per stage and reused every epoch instead of a teacher forward pass per step.
    cache_data: Dataset | None = None

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


def seed_everything(*parts: int) -> None:
    """Seed Python, NumPy and torch from a tuple (run seed, stage, epoch, rank)."""
    seed = int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """timm's optimizer factory (weight decay off for biases and norms)."""
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum)
    except (AssertionError, ValueError) as e:  # timm asserts on unknown optimizer names
        raise UserError(f"timm has no optimizer '{cfg.opt}' ({e})", "use sgd, adamw, lamb, ... (timm.optim)") from None


class Indexed(Dataset):
    """(image, label, index): lets a training step look up per-sample state such as cached logits."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        x, y = self.base[i]
        return x, y, i


@torch.no_grad()
def teacher_logits(teacher: nn.Module, dataset: Dataset, ctx: Context, batch_size: int) -> torch.Tensor:
    """The teacher's fp32 logits for every image of `dataset`, in order, on CPU (each rank computes a shard)."""
    loader = create_loader(dataset, batch_size, training=False, workers=ctx.workers, rank=ctx.dist.rank,
                           world_size=ctx.dist.world_size)
    parts = []
    for x, _ in loader:
        with ctx.autocast():
            parts.append(teacher(ctx.to_device(x)).float())
    local = torch.cat(parts)
    if not ctx.dist.enabled:
        return local.cpu()
    # Shards are rank::world slices; pad to equal length for all_gather, then interleave back.
    world, n = ctx.dist.world_size, len(dataset)
    rows = -(-n // world)
    padded = torch.zeros(rows, local.shape[1], device=local.device)
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    out = torch.empty(n, local.shape[1])
    for rank, part in enumerate(gathered):
        out[rank::world] = part[: len(range(rank, n, world))].cpu()
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
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"), console=ctx.console, transient=True,
        # a live bar only on a terminal (logs get the per-epoch lines), and only from rank 0
        disable=not (ctx.dist.is_main and ctx.console.is_terminal),
    )


def fit(stage: Job, ctx: Context, num_classes: int, on_epoch: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train `stage` for its epochs, resuming from its last completed epoch; returns final metrics.

    `on_epoch` gets each epoch's history record (rank 0 only) after its checkpoint is safely written.
    """
    cfg = stage.train
    model = stage.model.to(ctx.device)
    if ctx.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = stage.teacher
    if teacher is not None:
        teacher = teacher.to(ctx.device).eval().requires_grad_(False)
        if ctx.channels_last:
            teacher = teacher.to(memory_format=torch.channels_last)
    val_loader = create_loader(ctx.val_data, cfg.batch_size * 2, training=False, workers=ctx.workers,
                               rank=ctx.dist.rank, world_size=ctx.dist.world_size)
    if cfg.epochs == 0:
        return {**evaluate(model, val_loader, ctx, num_classes), "epochs": 0, "train_seconds": 0.0}
    if cfg.batch_size % ctx.dist.world_size:
        raise UserError(f"batch size {cfg.batch_size} is not divisible by the world size {ctx.dist.world_size}",
                        "pick a batch size that is a multiple of the number of processes")

    loader = create_loader(Indexed(ctx.train_data), cfg.batch_size, training=True, workers=ctx.workers,
                           seed=ctx.seed + stage.seed_offset, rank=ctx.dist.rank, world_size=ctx.dist.world_size,
                           pin_memory=ctx.device.type == "cuda")
    optimizer = make_optimizer(model, cfg)
    scheduler, _ = create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs, min_lr=cfg.min_lr,
                                       warmup_epochs=cfg.warmup_epochs, step_on_epochs=False,
                                       updates_per_epoch=len(loader))
    scaler = torch.amp.GradScaler("cuda") if ctx.precision == "fp16" else None
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    start_epoch, train_seconds, train_images, last_metrics = 0, 0.0, 0.0, {}

    progress_path = ctx.run.progress(stage.name)
    if progress_path.exists():
        state = torch.load(progress_path, map_location=ctx.device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        start_epoch, train_seconds, last_metrics = state["epoch"], state["train_seconds"], state["metrics"]
        train_images = state["train_images"]
        if ctx.dist.is_main:
            ctx.console.print(f"{stage.name}: resuming after epoch {start_epoch}/{cfg.epochs}")

    ddp = DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None) \
        if ctx.dist.enabled else model
    if ctx.compile:
        ddp = torch.compile(ddp)
    eval_model = ema.module if ema is not None else model
    cache = None
    if teacher is not None and ctx.cache_data is not None and start_epoch < cfg.epochs:
        cache = teacher_logits(teacher, ctx.cache_data, ctx, cfg.batch_size * 2)

    with _progress(ctx) as bar:
        for epoch in range(start_epoch, cfg.epochs):
            seed_everything(ctx.seed, stage.seed_offset, epoch, ctx.dist.rank)
            loader.sampler.set_epoch(epoch)
            task = bar.add_task(f"{stage.name} {epoch + 1}/{cfg.epochs}", total=len(loader), status="")
            terms, seconds, images = _train_epoch(stage, ddp, teacher, cache, loader, optimizer, scheduler, scaler,
                                                  ema, epoch, ctx, lambda s: bar.update(task, advance=1, **({"status": s} if s else {})))
            bar.remove_task(task)
            train_seconds += seconds
            train_images += images
            last_metrics = evaluate(eval_model, val_loader, ctx, num_classes)
            record = {
                "stage": stage.name, "epoch": epoch + 1, "train_loss": terms.pop("loss"),
                **{f"train_{k}": v for k, v in terms.items()}, **last_metrics,
                "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                "images_per_second": images / seconds,
            }
            if ctx.dist.is_main:
                torch_save({
                    "epoch": epoch + 1, "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "ema": ema.state_dict() if ema else None, "train_seconds": train_seconds,
                    "train_images": train_images, "metrics": last_metrics,
                }, progress_path)
                on_epoch(record)
                ctx.console.print(
                    f"{stage.name} epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}  "
                    f"top1 {last_metrics['top1']:.2f}%  {record['images_per_second']:.0f} img/s  {seconds:.1f}s"
                )
            barrier(ctx.dist)
    if ema is not None:
        stage.model = ema.module
    return {**last_metrics, "epochs": cfg.epochs, "train_seconds": train_seconds,
            "images_per_second": train_images / max(train_seconds, 1e-9)}


def _train_epoch(stage, model, teacher, cache, loader, optimizer, scheduler, scaler, ema, epoch, ctx, tick):
    """One pass over the loader; returns mean loss terms, seconds and images seen (all ranks).

    The teacher's logits come from `cache` (indexed by sample) when given, else from a forward pass.
    """
    model.train()
    steps = len(loader)
    sums: dict[str, torch.Tensor] = {}
    images = 0
    start = time.perf_counter()
    for step, (x, y, idx) in enumerate(loader):
        x, y = ctx.to_device(x), y.to(ctx.device, non_blocking=True)
        with ctx.autocast():
            logits = model(x)
            if cache is not None:
                t_logits = cache[idx].to(ctx.device, non_blocking=True)
            elif teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(x)
            else:
                t_logits = None
        terms = stage.objective(logits, t_logits, y, epoch + step / steps)
        loss = terms["loss"]
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if stage.train.clip_grad:
                scaler.unscale_(optimizer)
        else:
            loss.backward()
        if stage.train.clip_grad:
            dispatch_clip_grad(model.parameters(), stage.train.clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        updates = epoch * steps + step + 1
        scheduler.step_update(num_updates=updates)
        if ema is not None:
            ema.update(unwrap(model), step=updates)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + value.detach().float()
        images += y.shape[0]
        if step % 10 == 9 or step == steps - 1:
            mean_loss = sums["loss"].item() / (step + 1)
            if not math.isfinite(mean_loss):
                fix = "lower --lr" + (", or train with --precision fp32" if ctx.precision != "fp32" else "")
                raise UserError(f"{stage.name}: the loss became {mean_loss} in epoch {epoch + 1}", fix)
            tick(f"loss {mean_loss:.3f}  {images / (time.perf_counter() - start):.0f} img/s")
        else:
            tick(None)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    seconds = time.perf_counter() - start
    names = sorted(sums)
    totals = torch.stack([sums[n] for n in names] + [torch.tensor(float(images), device=ctx.device)]).double()
    totals = all_reduce_sum(totals, ctx.dist) / torch.tensor([steps * ctx.dist.world_size] * len(names) + [1.0],
                                                             device=ctx.device, dtype=torch.float64)
    *means, total_images = totals.tolist()
    return dict(zip(names, means)), seconds, total_images
