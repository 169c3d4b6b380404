"""ONNX files: export from PyTorch, fp16 conversion and int8 Q/DQ quantization (onnxruntime's tools)."""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from ..errors import UserError, first_line
from .diagnose import QUANTIZED_OPS, quantized_layers
from .precisions import Int8Format

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
    return model_opset(onnx.load(str(path), load_external_data=False))


def model_opset(model: onnx.ModelProto) -> int:
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


def quantize_int8(
    src: Path,
    dst: Path,
    calibration: Callable[[], Iterator[np.ndarray]],
    method: str,
    fmt: Int8Format,
    in_float: Sequence[str] = (),
) -> None:
    """Static int8 Q/DQ quantization (onnxruntime's tools) in format `fmt`: per-channel int8 weights, activation
    ranges from `calibration`; the nodes named `in_float` stay float."""
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
    options = {
        "ActivationSymmetric": fmt.symmetric_activations,
        "WeightSymmetric": True,
        "QuantizeBias": fmt.quantize_bias,
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
                reduce_range=fmt.reduce_range,
                activation_type=getattr(QuantType, fmt.activations),
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=list(in_float),
                extra_options=options,
            )
    onnx.checker.check_model(str(dst), full_check=True)


def head(path: Path) -> str:
    """The layer that writes the logits: the graph's last Conv, MatMul or Gemm (a timm classifier's Linear)."""
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZED_OPS][-1]


def quantize_accuracy_aware(
    src: Path,
    dst: Path,
    calibration: Callable[[], Iterator[np.ndarray]],
    heldout: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]],
    max_drop: float,
    fmt: Int8Format,
) -> tuple[float, float]:
    """Int8 Q/DQ with NNCF's accuracy control: quantize, measure top-1 on `heldout` (labelled training images
    the calibration did not see), and return to float the layers NNCF ranks most harmful until the drop is at
    most `max_drop` points. `fmt`'s 7-bit weights are NNCF's overflow fix (its answer to the same saturation).
    Returns the held-out top-1 (%) of the fp32 graph and of the int8 one."""
    import logging

    import nncf
    import onnxruntime as ort
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        OverflowFix,
        QuantizationParameters,
    )

    # one image per item: NNCF ranks layers by the per-item metric (a correct top-1, 0 or 1) on subsets of items
    held = [(x[None], y) for xs, ys in heldout() for x, y in zip(xs, ys)]
    calibration_items = [image[None] for batch in calibration() for image in batch]

    def top1(model: onnx.ModelProto, items: Iterable[tuple[np.ndarray, int]]) -> tuple[float, list[float]]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        correct = [float(session.run(None, {INPUT_NAME: x})[0].argmax() == y) for x, y in items]
        return float(np.mean(correct)), correct

    fp32 = onnx.load(str(src))
    reference = top1(fp32, held)[0]  # before NNCF is handed the graph, so nothing it does to it is measured
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
        quantized = nncf.quantize_with_accuracy_control(
            fp32,
            nncf.Dataset(calibration_items, lambda x: {INPUT_NAME: x}),
            nncf.Dataset(held, lambda item: {INPUT_NAME: item[0]}),
            top1,
            max_drop=max_drop / 100,
            subset_size=len(calibration_items),
            preset=nncf.QuantizationPreset.PERFORMANCE if fmt.symmetric_activations else nncf.QuantizationPreset.MIXED,
            advanced_quantization_parameters=AdvancedQuantizationParameters(
                overflow_fix=OverflowFix.ENABLE if fmt.reduce_range else OverflowFix.DISABLE,
                # per tensor: NNCF may quantize a depthwise convolution's input per channel, which onnxruntime's
                # QLinearConv refuses (seen on an untrained MobileNetV3). Their type is NNCF's choice per tensor
                # (int8 where they go negative; forcing uint8 conflicts with its hardware rules): x86 kernels
                # shift int8 activations to uint8, so saturating_nodes judges both alike
                activations_quantization_params=QuantizationParameters(per_channel=False),
            ),
        )
    onnx.checker.check_model(quantized, full_check=True)
    onnx.save(quantized, str(dst))
    return 100 * reference, 100 * top1(quantized, held)[0]


