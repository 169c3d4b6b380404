"""Data sets by timm's names, read through `timm.data.create_dataset` and its readers, not new reader code.

`hfds/<hub name or local directory>` (Hugging Face datasets: parquet, arrow, image folders; image and
label columns from `data.image_key` / `data.label_key`), `torch/<name>` (torchvision), `wds/<name>`
(webdataset shards in `--data-root` described by timm's `_info.json`, streamed: each rank and loader worker
reads its own shards) and `tfds/<name>` (tensorflow-datasets, streamed likewise). Training uses the `train`
split; evaluation `validation`, else `test`. Class names come from the dataset (a `ClassLabel` feature,
torchvision's `classes`, `_info.json`'s `num_classes`), else `data.num_classes`.
"""

from __future__ import annotations

import importlib.util
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.data import create_dataset
from torch.utils.data import Dataset, IterableDataset

from .config import DataConfig
from .errors import UserError, first_line

# prefix -> (the module it needs, what installs it)
PREFIXES = {
    "hfds": ("datasets", "pip install 'gtcompress[hf]'"),
    "torch": ("torchvision", "pip install torchvision"),
    "wds": ("webdataset", "pip install 'gtcompress[wds]'"),
    "tfds": ("tensorflow_datasets", "pip install tensorflow-datasets"),
}
IMAGE_EXTENSIONS = {"jpg", "jpeg", "png", "webp", "ppm", "bmp"}
EVAL_SPLITS = ("validation", "test")


def is_timm_name(name: str) -> bool:
    return name.partition("/")[0].lower() in PREFIXES and "/" in name


def _require(prefix: str) -> None:
    module, install = PREFIXES[prefix]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{prefix}/ data sets need the {module} package", install)
    if prefix == "hfds":  # its progress bars would interleave with ours (and with one-line errors)
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def _open(cfg: DataConfig, split: str) -> Dataset:
    """One split of the data set; a missing split is a UserError naming it."""
    prefix = cfg.name.partition("/")[0].lower()
    keys = {"input_key": cfg.image_key, "target_key": cfg.label_key} if prefix == "hfds" else {}
    if prefix == "wds":
        check_shards(cfg, split)
        keys = {"target_key": _wds_label(cfg), "batch_size": 1}
    try:
        return create_dataset(
            cfg.name,
            root=str(cfg.root) if cfg.root else None,
            split=split,
            is_training=split == "train",
            download=cfg.download,
            class_map=str(cfg.class_map) if cfg.class_map else None,
            **keys,
        )
    except (ValueError, FileNotFoundError, RuntimeError, AssertionError, KeyError) as e:
        raise UserError(
            f"{cfg.name} has no readable '{split}' split ({first_line(e)})",
            "check the name (or local directory) and --data-root; hub data sets need network",
        ) from None


def _wds_label(cfg: DataConfig) -> str | None:
    """timm's target key of a wds sample: None reads `<key>.cls`; data.label_key otherwise names a field of
    the `<key>.json` sidecar."""
    return None if cfg.label_key == "label" else cfg.label_key


def wds_info(cfg: DataConfig) -> tuple[Path, dict[str, Any]]:
    """The `_info.json` of a wds/ data set (in --data-root)."""
    if cfg.root is None:
        raise UserError(f"{cfg.name} needs the directory of its shards", "pass --data-root DIR (with _info.json)")
    path = next((Path(cfg.root) / n for n in ("_info.json", "info.json") if (Path(cfg.root) / n).is_file()), None)
    if path is None:
        raise UserError(f"no _info.json in {cfg.root}", "write one: splits -> filenames, shard_lengths, num_samples")
    return path, json.loads(path.read_text())


