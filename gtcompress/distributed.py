"""PyTorch DDP under torchrun: process-group set-up, device choice, and collective helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from timm.utils import distribute_bn
from torch import nn

from .environment import BF16_FEATURES, cpu_features
from .errors import UserError, first_line

SETUP_TIMEOUT = timedelta(minutes=5)
T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job; world_size 1 without torchrun."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(requested: str, precision: str, local_rank: int = 0) -> torch.device:
    """`auto` -> CUDA when present; clear errors for CUDA, fp16 or bf16 that cannot be had. bf16 on a CPU needs
    its bf16 instructions: without them torch's CPU autocast converts around every op and buys nothing that fp32
    lacks but rounding."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UserError("--device cuda was requested but CUDA is not available", "use --device cpu or auto")
    device = torch.device(f"cuda:{local_rank}" if has_cuda and requested != "cpu" else "cpu")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("fp16 training needs a CUDA device", "use --precision fp32 on CPU")
    if precision == "bf16" and device.type == "cpu" and not set(BF16_FEATURES) & set(cpu_features()):
        raise UserError(
            f"bf16 training on a CPU needs its bf16 instructions ({' or '.join(BF16_FEATURES)}), which this one "
            "lacks: it would round to bf16 at fp32's cost",
            "use --precision fp32 here, or bf16 on a CUDA device",
        )
    return device


def init_distributed(device_request: str, precision: str) -> tuple[DistEnv, torch.device]:
    """Join the torchrun job if there is one (nccl on CUDA, gloo on CPU) and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, precision, local_rank)
    if world_size == 1:
        return DistEnv(), device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=SETUP_TIMEOUT, device_id=device if backend == "nccl" else None)
    return DistEnv(dist.get_rank(), local_rank, dist.get_world_size()), device


class AgreedError(UserError):
    """A UserError every rank of the job raises together, after `agree`: rank 0 alone prints it."""


def all_ranks_ok(env: DistEnv, error: UserError | None) -> None:
    """Raise on every rank if any rank failed a step (so no rank hangs in a later collective)."""
    if not env.enabled:
        if error is not None:
            raise error
        return
    errors: list[UserError | None] = [None] * env.world_size
    dist.all_gather_object(errors, error)
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if not failed:
        return
    rank, err = failed[0]
    if len(failed) == env.world_size and len({str(e) for _, e in failed}) == 1:
        raise AgreedError(err.message, err.hint)  # the same mistake everywhere: no rank to name
    raise AgreedError(f"rank {rank}: {err.message}", err.hint)


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's `obj` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(env: DistEnv, step: Callable[[], T]) -> T:
    """Run `step` on every rank; a UserError on any rank is raised on all of them (rank 0 reports it, naming the
    rank that failed unless every rank failed alike)."""
    result, error = None, None
    try:
        result = step()
    except UserError as e:
        error = e
    all_ranks_ok(env, error)
    return result


def raised_here(error: UserError, env: DistEnv) -> UserError:
    """Mark an error that leaves a distributed run without `agree`: only this rank has it, so it prints it."""
    if env.enabled:
        error.rank = env.rank
    return error


def sync_batchnorm(model: nn.Module, env: DistEnv, mode: str) -> None:
    """Make every rank's BatchNorm running statistics equal (timm's distribute_bn): their mean (`reduce`) or rank
    0's (`broadcast`). Each rank updates them from its own shard, so without this the ranks evaluate, and rank 0
    saves, different models."""
    if env.enabled:
        distribute_bn(model, env.world_size, reduce=mode == "reduce")


def all_reduce_sum(values: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


# What a collective raises on a rank whose peer died: that peer's own report names the cause.
_PEER_GONE = ("closed by peer", "reset by peer", "remote worker", "remote process", "communicator was aborted")


def report_rank_failure(error: BaseException) -> None:
    """A failed rank's one line on stderr under torchrun, and its traceback in torchrun's error file (its summary
    shows it). torchrun then stops the other ranks at once; a rank whose collective failed because a peer died
    says nothing."""
    if isinstance(error, dist.DistNetworkError) or any(s in str(error) for s in _PEER_GONE):
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(error)
    print(
        f"error: rank {os.environ.get('RANK', '?')} failed: {type(error).__name__}: {first_line(error)} "
        "(torchrun stops the other ranks; continue with --resume)",
        file=sys.stderr,
    )
