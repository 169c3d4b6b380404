"""Per-layer diagnosis of an int8 Q/DQ graph: which quantized layers lose the most against the fp32 graph, and
whether this CPU's int8 kernels compute what the graph means. onnx, onnxruntime and numpy only.

Layers are matched by the output name of their compute node, which onnxruntime's quantizer keeps from the fp32
graph (but for a layer writing a graph output: `_fp32_name`), not by the names it gives its Q/DQ tensors, which
qdq_loss_debug's create_activation_matching relies on and other quantizers (NNCF) do not share. Both graphs run
with onnxruntime's graph optimizations off, so every layer's float output exists: the int8 graph computes
DequantizeLinear, float op, QuantizeLinear, which is what exact int32 accumulation computes; `kernel_agreement`
compares that with this CPU's integer kernels.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..records import Int8Diagnosis, LayerError

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")
# Activations a quantizer folds into the compute node before them (onnxruntime's Conv + Relu): the fused node
# writes the activation's output name.
FOLDED = ("Relu", "Clip")
SHAPE_OPS = ("Shape", "Size")  # their outputs follow shapes, not values: the walk upstream does not cross them
WORST = 10  # the layers a diagnosis lists


def diagnose(
    float_onnx: Path, int8_onnx: Path, images: Iterable[np.ndarray], cpu_features: list[str], file: str = ""
) -> Int8Diagnosis:
    """The int8 graph's worst layers by SQNR drop and its kernel agreement, on `images` (batches, read once);
    `file` names the graph (default: `int8_onnx`'s name)."""
    batches = list(images)
    layers = sorted(layer_errors(float_onnx, int8_onnx, batches), key=lambda e: e.drop_db, reverse=True)
    return Int8Diagnosis(
        file=file or int8_onnx.name,
        images=sum(len(x) for x in batches),
        layers_measured=len(layers),
        layers=layers[:WORST],
        kernel_agreement=kernel_agreement(int8_onnx, batches),
        cpu_features=cpu_features,
    )


def layer_errors(float_onnx: Path, int8_onnx: Path, images: Iterable[np.ndarray]) -> list[LayerError]:
    """Each quantized Conv/MatMul/Gemm of the int8 graph found in the fp32 graph, in graph order: the SQNR of its
    output against the fp32 layer's over `images`, and its drop from its nearest matched layers upstream."""
    float_graph = onnx.load(str(float_onnx)).graph
    twins = matching(float_graph, onnx.load(str(int8_onnx)).graph)
    signal, noise, feed = dict.fromkeys(twins, 0.0), dict.fromkeys(twins, 0.0), _input_name(float_graph)
    with tempfile.TemporaryDirectory(prefix="gtcompress-diagnose-") as tmp:
        exposed = _exposed(float_onnx, Path(tmp) / "float.onnx"), _exposed(int8_onnx, Path(tmp) / "int8.onnx")
        for x in images:  # energies summed batch by batch: every image's activations at once would be gigabytes
            reference, quantized = (_activations(model, feed, x) for model in exposed)
            for name, twin in twins.items():
                signal[name] += float(np.square(reference[twin.output[0]], dtype=np.float64).sum())
                noise[name] += float(np.square(reference[twin.output[0]] - quantized[name], dtype=np.float64).sum())
    sqnr = {name: sqnr_db(signal[name], noise[name]) for name in twins}
    drops = _drops(float_graph, {twin.output[0]: sqnr[name] for name, twin in twins.items()})
    weights = {t.name for t in float_graph.initializer}
    return [
        LayerError(
            name=name,
            op_type=twin.op_type,
            weight=twin.input[1] if twin.input[1] in weights else None,
            sqnr_db=sqnr[name],
            drop_db=drops[twin.output[0]],
        )
        for name, twin in twins.items()
    ]


def sqnr_db(signal: float, noise: float) -> float:
    """20 log10(|x| / |x - y|) from the summed squares of x and x - y, both norms floored at float eps (as
    qdq_loss_debug's compute_signal_to_quantization_noice_ratio, which needs every activation in memory at once)."""
    eps = float(np.finfo(float).eps)
    return 20 * math.log10(max(math.sqrt(signal), eps) / max(math.sqrt(noise), eps))


def matching(float_graph: onnx.GraphProto, int8_graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """The int8 graph's quantized layers found in the fp32 graph: output name -> the fp32 node of the same op type
    writing that tensor, or followed by the activation writing it that the quantizer folded into the layer
    (FOLDED; the int8 layer's float output is then the one before the activation, as the fp32 node's)."""
    producers, out = _producers(float_graph), {}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in int8_graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in quantized_layers(int8_graph):
        twin = producers.get(_fp32_name(node.output[0], consumers, producers))
        if twin is not None and twin.op_type in FOLDED:
            twin = producers.get(twin.input[0])
        if twin is not None and twin.op_type == node.op_type:
            out[node.output[0]] = twin
    return out


def _fp32_name(name: str, consumers: dict[str, list[onnx.NodeProto]], known: dict[str, onnx.NodeProto]) -> str:
    """`name`, or where the fp32 graph has no such tensor, the output of the QuantizeLinear, DequantizeLinear pair
    it feeds: a quantizer renames the layer writing a graph output to put Q/DQ before the output."""
    chain = [name]
    for op in ("QuantizeLinear", "DequantizeLinear"):
        after = consumers.get(chain[-1], [])
        chain += [after[0].output[0]] if len(after) == 1 and after[0].op_type == op else []
    return chain[-1] if name not in known and len(chain) == 3 else name


def quantized_layers(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The Conv/MatMul/Gemm nodes fed two dequantized tensors (activation and weight)."""
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return [n for n in graph.node if n.op_type in QUANTIZED_OPS and set(n.input[:2]) <= dequantized]


def _drops(graph: onnx.GraphProto, sqnr: dict[str, float]) -> dict[str, float]:
    """Each layer's drop: the best SQNR among its nearest matched layers upstream, minus its own. A layer the graph
    input reaches counts the input as the best SQNR any layer has (the input is at least that clean)."""
    best, producers = max(sqnr.values(), default=0.0), _producers(graph)
    inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    above = {name: upstream(producers, inputs, name, set(sqnr)) for name in sqnr}
    return {
        name: max((best if u is None else sqnr[u] for u in above[name]), default=best) - sqnr[name] for name in sqnr
    }


def upstream(producers: dict[str, onnx.NodeProto], inputs: set[str], name: str, matched: set[str]) -> set[str | None]:
    """The matched tensors nearest above the node writing `name`, walking `producers` back until a matched tensor
    or a graph input (None)."""
    found: set[str | None] = set()
    seen, todo = {name}, list(producers[name].input)
    while todo:
        tensor = todo.pop()
        if not tensor or tensor in seen:
            continue
        seen.add(tensor)
        if tensor in matched or tensor in inputs:
            found.add(tensor if tensor in matched else None)
        elif tensor in producers and producers[tensor].op_type not in SHAPE_OPS:
            todo.extend(producers[tensor].input)
    return found


def kernel_agreement(int8_onnx: Path, images: Iterable[np.ndarray]) -> float:
    """% of images whose top-1 is the same on this CPU's int8 kernels (onnxruntime's graph optimizations on:
    QLinearConv and kin) as in the graph simulated in float (optimizations off: DequantizeLinear, float op,
    QuantizeLinear). On x86 without VNNI a graph with 8-bit weights saturates those kernels: it agrees less."""
    import onnxruntime as ort

    levels = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    simulated, kernels = (_session(int8_onnx, level) for level in levels)
    feed = simulated.get_inputs()[0].name
    same = total = 0
    for x in images:
        top1 = [s.run(None, {feed: x})[0].argmax(1) for s in (simulated, kernels)]
        same, total = same + int((top1[0] == top1[1]).sum()), total + len(x)
    return 100 * same / total if total else 100.0


def _exposed(src: Path, dst: Path) -> Path:
    """A copy of the graph whose Conv/MatMul/Gemm nodes also output their tensors (onnxruntime's tool)."""
    from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

    modify_model_output_intermediate_tensors(str(src), str(dst), list(QUANTIZED_OPS))
    return dst


def _activations(exposed: Path, feed: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The exposed tensors of one batch, flattened, by name (a session with graph optimizations off, so the
    float outputs of the int8 graph's layers exist rather than being fused into integer kernels)."""
    from onnxruntime.quantization.qdq_loss_debug import collect_activations

    return {name: arrays[0] for name, arrays in collect_activations(str(exposed), iter([{feed: x}])).items()}


def _input_name(graph: onnx.GraphProto) -> str:
    initializers = {t.name for t in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def _session(path: Path, level: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = level
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}
