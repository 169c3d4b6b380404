"""`<model>.json` beside the artefacts: what the deploy scripts, Triton and `gtcompress eval` need to feed them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..models import ModelSpec
from ..rundir import read_json
from .graph import INPUT_NAME, OUTPUT_NAME

SIDECAR_FORMAT = "gtcompress-export/1"


def describe_transform(transform: Callable) -> dict[str, Any]:
    """The eval transform's geometry as the deploy scripts replay it: resize the short side, centre-crop.

    (Then scale to [0, 1] and normalise with the checkpoint's mean/std, as timm's eval transform does.)
    """
    from torchvision import transforms as T

    out: dict[str, Any] = {}
    for step in transform.transforms:
        if isinstance(step, T.Resize) and (isinstance(step.size, int) or len(step.size) == 1):
            out["resize"] = step.size if isinstance(step.size, int) else step.size[0]
            out["interpolation"] = step.interpolation.value
        elif isinstance(step, T.CenterCrop):
            out["crop"] = list(step.size)
        elif type(step).__name__ not in ("MaybeToTensor", "ToTensor", "Normalize"):
            raise ValueError(f"the deploy scripts cannot replay the transform step {step}")
    return out


def sidecar_path(export_dir: Path, stage: str) -> Path:
    """`<stage>.json` in the export folder: what the deploy scripts and `gtcompress eval` read."""
    return export_dir / f"{stage}.json"


def read_sidecar(artefact: Path) -> dict[str, Any]:
    """The description beside `artefact`: the sidecar in its folder whose `files` name it."""
    for path in sorted(artefact.parent.glob("*.json")):
        meta = read_json(path)
        if isinstance(meta, dict) and meta.get("format") == SIDECAR_FORMAT and artefact.name in meta.get("files", {}):
            return meta
    raise UserError(
        f"no gtcompress export description beside {artefact.name} (a <stage>.json naming it)",
        "re-run gtcompress export, which writes it",
    )


def sidecar(
    spec: ModelSpec, transform: Callable, opset: int | None, source: Path, files: dict[str, str]
) -> dict[str, Any]:
    """Everything needed to feed the exported graphs without gtcompress (see README, Export); `files` maps each
    verified artefact's file name to its precision."""
    return {
        "format": SIDECAR_FORMAT,
        "arch": spec.arch,
        "num_classes": spec.num_classes,
        "img_size": spec.img_size,
        **describe_transform(transform),
        "mean": list(spec.mean),
        "std": list(spec.std),
        "class_names": list(spec.class_names),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": ["batch", 3, spec.img_size, spec.img_size],
        "layout": "NCHW",
        "opset": opset,
        "dynamic_batch": True,
        "checkpoint": source.name,
        "files": files,
    }
