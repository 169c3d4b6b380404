"""int8 graphs: the portable default cannot saturate onnxruntime's x86 kernels without VNNI, the VNNI-only format
can, the check reads the graph's own weights, and an export records its format, the verdict and the host's CPU
features.

Every assertion is about the graph, not about accuracy: they hold on any x86 host, with or without VNNI.
"""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import INT8_TOLERANCE, assert_one_line_error, copy_run, invoke
from onnx import numpy_helper

from gtcompress.environment import cpu_features
from gtcompress.export.exporter import calibration_set, is_up_to_date
from gtcompress.export.graph import (
    export_onnx,
    float_layers,
    head,
    quantize_accuracy_aware,
    quantize_int8,
    saturating_nodes,
)
from gtcompress.export.precisions import INT8_FORMATS, TENSORRT_INT8
from gtcompress.models import ModelSpec, create_model, save_checkpoint
from gtcompress.settings import ExportConfig

ARCH, CLASSES, SIZE = "mobilenetv3_small_050", 10, 32  # pointwise and depthwise convolutions, and a Linear head


def saturating(path: Path) -> list[str]:
    return saturating_nodes(onnx.load(str(path)).graph)


def in_float(path: Path) -> list[str]:
    return float_layers(onnx.load(str(path)).graph)


def random_images():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((8, 3, SIZE, SIZE), dtype=np.float32) for _ in range(2))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    """The model's int8 graph in each format (portable, vnni, tensorrt), calibrated on random images."""
    tmp = tmp_path_factory.mktemp("int8")
    fp32 = tmp / "model.onnx"
    export_onnx(create_model(ARCH, CLASSES).eval(), SIZE, fp32)
    out = {}
    for fmt in (*INT8_FORMATS.values(), TENSORRT_INT8):
        out[fmt.name] = tmp / f"model.{fmt.name}.onnx"
        quantize_int8(fp32, out[fmt.name], random_images, "minmax", fmt)
    return out


def quantized_weights(path: Path) -> dict[str, np.ndarray]:
    """Each quantized Conv/MatMul/Gemm node's stored weights (the initializer its weight DequantizeLinear reads)."""
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    out = {}
    for node in graph.node:
        w = producers.get(node.input[1]) if node.op_type in ("Conv", "MatMul", "Gemm") else None
        if w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits:
            out[node.name] = numpy_helper.to_array(inits[w.input[0]])
    return out


def depthwise(path: Path) -> set[str]:
    graph = onnx.load(str(path)).graph
    groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in graph.node}
    return {name for name, w in quantized_weights(path).items() if groups[name] > 1 and w.shape[1] == 1}


