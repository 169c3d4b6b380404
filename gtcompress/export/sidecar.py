"""`<stage>.json` beside the artefacts (records.ExportSidecar): what the deploy scripts, Triton, publish and
`gtcompress eval` need to feed them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..models import ModelSpec
from ..records import ExportSidecar
from .graph import INPUT_NAME, OUTPUT_NAME


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


def sidecar(
    spec: ModelSpec, transform: Callable, opset: int | None, source: Path, files: dict[str, str]
) -> ExportSidecar:
    """Everything needed to feed the exported graphs without gtcompress (see README, Export); `files` maps each
    verified artefact's file name to its precision."""
    return ExportSidecar(
        **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()},
        **describe_transform(transform),
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=["batch", 3, spec.img_size, spec.img_size],
        opset=opset,
        checkpoint=source.name,
        files=files,
    )
