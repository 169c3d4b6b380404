"""Streamed data under DDP: timm's readers (wds/, tfds/) give each rank and loader worker its own shards, and
every rank must still take the same number of steps, or DDP's collectives wait for the rank that stopped."""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Iterator, Sequence

from torch.utils.data import DataLoader, Dataset, IterableDataset

from .errors import UserError

log = logging.getLogger(__name__)


class Stream(IterableDataset):
    """Applies a transform to the images of a streamed (image, label) data set (timm's wds/ reader).

    timm's reader gives each rank and loader worker (reader) a disjoint share of the shards and the same number
    of samples, ceil(n / readers), repeating its own shards to make them up: equal steps on every rank as long as
    every reader has a shard (`stream_workers`); the training loop also takes exactly `len(loader)` batches.
    """

    def __init__(self, base: IterableDataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):
        for img, target in self.base:
            yield self.transform(img), target

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def set_loader_cfg(self, num_workers: int) -> None:
        self.base.set_loader_cfg(num_workers=num_workers)

    @property
    def shard_lengths(self) -> tuple[int, ...]:
        return shard_lengths(self.base)


def shard_lengths(dataset: Dataset) -> tuple[int, ...]:
    """The samples in each shard of a stream (or its `Stream`), where the reader knows them (wds/: `_info.json`)."""
    split = getattr(getattr(getattr(dataset, "base", dataset), "reader", None), "split_info", None)
    return tuple(getattr(split, "shard_lengths", ()))


def uneven_reads(shard_lengths: Sequence[int], readers: int) -> tuple[int, int]:
    """(extra, missed): the samples a stream read by `readers` (ranks × loader workers) reads again and leaves
    out, as timm's reader gives reader g the shards g, g + readers, … cut or repeated to ceil(n / readers)."""
    per = math.ceil(sum(shard_lengths) / readers)
    counts = [sum(shard_lengths[g::readers]) for g in range(readers)]
    return sum(per - c for c in counts if 0 < c < per), sum(c - per for c in counts if c > per)


def stream_workers(dataset: Dataset, workers: int, world_size: int, training: bool = True, quiet: bool = False) -> int:
    """Loader workers per rank for a stream, so that every reader (rank x worker) has a shard.

    timm's reader gives reader g the shards g, g + readers, ...: a reader without one reads nothing, and its rank
    would stop while the others still train (DDP then waits in a collective). Fewer training shards than ranks
    is an error; fewer than ranks x workers lowers the workers (for evaluation too: its reads are then exact
    when the shards are equal and divide by the ranks).
    """
    shards = len(shard_lengths(dataset))
    if not shards:  # the reader does not say (tfds/): as configured
        return workers
    if shards < world_size and training:
        raise UserError(
            f"the training stream has {shards} shard(s) for {world_size} ranks: a rank without a shard reads nothing",
            f"write at least {world_size} training shards (best: a multiple of ranks x loader workers), "
            "or run fewer ranks",
        )
    fit = max(1, shards // world_size)  # readers per rank; 0 workers is one reader, the rank itself
    if max(1, workers) <= fit:
        return workers
    fewer = fit if fit > 1 else 0
    if not quiet:  # rank 0 says it
        _warn_workers("training" if training else "validation", shards, world_size, workers, fewer)
    return fewer


@functools.cache  # once per run, not once per stage
def _warn_workers(split: str, shards: int, world_size: int, workers: int, fewer: int) -> None:
    log.warning(
        "%s stream: %d shards for %d ranks x %d loader workers; %d loader worker(s) per rank instead, so that "
        "every reader has a shard",
        split,
        shards,
        world_size,
        workers,
        fewer,
    )


@functools.cache  # once per run, not once per stage
def warn_uneven(shard_lengths: tuple[int, ...], readers: int) -> None:
    extra, missed = uneven_reads(shard_lengths, readers) if shard_lengths else (0, 0)
    if extra or missed:
        log.warning(
            "validation: %d shards over %d readers (ranks × loader workers) is uneven: top-1 reads %d images again "
            "and leaves %d out; use a number of equal validation shards divisible by %d for an exact top-1",
            len(shard_lengths),
            readers,
            extra,
            missed,
            readers,
        )


def epoch_batches(loader: DataLoader, steps: int) -> Iterator:
    """The epoch's batches: a map-style loader's as they come (its sampler gives every rank the same number); a
    stream's exactly `steps`, read again from its start if it ends early, so that no rank stops while the others
    wait for it in DDP's collectives."""
    if not isinstance(loader.dataset, IterableDataset):
        yield from loader
        return
    done = 0
    while done < steps:
        before = done
        for batch in itertools.islice(loader, steps - done):
            yield batch
            done += 1
        if done == before:
            raise UserError("the training stream yielded no batch", "check that its shards hold readable samples")
