"""Export precisions, one registry entry each: how its ONNX graph is made, the tolerance it must meet against the
PyTorch model to be kept, what to try when it does not, and its file names. Adding one is an entry here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Tolerance

if TYPE_CHECKING:  # the registry is read by `gtcompress --help`, which must not wait for torch
    import numpy as np
    from torch import nn


@dataclass(frozen=True)
class Int8Format:
    """One way to quantize a graph to int8 Q/DQ (onnxruntime's quantize_static settings), and where it is accurate."""

    name: str
    activations: str  # onnxruntime QuantType of the activations: QUInt8 (asymmetric) or QInt8
    reduce_range: bool  # 7-bit weights, in [-64, 64]: see saturating_nodes
    symmetric_activations: bool = False
    quantize_bias: bool = True  # int32 biases; TensorRT takes float biases and folds them itself
    help: str = ""  # what it is and which hardware its accuracy holds on: the CLI's help


# The int8 graph for onnxruntime, chosen with --int8-format. Weights are int8, per channel, symmetric; activations
# asymmetric uint8, since onnxruntime's x86 kernels are u8s8. On x86 without VNNI (AVX2, AVX-512 without VNNI) those
# kernels add pairs of u8 x s8 products into a saturating int16 (VPMADDUBSW), which 8-bit weights overflow
# (2 * 255 * 127 > 32767) and 7-bit ones cannot (2 * 255 * 64 <= 32767); onnxruntime's quantization guide says to use
# reduce_range or another format there (onnxruntime issue #5849: verified on a VNNI machine, wrong without). Measured
# on the `make demo` student (mobilenetv3_small_100 on digits, 360 test images, PyTorch top-1 97.22%), onnxruntime
# 1.32 on a 2-core AMD EPYC with cpu_features avx2, f16c (no AVX-512, no VNNI): top-1 % / agreement with PyTorch %
# on this CPU's kernels, and simulated (the same graph with onnxruntime's optimizations off: Dequantize, float op,
# Quantize, no integer kernel; what exact int32 accumulation such as VNNI's computes):
#   u8s8, 8-bit weights ("vnni")       94.17 / 96.39    simulated 97.22 / 99.44
#   u8s8, 7-bit weights ("portable")   96.67 / 99.17    simulated 96.67 / 99.17
#   u8u8, 8-bit weights                97.22 / 99.17    simulated 97.22 / 99.17
#   s8s8, 8-bit weights                94.72 / 96.11    simulated 97.22 / 99.44
# s8s8 saturates as u8s8 does (onnxruntime turns int8 activations into uint8 on x86). u8u8 is exact as well (its
# kernels widen to int16), but moves every x86 CPU onto other kernels, with no VNNI variant (MLAS has one only for
# AVX-VNNI-INT8 CPUs); 7-bit weights keep each CPU's u8s8 kernels, VNNI's included, and cost 2 of the 360 test
# images here. So the default is 7-bit ("portable"); 8-bit weights ("vnni") only on request, for hosts whose int8
# kernels do not saturate (VNNI's vpdpbusd and AMX accumulate in int32).
INT8_FORMATS = {
    f.name: f
    for f in (
        Int8Format("portable", "QUInt8", reduce_range=True, help="portable (7-bit weights): accurate on every CPU"),
        Int8Format(
            "vnni",
            "QUInt8",
            reduce_range=False,
            help="vnni (8-bit weights): accurate only on x86 CPUs with VNNI or AMX (and ARM), not on AVX2 or AVX-512 "
            "without VNNI",
        ),
    )
}
# TensorRT's explicit quantization takes only symmetric int8 activations and float biases (it rejects a
# DequantizeLinear of int32); GPUs accumulate in int32, so its weights keep 8 bits.
TENSORRT_INT8 = Int8Format("tensorrt", "QInt8", reduce_range=False, symmetric_activations=True, quantize_bias=False)


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
    int8_format: str = "portable"  # the onnxruntime int8 graph's (INT8_FORMATS); TensorRT's has its own
    int8_method: str = "ptq"  # INT8_METHODS
    int8_max_drop: float = 0.5  # top-1 points accuracy-aware int8 may lose on the held-out training images
    heldout: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]] = lambda: iter(())  # labelled training batches
    heldout_images: int = 0
    int8_head: str = "float"  # the classifier in a plain-PTQ graph: float or int8


def _fp32(c: Conversion) -> dict[str, Any]:
    from .graph import export_onnx

    return {"opset": export_onnx(c.model, c.img_size, c.dst, c.opset)}


def _fp16(c: Conversion) -> dict[str, Any]:
    from .graph import convert_fp16, graph_opset

    convert_fp16(c.fp32, c.dst)
    return {"opset": graph_opset(c.dst)}


def _ptq(c: Conversion, fmt: Int8Format) -> dict[str, Any]:
    """onnxruntime's static quantization of every layer, the classifier too only with int8_head "int8": measured on
    the `make demo` GT (logits to ±1,300), keeping it in float alone took int8 from 87.5% to 99.7% agreement."""
    from .graph import head, quantize_int8

    in_float = [head(c.fp32)] if c.int8_head == "float" else []
    quantize_int8(c.fp32, c.dst, c.calibration, c.calibration_method, fmt, in_float)
    return {"calibration_method": c.calibration_method, "int8_head": c.int8_head}


