"""Data: a registry of data sets by name, timm's transforms, and (DDP-aware) loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.model_selection import train_test_split
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, Subset

from .config import DataConfig, SyntheticConfig
from .distributed import DistEnv
from .errors import UserError
from .stream import Stream, stream_workers, warn_uneven
from .timmdata import is_timm_name, timm_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Splits:
    """A data set's train and test splits of (RGB PIL image, label) pairs, with its defaults."""

    train: Dataset
    val: Dataset
    train_targets: Sequence[int]
    class_names: list[str]
    img_size: int
    augment: dict[str, Any] = field(default_factory=dict)
    in_memory: bool = True
    skipped: list[str] = field(default_factory=list)
    eval_split: str | None = None  # the split evaluated on, where the data set has several

    @property
    def streaming(self) -> bool:
        return isinstance(self.train, IterableDataset)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ArrayImages(Dataset):
    """uint8 images (N, H, W) or (N, H, W, 3) held in memory, served as RGB PIL images."""

    def __init__(self, images: np.ndarray, targets: np.ndarray):
        self.images, self.targets = images, [int(t) for t in targets]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return Image.fromarray(self.images[i]).convert("RGB"), self.targets[i]


def transformed(base: Dataset, transform: Callable) -> Dataset:
    """`base` under `transform`, map-style or streamed as `base` is."""
    return Stream(base, transform) if isinstance(base, IterableDataset) else Transformed(base, transform)


class Transformed(Dataset):
    """Applies a transform to the images of a (image, label) data set."""

    def __init__(self, base: Dataset, transform: Callable):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, target = self.base[i]
        return self.transform(img), target


