"""ONNX files: export from PyTorch, fp16 conversion and int8 Q/DQ quantization (onnxruntime's tools)."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from ..errors import UserError, first_line

INPUT_NAME, OUTPUT_NAME = "input", "logits"


def export_onnx(model: nn.Module, img_size: int, path: Path, opset: int | None = None) -> int:
    """`torch.onnx.export(dynamo=True)` into one self-contained file with a dynamic batch; returns the opset."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    # Traced with batch 2: a batch of 1 would be specialised into the graph as a constant.
    example = torch.randn(2, 3, img_size, img_size)
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                verbose=False,
            )
    except torch.onnx.errors.OnnxExporterError as e:
        reason = first_line(e)
        raise UserError(
            f"torch.onnx could not export the model: {reason}",
            "try another --opset; `gtcompress --debug export` shows the exporter's traceback",
        ) from None
    strip_debug_metadata(path)
    onnx.checker.check_model(str(path), full_check=True)
    return graph_opset(path)


def strip_debug_metadata(path: Path) -> None:
    """Drop the exporter's per-node debugging metadata (Python stack traces with this machine's paths).

    The graph is unchanged; the file loses ~3% (fp32) to ~11% (int8) of its size and no longer
    carries the exporting machine's source paths.
    """
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def graph_opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def convert_fp16(src: Path, dst: Path) -> None:
    """fp16 weights and compute with fp32 inputs/outputs (onnxconverter-common)."""
    from onnxconverter_common import float16

    with warnings.catch_warnings():
        # it warns for every constant below fp16's range that it clamps, as designed
        warnings.simplefilter("ignore")
        converted = float16.convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(dst))


# The int8 Q/DQ graph for each target. onnxruntime's CPU kernels are fastest with asymmetric uint8
# activations (u8s8); TensorRT's explicit quantization takes only symmetric int8 activations and float
# biases (it rejects a DequantizeLinear of int32 and folds the bias itself). Weights: int8, per channel.
INT8_TARGETS = {
    "onnxruntime": {"activations": "QUInt8", "options": {"ActivationSymmetric": False, "WeightSymmetric": True}},
    "tensorrt": {
        "activations": "QInt8",
        "options": {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    },
}


def quantize_int8(
    src: Path, dst: Path, calibration: Callable[[], Iterator[np.ndarray]], method: str, target: str = "onnxruntime"
) -> None:
    """Static int8 Q/DQ quantization (onnxruntime's tools) for `target`: per-channel int8 weights, activation
    ranges from `calibration` (see INT8_TARGETS)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration()

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="gtcompress-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference only: onnxruntime's optimiser would split HardSwish into HardSigmoid * x, which
        # with symmetric int8 activations ran ~6x slower on onnxruntime CPU (measured on MobileNetV3).
        quant_pre_process(str(src), str(prepared), skip_optimization=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            quantize_static(
                str(prepared),
                str(dst),
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=getattr(QuantType, INT8_TARGETS[target]["activations"]),
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                extra_options=INT8_TARGETS[target]["options"],
            )
    onnx.checker.check_model(str(dst), full_check=True)


def calibration_indices(n_train: int, n: int, seed: int = 0) -> np.ndarray:
    """A fixed random sample of `n` training images (all of them when there are fewer)."""
    return np.sort(np.random.default_rng(seed).permutation(n_train)[:n])
