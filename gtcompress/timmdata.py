"""Data sets by timm's names, read through `timm.data.create_dataset` and its readers, not new reader code.

`hfds/<hub name or local directory>` (Hugging Face datasets: parquet, arrow, image folders; image and
label columns from `data.image_key` / `data.label_key`) and `torch/<name>` (torchvision). Training uses the
`train` split; evaluation `validation`, else `test`. Class names come from the dataset (a `ClassLabel`
feature, torchvision's `classes`), else `data.num_classes`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from timm.data import create_dataset
from torch.utils.data import Dataset

from .config import DataConfig
from .errors import UserError, first_line

# prefix -> (the module it needs, the gtcompress extra that installs it)
PREFIXES = {"hfds": ("datasets", "hf"), "torch": ("torchvision", None)}
EVAL_SPLITS = ("validation", "test")


def is_timm_name(name: str) -> bool:
    return name.partition("/")[0].lower() in PREFIXES and "/" in name


def _require(prefix: str) -> None:
    module, extra = PREFIXES[prefix]
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{prefix}/ data sets need the {module} package", f"pip install 'gtcompress[{extra}]'")
    if prefix == "hfds":  # its progress bars would interleave with ours (and with one-line errors)
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def _open(cfg: DataConfig, split: str) -> Dataset:
    """One split of the data set; a missing split is a UserError naming it."""
    prefix = cfg.name.partition("/")[0].lower()
    keys = {"input_key": cfg.image_key, "target_key": cfg.label_key} if prefix == "hfds" else {}
    try:
        return create_dataset(
            cfg.name,
            root=str(cfg.root) if cfg.root else None,
            split=split,
            is_training=split == "train",
            download=cfg.download,
            **keys,
        )
    except (ValueError, FileNotFoundError, RuntimeError, AssertionError, KeyError) as e:
        raise UserError(
            f"{cfg.name} has no readable '{split}' split ({first_line(e)})",
            "check the name (or local directory) and --data-root; hub data sets need network",
        ) from None


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
    if cfg.num_classes is not None:
        return [f"class_{i}" for i in range(cfg.num_classes)]
    raise UserError(
        f"the classes of {cfg.name} are unknown (no ClassLabel feature, no class list)", "--set data.num_classes=N"
    )


def _targets(ds: Any) -> list[int]:
    reader = getattr(ds, "reader", None)
    if reader is not None and hasattr(reader, "iter_targets"):
        return [int(t) for t in reader.iter_targets()]
    return [int(t) for t in ds.targets]


def timm_parts(cfg: DataConfig) -> dict[str, Any]:
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
    return {"train": train, "val": val, "val_split": val_split, "class_names": names, "train_targets": targets}