class Indexed(Dataset):
    """(image, label, index): lets a training step look up per-sample state such as cached logits."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        x, y = self.base[i]
        return x, y, i


def _stratified_split(targets: Sequence[int], test_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    idx = np.arange(len(targets))
    train, test = train_test_split(idx, test_size=test_fraction, stratify=targets, random_state=seed)
    return sorted(train.tolist()), sorted(test.tolist())


def _digits(cfg: DataConfig) -> Splits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    train, val = _stratified_split(digits.target, cfg.val_fraction)
    return Splits(
        train=ArrayImages(images[train], digits.target[train]),
        val=ArrayImages(images[val], digits.target[val]),
        train_targets=digits.target[train].tolist(),
        class_names=[str(i) for i in range(10)],
        img_size=32,
        augment=dict(scale=(0.7, 1.0), ratio=(0.85, 1.15), hflip=0.0, color_jitter=0.0, crop_pct=1.0),
    )


def synthetic_images(cfg: SyntheticConfig, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic images whose classes share appearance within super-classes (like CIFAR-100's).

    Each class's prototype is its super-class's smooth random pattern plus `class_sep` times a
    pattern of its own; a sample is its prototype, blended with a random sibling's (same super-class,
    weight uniform in [0, `blend`)), shifted, rescaled in contrast and brightness, plus pixel noise.
    With `superclasses=0` every class has an independent pattern and any class is a sibling.
    Returns train images, train labels, test images, test labels (uint8 HWC images).
    """
    rng = np.random.default_rng(cfg.seed)

    def smooth(n: int, grid: int) -> np.ndarray:
        coarse = torch.from_numpy(rng.standard_normal((n, 3, grid, grid)).astype(np.float32))
        return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).numpy()

    num_classes = cfg.num_classes
    own = smooth(num_classes, 6)
    if cfg.superclasses:
        base = smooth(cfg.superclasses, 4)
        protos = base[np.arange(num_classes) % cfg.superclasses] + cfg.class_sep * own
    else:
        protos = own
    protos /= protos.std(axis=(1, 2, 3), keepdims=True)

    group = np.arange(num_classes) % cfg.superclasses if cfg.superclasses else np.zeros(num_classes, int)
    siblings = [np.flatnonzero((group == group[c]) & (np.arange(num_classes) != c)) for c in range(num_classes)]

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(num_classes), per_class)
        n, shift = len(labels), max(1, size // 8)
        imgs = protos[labels]
        if cfg.blend > 0:  # draws nothing when off, so blend=0 data sets are unchanged
            other = np.array([rng.choice(siblings[c]) if len(siblings[c]) else c for c in labels])
            weight = rng.uniform(0, cfg.blend, size=(n, 1, 1, 1)).astype(np.float32)
            imgs = (1 - weight) * imgs + weight * protos[other]
        dx, dy = rng.integers(-shift, shift + 1, size=(2, n))
        imgs = np.stack([np.roll(im, (a, b), axis=(1, 2)) for im, a, b in zip(imgs, dx, dy)])
        contrast = rng.uniform(0.7, 1.3, size=(n, 1, 1, 1))
        brightness = rng.normal(0, 0.3, size=(n, 3, 1, 1))
        noise = rng.normal(0, cfg.noise, size=imgs.shape)
        imgs = 0.5 + 0.18 * (contrast * imgs + brightness) + noise
        imgs = (np.clip(imgs, 0, 1) * 255).round().astype(np.uint8).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(imgs), labels

    train_x, train_y = draw(cfg.train_per_class)
    val_x, val_y = draw(cfg.val_per_class)
    return train_x, train_y, val_x, val_y


def _synthetic(cfg: DataConfig) -> Splits:
    size = cfg.img_size or 32
    train_x, train_y, val_x, val_y = synthetic_images(cfg.synthetic, size)
    return Splits(
        train=ArrayImages(train_x, train_y),
        val=ArrayImages(val_x, val_y),
        train_targets=train_y.tolist(),
        class_names=[f"class_{i}" for i in range(cfg.synthetic.num_classes)],
        img_size=size,
        augment=dict(scale=(0.8, 1.0), ratio=(0.9, 1.1), hflip=0.0, color_jitter=0.0, crop_pct=1.0),
    )


def _cifar(cfg: DataConfig, cls_name: str) -> Splits:
    import torchvision.datasets as tvd

    root = cfg.root or Path("data")
    cls = getattr(tvd, cls_name)
    try:
        train = cls(str(root), train=True, download=cfg.download)
        val = cls(str(root), train=False, download=cfg.download)
    except RuntimeError as e:
        raise UserError(
            f"{cls_name} not found under {root} ({e})",
            "pass --download to fetch it, or --data-root DIR where it already is",
        ) from None
    except OSError as e:  # no network during download
        raise UserError(f"could not download {cls_name} to {root}: {e}", "check the network or use --data-root")
    return Splits(
        train=train,
        val=val,
        train_targets=list(train.targets),
        class_names=list(train.classes),
        img_size=32,
        augment=dict(scale=(0.6, 1.0), hflip=0.5, color_jitter=0.0, crop_pct=1.0),
    )


class RobustImageFolder(Dataset):
    """An ImageFolder that drops files whose header cannot be read, and survives undecodable ones."""

    def __init__(self, root: Path, classes: list[str] | None = None):
        from torchvision.datasets import ImageFolder

        try:
            folder = ImageFolder(str(root))
        except (FileNotFoundError, RuntimeError) as e:
            raise UserError(f"no images under {root} ({e})", "use one sub-folder of images per class") from None
        if classes is not None and folder.classes != classes:
            raise UserError(
                f"{root} has classes {folder.classes[:5]}..., unlike the training split",
                "give train/ and val/ the same class sub-folders",
            )
        with ThreadPoolExecutor(16) as pool:
            readable = list(pool.map(_readable, (p for p, _ in folder.samples)))
        self.skipped = [p for (p, _), ok in zip(folder.samples, readable) if not ok]
        self.samples = [s for s, ok in zip(folder.samples, readable) if ok]
        if not self.samples:
            raise UserError(f"no readable images under {root}", "check the files are JPEG/PNG images")
        self.targets = [t for _, t in self.samples]
        self.classes = folder.classes
        self.loader = folder.loader
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        for j in range(i, i + len(self.samples)):
            path, target = self.samples[j % len(self.samples)]
            try:
                return self.loader(path), target
            except OSError as e:
                if j not in self._warned:
                    self._warned.add(j)
                    log.warning("skipping undecodable image %s (%s)", path, e)
        raise UserError("no image of the data set could be decoded", "check the image files")


def _readable(path: str) -> bool:
    try:
        with Image.open(path) as img:
            img.size  # noqa: B018 -- parsing the header is the check
        return True
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _imagefolder(cfg: DataConfig) -> Splits:
    path = cfg.name.partition(":")[2]
    root = Path(path) if path else cfg.root
    if root is None or not root.is_dir():
        raise UserError(f"image folder {root} does not exist", "pass imagefolder:PATH with PATH a directory")
    train_dir = root / "train"
    val_dir = next((root / n for n in ("val", "validation", "test") if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        train = RobustImageFolder(train_dir)
        val = RobustImageFolder(val_dir, classes=train.classes)
        skipped = train.skipped + val.skipped
        train_targets = train.targets
    else:
        whole = RobustImageFolder(root)
        train_idx, val_idx = _stratified_split(whole.targets, cfg.val_fraction)
        train, val = Subset(whole, train_idx), Subset(whole, val_idx)
        skipped, train_targets = whole.skipped, [whole.targets[i] for i in train_idx]
    classes = train.classes if isinstance(train, RobustImageFolder) else train.dataset.classes
    return Splits(
        train=train,
        val=val,
        train_targets=train_targets,
        class_names=list(classes),
        img_size=224,
        augment={},
        in_memory=False,
        skipped=skipped,
    )


def _timm(cfg: DataConfig) -> Splits:
    timm = timm_splits(cfg)
    return Splits(
        train=timm.train,
        val=timm.val,
        train_targets=timm.train_targets,
        class_names=timm.class_names,
        img_size=224,
        augment={},
        in_memory=False,
        eval_split=timm.val_split,
    )


DATASETS: dict[str, Callable[[DataConfig], Splits]] = {
    "digits": _digits,
    "synthetic": _synthetic,
    "cifar10": lambda cfg: _cifar(cfg, "CIFAR10"),
    "cifar100": lambda cfg: _cifar(cfg, "CIFAR100"),
    "imagefolder": _imagefolder,
    "timm": _timm,  # hfds/..., torch/...: timm's names (timmdata.py)
}


def load_splits(cfg: DataConfig) -> Splits:
    """The named data set's splits, with `train_fraction` applied (stratified, fixed)."""
    kind = "timm" if is_timm_name(cfg.name) else cfg.name.partition(":")[0]
    if cfg.train_fraction < 1.0 and cfg.name.lower().startswith(("wds/", "tfds/")):
        raise UserError(
            f"data.train_fraction needs random access; {cfg.name} is streamed",
            "write a smaller set of shards (and its _info.json) instead",
        )
    if kind not in DATASETS:
        raise UserError(f"unknown data set '{cfg.name}'", f"choose one of {', '.join(DATASETS)} (imagefolder:PATH)")
    splits = DATASETS[kind](cfg)
    if cfg.train_fraction < 1.0:
        keep, _ = _stratified_split(splits.train_targets, 1.0 - cfg.train_fraction)
        targets = [splits.train_targets[i] for i in keep]
        splits = replace(splits, train=Subset(splits.train, keep), train_targets=targets)
    return splits


def build_transform(
    cfg: DataConfig, splits: Splits, img_size: int, mean: Sequence[float], std: Sequence[float], training: bool
) -> Callable:
    """timm's train or eval transform with the data set's augmentation defaults under the recipe's.

    Training without augmentation (`augment_train: false`) gets the deterministic eval transform.
    """
    aug = {**splits.augment, **{k: v for k, v in cfg.augment.model_dump().items() if v is not None}}
    crop_pct, pad = aug.pop("crop_pct", None), aug.pop("pad_crop", None)
    kwargs = dict(input_size=img_size, mean=tuple(mean), std=tuple(std), interpolation="bicubic", crop_pct=crop_pct)
    if training and cfg.augment_train and pad is not None:
        return _pad_crop_transform(img_size, pad, aug.get("hflip", 0.5), mean, std)
    if training and cfg.augment_train:
        return create_transform(is_training=True, **kwargs, **aug)
    # Training without augmentation sees the deterministic eval transform, so teacher logits can be reused exactly.
    return create_transform(**kwargs)


def _pad_crop_transform(img_size: int, pad: int, hflip: float, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """The CIFAR training transform (RandomCrop with zero padding + flip), which timm's factory does not build."""
    from torchvision import transforms as T

    resize = T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC)
    crop = T.RandomCrop(img_size, padding=pad)
    return T.Compose([resize, crop, T.RandomHorizontalFlip(hflip), T.ToTensor(), T.Normalize(mean, std)])


def loader_workers(cfg: DataConfig, splits: Splits) -> int:
    """DataLoader workers: the configured number, else none for in-memory data and up to 8 (one per core) for files."""
    if cfg.workers is not None:
        return cfg.workers
    return 0 if splits.in_memory else min(8, os.cpu_count() or 1)


def _worker_options(workers: int, pin_memory: bool) -> dict[str, Any]:
    return dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0)


def create_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    training: bool,
    workers: int,
    seed: int = 0,
    dist: DistEnv = DistEnv(),
    pin_memory: bool = False,
) -> DataLoader:
    """Training: a shuffled shard per rank (call `sampler.set_epoch`). Eval: an exact, unpadded shard.

    A stream is sharded by its reader; its loader only batches (call the dataset's `set_epoch`)."""
    if isinstance(dataset, IterableDataset):
        workers = stream_workers(dataset, workers, dist.world_size, training, quiet=not dist.is_main)
        dataset.set_loader_cfg(num_workers=workers)
        if not training and dist.enabled and dist.is_main:
            warn_uneven(dataset.shard_lengths, dist.world_size * max(1, workers))
        per_rank = batch_size // dist.world_size if training else batch_size
        return DataLoader(dataset, batch_size=per_rank, **_worker_options(workers, pin_memory))
    common = _worker_options(workers, pin_memory)
    if training:
        sampler = DistributedSampler(dataset, dist.world_size, dist.rank, shuffle=True, seed=seed)
        per_rank = batch_size // dist.world_size
        drop_last = len(sampler) > per_rank
        return DataLoader(dataset, batch_size=per_rank, sampler=sampler, drop_last=drop_last, **common)
    shard = Subset(dataset, range(dist.rank, len(dataset), dist.world_size))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, **common)