def with_weights(path: Path, dst: Path, limit: int, node: str = "", value: int = 0) -> Path:
    """A copy of the graph whose stored weights are clipped to +-`limit`, but for the first of `node`'s: `value`."""
    model = onnx.load(str(path))
    producers = {out: n for n in model.graph.node for out in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    for name, weights in quantized_weights(path).items():
        changed = np.clip(weights, -limit, limit)
        if name == node:
            changed.flat[0] = value
        init = inits[producers[next(n for n in model.graph.node if n.name == name).input[1]].input[0]]
        init.CopyFrom(numpy_helper.from_array(changed, init.name))
    onnx.save(model, str(dst))
    return dst


def largest_weight(path: Path) -> int:
    return max(int(np.abs(w.astype(np.int32)).max()) for w in quantized_weights(path).values())


def test_the_default_int8_graph_cannot_saturate(graphs):
    assert ExportConfig().int8_format == "portable"
    weights = quantized_weights(graphs["portable"])
    # quantized, with int8 weights reaching the 7-bit limit: the check had real weights to read
    assert len(weights) > 20 and all(w.dtype == np.int8 for w in weights.values())
    assert largest_weight(graphs["portable"]) == 64
    assert saturating(graphs["portable"]) == []


def test_the_vnni_only_graph_can_saturate_in_every_non_depthwise_node(graphs):
    assert largest_weight(graphs["vnni"]) == 127
    exempt = depthwise(graphs["vnni"])
    assert exempt, "the model has depthwise convolutions, whose kernels widen before multiplying"
    assert set(saturating(graphs["vnni"])) == set(quantized_weights(graphs["vnni"])) - exempt


def test_the_tensorrt_graphs_int8_activations_count_as_uint8_on_x86(graphs):
    assert largest_weight(graphs["tensorrt"]) == 127  # TensorRT's graph keeps 8-bit weights: GPUs do not saturate
    # onnxruntime shifts int8 activations to uint8 on x86, so 8-bit weights saturate there as with uint8 ones
    assert set(saturating(graphs["tensorrt"])) == set(saturating(graphs["vnni"]))


def test_the_check_reads_the_stored_weights(graphs, tmp_path):
    graph = graphs["vnni"]
    assert saturating(with_weights(graph, tmp_path / "a.onnx", 64)) == []
    pointwise = sorted(set(quantized_weights(graph)) - depthwise(graph))[0]
    assert saturating(with_weights(graph, tmp_path / "b.onnx", 64, pointwise, -65)) == [pointwise]
    # a depthwise convolution's weights may use all 8 bits
    dw = sorted(depthwise(graph))[0]
    assert saturating(with_weights(graph, tmp_path / "c.onnx", 64, dw, 127)) == []


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained model as a gtcompress checkpoint: the records are what is checked, not its accuracy."""
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    spec = ModelSpec(ARCH, CLASSES, SIZE, (0.5,) * 3, (0.5,) * 3, tuple(map(str, range(CLASSES))))
    save_checkpoint(path, create_model(ARCH, CLASSES), spec, "student", {})
    return path


def export_int8(checkpoint: Path, out: Path, *options: str) -> dict:
    """`gtcompress export --checkpoint ... --precision int8`: its int8 record on onnxruntime."""
    args = ("--dataset", "digits", "--export-precision", "int8", "--calibration-images", 32, "--out", out)
    result = invoke("export", "--checkpoint", checkpoint, *args, "--tolerance", "int8.min_agreement=0", *options)
    assert result.exit_code == 0, result.output
    records = json.loads((out / "metrics.json").read_text())["export"]
    return next(r for r in records if r["precision"] == "int8" and r["backend"] == "onnxruntime")


@pytest.mark.parametrize("fmt, safe", [("portable", True), pytest.param("vnni", False, marks=pytest.mark.slow)])
def test_an_int8_export_records_its_format_its_saturation_verdict_and_the_cpu(checkpoint, tmp_path, fmt, safe):
    record = export_int8(checkpoint, tmp_path, *(() if fmt == "portable" else ("--int8-format", fmt)))
    assert (record["int8_format"], record["saturation_safe"]) == (fmt, safe)
    assert record["saturation_safe"] is (saturating(tmp_path / record["path"]) == [])
    assert record["cpu_features"] == cpu_features()
    fp32 = tmp_path / record["path"].replace(".int8", "")
    assert record["int8_head"] == "float" and record["float_layers"] == [head(fp32)], "the classifier alone in float"
    quantized = export_int8(checkpoint, tmp_path / "int8-head", "--int8-head", "int8", "--int8-format", fmt)
    assert quantized["int8_head"] == "int8" and quantized["float_layers"] == []


def test_an_unknown_int8_format_is_one_line(tmp_path):
    result = invoke("export", "--checkpoint", tmp_path / "m.pt", "--int8-format", "avx2")
    assert_one_line_error(result, "int8 format 'avx2'", "portable", "vnni")


# -- accuracy-aware int8 (NNCF) ------------------------------------------------------------------------------------


def own_predictions(fp32: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random images labelled with the fp32 graph's own top-1: on them the fp32 graph scores 100% by construction,
    and an untrained net's near-tied logits make some flip under int8."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    images = [rng.standard_normal((32, 3, SIZE, SIZE), dtype=np.float32) for _ in range(4)]
    return [(x, session.run(None, {"input": x})[0].argmax(1)) for x in images]


@pytest.mark.slow
def test_accuracy_aware_int8_returns_layers_to_float_until_the_drop_is_within_budget(graphs, tmp_path):
    fp32, portable = graphs["portable"].with_name("model.onnx"), INT8_FORMATS["portable"]
    heldout = own_predictions(fp32)
    made = {}
    for budget in (100.0, 0.0):
        made[budget] = tmp_path / f"budget{budget:g}.onnx"
        before, after = quantize_accuracy_aware(
            fp32, made[budget], random_images, lambda: iter(heldout), budget, portable
        )
        assert before == 100.0 and (before - after <= budget or in_float(made[budget]) == quantizable(fp32))
        assert saturating(made[budget]) == []  # NNCF's overflow fix: the portable format's 7-bit weights
        if budget == 100.0:
            assert after < before, "the setting must cost accuracy for the control to have anything to do"
    assert set(in_float(made[100.0])) < set(in_float(made[0.0]))


def quantizable(graph: Path) -> list[str]:
    return [n.name for n in onnx.load(str(graph)).graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(range(50))


@pytest.mark.parametrize("train", [list(range(50)), Stream()], ids=["map-style", "stream"])
def test_held_out_images_are_not_the_calibration_ones(train):
    calibration, heldout = calibration_set(train, 20), calibration_set(train, 100, skip=20)
    assert len(calibration) == 20 and len(heldout) == 30 and not set(calibration) & set(heldout)


@pytest.mark.slow
def test_a_drop_budget_makes_an_accuracy_aware_int8_export_end_to_end(pipeline_run, tmp_path):
    assert ExportConfig().int8_method == "ptq"  # the default: the fastest graph on onnxruntime's CPU kernels
    run = copy_run(pipeline_run, tmp_path / "run")
    options = ("--export-precision", "int8", "--int8-max-drop", "0.5", "--tolerance", INT8_TOLERANCE)
    result = invoke("export", run, *options)
    assert result.exit_code == 0, result.output
    records = json.loads((run / "metrics.json").read_text())["export"]
    fp32, int8 = (
        next(r for r in records if r["precision"] == p and r["backend"] == "onnxruntime") for p in ("fp32", "int8")
    )
    assert int8["int8_method"] == "accuracy-aware" and int8["int8_max_drop"] == 0.5
    assert int8["float_layers"] == in_float(run / int8["path"])
    within = int8["heldout_reference_top1"] - int8["heldout_top1"] <= 0.5
    assert within or int8["float_layers"] == quantizable(run / fp32["path"])
    assert 0 < int8["heldout_images"] and int8["saturation_safe"] is True
    assert int8["reference_top1"] == fp32["reference_top1"]  # judged against the same float model
    # the workflow redoes a file made with other settings, and only then
    made = ExportConfig(run=run, precisions=("int8",), int8_method="accuracy-aware", int8_max_drop=0.5)
    assert is_up_to_date(made)
    for other in ({"int8_method": "ptq"}, {"int8_max_drop": 1.0}, {"int8_format": "vnni"}):
        assert not is_up_to_date(made.model_copy(update=other)), other