def float_layers(graph: onnx.GraphProto) -> list[str]:
    """The Conv/MatMul/Gemm nodes of a Q/DQ graph that compute in float: all but diagnose.quantized_layers."""
    quantized = {node.output[0] for node in quantized_layers(graph)}
    return [
        node.name or node.output[0]
        for node in graph.node
        if node.op_type in QUANTIZED_OPS and node.output[0] not in quantized
    ]


# VPMADDUBSW adds two uint8 x int8 products into one int16, saturating at its limit.
INT16_MAX, UINT8_MAX = 32767, 255


def saturating_nodes(graph: onnx.GraphProto) -> list[str]:
    """The quantized Conv/MatMul/Gemm nodes of an int8 Q/DQ graph that can saturate on x86 CPUs without VNNI.

    Rule, from onnxruntime's MLAS kernels for AVX2 and AVX-512 without VNNI: its u8s8 GEMM and symmetric
    convolution multiply the stored uint8 activations by the stored int8 weights with VPMADDUBSW (zero points are
    applied after, from row and column sums), adding adjacent pairs into an int16: at most 255 * (|w1| + |w2|).
    Every 8-bit activation reaches 255 there (a uint8 one spans [0, 255] by calibration and QuantizeLinear clamps
    to it; onnxruntime shifts int8 activations to uint8 on x86), so a node can saturate when its weights are int8
    with max |w| > 64: 8-bit rather than 7-bit weights (2 * 255 * 65 > 32767). Safe whatever their values: uint8
    weights (the u8u8 kernels widen both operands to int16), depthwise convolutions (one input and one output
    channel per group: their kernels widen to 32 bits), and nodes not fed two dequantized 8-bit tensors (float).
    An int8 weight that is not an initializer (a MatMul of two activations) may reach 128.
    """
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {t.name: t for t in graph.initializer}
    eight_bit = (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
    risky = []
    for node in graph.node:
        x, w = (producers.get(name) for name in node.input[:2]) if node.op_type in QUANTIZED_OPS else (None, None)
        if not (_is_dequantize(x) and _is_dequantize(w)) or _dequantized_type(x, initializers) not in eight_bit:
            continue
        weights = initializers.get(w.input[0])
        if _dequantized_type(w, initializers) != onnx.TensorProto.INT8 or _depthwise(node, weights):
            continue
        largest = 128 if weights is None else int(np.abs(numpy_helper.to_array(weights).astype(np.int32)).max())
        if 2 * UINT8_MAX * largest > INT16_MAX:
            risky.append(node.name or node.output[0])
    return risky


def _is_dequantize(node: onnx.NodeProto | None) -> bool:
    return node is not None and node.op_type == "DequantizeLinear"


def _dequantized_type(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> int:
    """The integer type a DequantizeLinear reads: its zero point's (uint8 without one, as ONNX defines)."""
    zero_point = node.input[2] if len(node.input) > 2 else ""
    source = initializers.get(zero_point if zero_point in initializers else node.input[0])
    return source.data_type if source is not None else onnx.TensorProto.UINT8


def _depthwise(node: onnx.NodeProto, weights: onnx.TensorProto | None) -> bool:
    """A Conv with one input and one output channel per group (onnxruntime's depthwise kernels)."""
    if node.op_type != "Conv" or weights is None:
        return False
    group = next((a.i for a in node.attribute if a.name == "group"), 1)
    return group > 1 and weights.dims[0] == group and weights.dims[1] == 1


def calibration_indices(n_train: int, n: int, seed: int = 0, skip: int = 0) -> np.ndarray:
    """A fixed random sample of `n` training images (all of them when there are fewer); `skip` leaves out the
    first `skip` of the same order (the calibration images, for a held-out sample)."""
    return np.sort(np.random.default_rng(seed).permutation(n_train)[skip : skip + n])
