"""Export precisions, one registry entry each: how its ONNX graph is made, the tolerance it must meet against the
PyTorch model to be kept, what to try when it does not, and its file names. Adding one is an entry here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn


@dataclass(frozen=True)
class Tolerance:
    """What an artefact must match against the PyTorch model on the test split to be kept."""

    max_abs_diff: float | None = None  # largest |delta logits| allowed; None: not checked
    min_agreement: float = 99.0  # % of test images whose top-1 class equals PyTorch's


@dataclass(frozen=True)
class Conversion:
    """What a precision's converter gets: the model, its fp32 graph (made first), and where to write."""

    model: nn.Module
    img_size: int
    fp32: Path
    dst: Path
    target: str  # the runtime the graph is for: onnxruntime, or tensorrt (its int8 graph differs)
    opset: int | None
    calibration: Callable[[], Iterator[np.ndarray]]  # training batches, for int8
    calibration_images: int
    calibration_method: str
    int8_format: str = "portable"  # the onnxruntime int8 graph's (graph.INT8_FORMATS); TensorRT's has its own


def _fp32(c: Conversion) -> dict[str, Any]:
    from .graph import export_onnx

    return {"opset": export_onnx(c.model, c.img_size, c.dst, c.opset)}


def _fp16(c: Conversion) -> dict[str, Any]:
    from .graph import convert_fp16, graph_opset

    convert_fp16(c.fp32, c.dst)
    return {"opset": graph_opset(c.dst)}


def _int8(c: Conversion) -> dict[str, Any]:
    """The int8 graph in its format; the record says whether x86 CPUs without VNNI can saturate on it (see
    graph.saturating_nodes) and which CPU features the host that verifies it has."""
    from ..environment import cpu_features
    from .graph import INT8_FORMATS, TENSORRT_INT8, graph_opset, quantize_int8, saturating_nodes

    fmt = TENSORRT_INT8 if c.target == "tensorrt" else INT8_FORMATS[c.int8_format]
    quantize_int8(c.fp32, c.dst, c.calibration, c.calibration_method, fmt)
    return {
        "opset": graph_opset(c.dst),
        "calibration_images": c.calibration_images,
        "calibration_method": c.calibration_method,
        "int8_format": fmt.name,
        "saturation_safe": not saturating_nodes(c.dst),
        "cpu_features": cpu_features(),
    }


@dataclass(frozen=True)
class ExportPrecision:
    name: str
    tolerance: Tolerance
    hint: str  # what to try when the artefact fails verification
    convert: Callable[[Conversion], dict[str, Any]]  # writes the graph, returns the record's extra fields
    graph_per_target: bool = False  # a graph of its own for TensorRT
    calibrated: bool = False  # its conversion reads training images

    def onnx_file(self, stage: str, target: str = "onnxruntime") -> str:
        """`student.onnx` (fp32), `student.fp16.onnx`, `student.int8.onnx`, `student.int8.tensorrt.onnx`."""
        stem = stage if self.name == "fp32" else f"{stage}.{self.name}"
        return f"{stem}.tensorrt.onnx" if self.graph_per_target and target == "tensorrt" else f"{stem}.onnx"

    def engine_file(self, stage: str) -> str:
        return f"{stage}.{self.name}.engine"


# fp32 must reproduce the logits (only float re-association differs); reduced precisions are judged by their
# predictions, since their logits legitimately move by up to a few tenths (fp16) or units (int8). fp32 first:
# the other graphs are converted from it.
PRECISIONS: dict[str, ExportPrecision] = {
    p.name: p
    for p in (
        ExportPrecision("fp32", Tolerance(max_abs_diff=1e-3, min_agreement=99.0), "try another --opset", _fp32),
        ExportPrecision("fp16", Tolerance(min_agreement=99.0), "try another --opset", _fp16),
        ExportPrecision(
            "int8",
            Tolerance(min_agreement=95.0),
            "try more --calibration-images or --calibration-method entropy",
            _int8,
            graph_per_target=True,
            calibrated=True,
        ),
    )
}
DEFAULT_TOLERANCES = {name: p.tolerance for name, p in PRECISIONS.items()}