def check_shards(cfg: DataConfig, split: str) -> None:
    """Every shard of `split` is there, holds the samples _info.json says, each with an image and a label."""
    path, info = wds_info(cfg)
    entry = info.get("splits", {}).get(split)
    if entry is None:
        raise UserError(f"{path} has no '{split}' split", "add it to _info.json's splits")
    files, lengths, total = entry.get("filenames", []), entry.get("shard_lengths", []), entry.get("num_samples")
    if len(files) != len(lengths) or sum(lengths) != total:
        raise UserError(
            f"{path}: the '{split}' split has {len(files)} filenames, {len(lengths)} shard_lengths summing "
            f"to {sum(lengths)}, and num_samples {total}",
            "make them agree",
        )
    for name, length in zip(files, lengths):
        _check_shard(Path(cfg.root) / name, length, "cls" if _wds_label(cfg) is None else "json", split)


def _check_shard(shard: Path, length: int, label: str, split: str) -> None:
    if not shard.is_file():
        raise UserError(f"shard {shard} is missing (listed in _info.json's '{split}' split)", "restore it")
    samples: dict[str, set[str]] = {}
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():
            key, _, ext = Path(member.name).name.partition(".")
            samples.setdefault(str(Path(member.name).parent / key), set()).add(ext.lower())
    for key, exts in samples.items():
        if label not in exts or not exts & IMAGE_EXTENSIONS:
            what = f"its '{label}' label" if label not in exts else "an image"
            raise UserError(f"{shard}: sample '{key}' lacks {what}", "repair the shard or drop the sample")
    if len(samples) != length:
        raise UserError(f"{shard} holds {len(samples)} samples but _info.json says {length}", "fix shard_lengths")


def _eval_split(cfg: DataConfig) -> tuple[Dataset, str]:
    for split in EVAL_SPLITS:
        try:
            return _open(cfg, split), split
        except UserError:
            continue
    raise UserError(f"{cfg.name} has neither a validation nor a test split", "add one (e.g. validation-*.parquet)")


def _check_columns(ds: Any, cfg: DataConfig) -> None:
    reader = getattr(ds, "reader", None)
    columns = getattr(getattr(reader, "dataset", None), "column_names", None)
    for what, key in (("label", cfg.label_key), ("image", cfg.image_key)):
        if columns is not None and key not in columns:
            raise UserError(
                f"{cfg.name} has no {what} column '{key}' (its columns: {', '.join(columns)})",
                f"--set data.{what}_key=COLUMN",
            )


def _class_names(ds: Any, cfg: DataConfig) -> list[str]:
    mapping = getattr(getattr(ds, "reader", None), "class_to_idx", None) or {}
    names = [name for name, _ in sorted(mapping.items(), key=lambda item: item[1])] or list(getattr(ds, "classes", []))
    if names:
        return [str(n) for n in names]
    count = cfg.num_classes
    if count is None and cfg.name.lower().startswith("wds/"):
        count = wds_info(cfg)[1].get("num_classes")
    if count is not None:
        return [f"class_{i}" for i in range(count)]
    raise UserError(
        f"the classes of {cfg.name} are unknown (no ClassLabel feature, no class list)", "--set data.num_classes=N"
    )


def _targets(ds: Any) -> list[int]:
    if isinstance(ds, IterableDataset):
        return []  # a stream's labels come with its images; only train_fraction would need them
    reader = getattr(ds, "reader", None)
    if reader is not None and hasattr(reader, "iter_targets"):
        return [int(t) for t in reader.iter_targets()]
    return [int(t) for t in ds.targets]


@dataclass(frozen=True)
class TimmSplits:
    """A timm-named data set's train split and the split evaluated on (named), its classes and training targets."""

    train: Dataset
    val: Dataset
    val_split: str
    class_names: list[str]
    train_targets: list[int]


def timm_splits(cfg: DataConfig) -> TimmSplits:
    """The train and evaluation splits, class names and training targets of a timm-named data set."""
    _require(cfg.name.partition("/")[0].lower())
    train = _open(cfg, "train")
    val, val_split = _eval_split(cfg)
    _check_columns(train, cfg)
    names = _class_names(train, cfg)
    targets = _targets(train)
    if targets and (min(targets) < 0 or max(targets) >= len(names)):
        raise UserError(
            f"{cfg.name}'s labels run to {max(targets)} but it has {len(names)} classes", "--set data.num_classes=N"
        )
    return TimmSplits(train, val, val_split, names, targets)