def _accuracy_aware(c: Conversion, fmt: Int8Format) -> dict[str, Any]:
    from .graph import quantize_accuracy_aware

    before, after = quantize_accuracy_aware(c.fp32, c.dst, c.calibration, c.heldout, c.int8_max_drop, fmt)
    return {
        "int8_max_drop": c.int8_max_drop,
        "heldout_images": c.heldout_images,
        "heldout_top1": after,
        "heldout_reference_top1": before,
    }


@dataclass(frozen=True)
class Int8Method:
    """One way to make an int8 graph from the fp32 one: its quantizer (writes c.dst in format fmt, returns the
    record's fields of its own; _int8 adds those of every int8 graph) and whether it needs labelled held-out
    training images."""

    name: str
    quantize: Callable[[Conversion, Int8Format], dict[str, Any]]
    heldout: bool = False
    help: str = ""
    settings: tuple[str, ...] = ()  # the export settings (ExportConfig fields) its record repeats: they shape its graph


INT8_METHODS = {
    m.name: m
    for m in (
        Int8Method(
            "ptq",
            _ptq,
            help="ptq (onnxruntime): every Conv/MatMul/Gemm in int8, whatever it costs",
            settings=("calibration_method", "int8_head"),
        ),
        Int8Method(
            "accuracy-aware",
            _accuracy_aware,
            heldout=True,
            help="accuracy-aware (NNCF): layers that cost more than --int8-max-drop top-1 points on held-out "
            "training images stay in float (its graphs ran ~5x slower than fp32 on onnxruntime CPU here)",
            settings=("int8_max_drop",),
        ),
    )
}
# TensorRT's graph is quantized plainly: NNCF's accuracy control measures on onnxruntime, not on the engine.
TENSORRT_METHOD = "ptq"


def _int8_choice(int8_format: str, int8_method: str, target: str) -> tuple[Int8Format, Int8Method]:
    """The format and method an int8 graph for `target` is made with: TensorRT's graph has its own."""
    if target == "tensorrt":
        return TENSORRT_INT8, INT8_METHODS[TENSORRT_METHOD]
    return INT8_FORMATS[int8_format], INT8_METHODS[int8_method]


def _int8(c: Conversion) -> dict[str, Any]:
    """The int8 graph in its format by its method; the record names the layers left in float, says whether x86
    CPUs without VNNI can saturate on it (see graph.saturating_nodes) and which CPU features the host that verifies
    it has."""
    import onnx

    from ..environment import cpu_features
    from .graph import float_layers, model_opset, saturating_nodes

    fmt, method = _int8_choice(c.int8_format, c.int8_method, c.target)
    extra = method.quantize(c, fmt)
    made = onnx.load(str(c.dst))
    return {
        "opset": model_opset(made),
        "calibration_images": c.calibration_images,
        "int8_method": method.name,
        "int8_format": fmt.name,
        "saturation_safe": not saturating_nodes(made.graph),
        "cpu_features": cpu_features(),
        **extra,
        "float_layers": float_layers(made.graph),
    }


def _int8_made_with(cfg: Any, target: str) -> dict[str, Any]:
    """`cfg`: an ExportConfig (settings.py, a floor above)."""
    fmt, method = _int8_choice(cfg.int8_format, cfg.int8_method, target)
    return {"int8_format": fmt.name, "int8_method": method.name, **{k: getattr(cfg, k) for k in method.settings}}


@dataclass(frozen=True)
class ExportPrecision:
    name: str
    tolerance: Tolerance
    hint: str  # what to try when the artefact fails verification
    convert: Callable[[Conversion], dict[str, Any]]  # writes the graph, returns the record's extra fields
    graph_per_target: bool = False  # a graph of its own for TensorRT
    calibrated: bool = False  # its conversion reads training images
    diagnosed: bool = False  # a Q/DQ graph: layer by layer against fp32 and its kernels against simulation (diagnose)
    # the record fields that say how the user's settings made its graph for a target: a file recorded otherwise is
    # stale (an int8 file of another format or method is made again)
    made_with: Callable[[Any, str], dict[str, Any]] = lambda cfg, target: {}  # (ExportConfig, target)

    def onnx_file(self, stage: str, target: str = "onnxruntime") -> str:
        """`student.onnx` (fp32), `student.fp16.onnx`, `student.int8.onnx`, `student.int8.tensorrt.onnx`."""
        stem = stage if self.name == "fp32" else f"{stage}.{self.name}"
        return f"{stem}.tensorrt.onnx" if self.graph_per_target and target == "tensorrt" else f"{stem}.onnx"

    def own_file(self, stage: str, suffix: str) -> str:
        """A backend's own artefact: `student.fp16.engine`."""
        return f"{stage}.{self.name}{suffix}"


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
            "try --int8-max-drop 0.5 (accuracy-aware: its costliest layers in float), more --calibration-images or "
            "--calibration-method entropy, or fine-tune with export --qat 2",
            _int8,
            graph_per_target=True,
            calibrated=True,
            diagnosed=True,
            made_with=_int8_made_with,
        ),
    )
}
DEFAULT_TOLERANCES = {name: p.tolerance for name, p in PRECISIONS.items()}
