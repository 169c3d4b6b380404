"""int8 diagnosis: every quantized layer of an int8 graph against the fp32 graph, the layer that was damaged found
by its drop, this CPU's int8 kernels against the simulated graph, and the export's diagnosis file beside each int8
graph, which a rejection and the report name the worst layers from.

No measured figure is asserted: SQNRs and agreements are compared with each other and with their definitions."""

import json
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_one_line_error, copy_run, invoke
from onnx import numpy_helper
from torch import nn

from gtcompress.environment import cpu_features
from gtcompress.export.diagnose import WORST, diagnose, kernel_agreement, layer_errors, quantized_layers
from gtcompress.export.graph import export_onnx, quantize_int8
from gtcompress.export.precisions import INT8_FORMATS
from gtcompress.records import Int8Diagnosis
from gtcompress.rundir import RunDir

SIZE, CLASSES = 16, 10
CHAIN = ("features.0.weight", "features.2.weight", "features.4.weight", "features.6.weight", "head.weight")


def chain() -> nn.Module:
    """Four convolutions (three with a ReLU the quantizer folds into them) and a Linear head, one after another:
    each layer's only upstream layer is the one before it."""
    torch.manual_seed(0)
    convs = [nn.Conv2d(a, b, 3, padding=1) for a, b in ((3, 8), (8, 16), (16, 16), (16, 16))]
    features = nn.Sequential(convs[0], nn.ReLU(), convs[1], nn.ReLU(), convs[2], nn.ReLU(), convs[3])
    parts = dict(features=features, pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), head=nn.Linear(16, CLASSES))
    return nn.Sequential(OrderedDict(parts)).eval()


def random_images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, 3, SIZE, SIZE), dtype=np.float32) for _ in range(2)]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, Path]:
    """The chain's fp32 graph and its int8 graphs in each onnxruntime format, calibrated on random images."""
    tmp = tmp_path_factory.mktemp("diagnosis")
    out = {"fp32": tmp / "chain.onnx"}
    export_onnx(chain(), SIZE, out["fp32"])
    for fmt in INT8_FORMATS.values():
        out[fmt.name] = tmp / f"chain.{fmt.name}.onnx"
        quantize_int8(out["fp32"], out[fmt.name], lambda: iter(random_images()), "minmax", fmt)
    return out


def test_every_quantized_layer_is_measured_against_its_fp32_twin(graphs):
    errors = layer_errors(graphs["fp32"], graphs["portable"], random_images())
    quantized = quantized_layers(onnx.load(str(graphs["portable"])).graph)
    assert len(quantized) == len(CHAIN), "every Conv and the Gemm is quantized"
    # one entry per quantized layer, named by its output (the folded ReLUs' included), in graph order
    assert [e.name for e in errors] == [n.output[0] for n in quantized]
    assert [e.weight for e in errors] == list(CHAIN)
    assert [e.op_type for e in errors] == ["Conv"] * 4 + ["Gemm"]
    assert all(math.isfinite(e.sqnr_db) and e.sqnr_db > 0 for e in errors)
    # a chain: each layer's drop is from the layer before it, the first's from the best SQNR of all
    sqnr = [e.sqnr_db for e in errors]
    assert [e.drop_db for e in errors] == pytest.approx([max(sqnr) - sqnr[0], *np.subtract(sqnr[:-1], sqnr[1:])])


def with_negated_weights(path: Path, dst: Path, weight: str, fp32: Path) -> Path:
    """A copy of the int8 graph whose layer with fp32 weight `weight` has its stored int8 weights negated."""
    (name,) = [e.name for e in layer_errors(fp32, path, random_images()[:1]) if e.weight == weight]
    model = onnx.load(str(path))
    producers = {out: n for n in model.graph.node for out in n.output}
    layer = next(n for n in model.graph.node if n.output[0] == name)
    stored = next(t for t in model.graph.initializer if t.name == producers[layer.input[1]].input[0])
    stored.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(stored), stored.name))
    onnx.save(model, str(dst))
    return dst


@pytest.mark.parametrize("damaged", CHAIN[1:3])
def test_a_damaged_layer_is_the_worst_by_drop(graphs, tmp_path, damaged):
    intact = {e.weight: e for e in layer_errors(graphs["fp32"], graphs["portable"], random_images())}
    broken = with_negated_weights(graphs["portable"], tmp_path / "broken.onnx", damaged, graphs["fp32"])
    errors = {e.weight: e for e in layer_errors(graphs["fp32"], broken, random_images())}
    assert errors[damaged].sqnr_db < 0 < intact[damaged].sqnr_db  # its output is about the negative of fp32's
    assert max(errors.values(), key=lambda e: e.drop_db).weight == damaged
    # the layers above it are untouched
    above = CHAIN[: CHAIN.index(damaged)]
    assert [errors[w].sqnr_db for w in above] == pytest.approx([intact[w].sqnr_db for w in above])
    diagnosis = diagnose(graphs["fp32"], broken, random_images(), ["avx2"], "chain.int8.onnx")
    assert diagnosis.layers[0].weight == damaged and f"drop: {damaged} (Conv)" in diagnosis.summary()
    assert diagnosis.layers_measured == len(CHAIN) and diagnosis.images == 16 and diagnosis.cpu_features == ["avx2"]


def test_kernel_agreement_compares_this_cpus_kernels_with_the_simulated_graph(graphs):
    images = random_images()
    assert kernel_agreement(graphs["fp32"], images) == 100.0  # no integer kernel: both runs compute the same
    for fmt in INT8_FORMATS:
        agreed = kernel_agreement(graphs[fmt], images) * 16 / 100
        assert 0 <= agreed <= 16 and agreed == pytest.approx(round(agreed)), "a share of the 16 images"


@pytest.fixture(scope="module")
def rejected(pipeline_run, tmp_path_factory) -> tuple[Path, object]:
    """The pipeline run whose student's int8 graph failed verification (logits within 1e-6 of PyTorch's asked):
    the run and the command's result."""
    run = copy_run(pipeline_run, tmp_path_factory.mktemp("rejected") / "run")
    tolerance = ("--tolerance", "int8.max_abs_diff=1e-6")
    return run, invoke("export", run, "--export-precision", "int8", "--calibration-images", 16, *tolerance)


def test_a_rejected_int8_graph_is_diagnosed_and_its_worst_layers_named(rejected):
    """The diagnosis is written beside the graph whether it is kept or not (test_export checks a kept one's)."""
    run, result = rejected
    diagnosis = RunDir(run).diagnosis("export/student.int8.onnx")
    assert isinstance(diagnosis, Int8Diagnosis) and not (run / "export" / "student.int8.onnx").exists()
    assert diagnosis.file == "student.int8.onnx" and diagnosis.images == 16 and 0 <= diagnosis.kernel_agreement <= 100
    assert diagnosis.layers_measured > WORST == len(diagnosis.layers)
    assert [e.drop_db for e in diagnosis.layers] == sorted((e.drop_db for e in diagnosis.layers), reverse=True)
    assert diagnosis.cpu_features == cpu_features() and RunDir(run).diagnosis("export/student.onnx") is None
    worst = [f"{e.weight or e.name} ({e.op_type})" for e in diagnosis.layers[:3]]
    assert_one_line_error(result, "student.int8.onnx failed verification", *worst, "kernels agree", "--tolerance")
    records = json.loads((run / "metrics.json").read_text())["export_rejected"]
    assert {r["backend"] for r in records} >= {"onnxruntime"}  # and each other ONNX runtime installed
    assert all("failed verification" in r["reason"] and "worst" not in r["reason"] for r in records), "the verdict"

    report = invoke("report", run)
    assert report.exit_code == 0, report.output
    notes = json.loads((run / "report.json").read_text())["notes"]
    assert all(f"not kept on {r['backend']}: {r['reason']}" in notes for r in records)
    assert f"export/student.int8.onnx: {diagnosis.summary()}" in notes
    assert sum(diagnosis.summary() in n for n in notes) == 1, "named once, however many backends rejected it"


@pytest.mark.parametrize(
    "damage, says",
    [
        ("{", "student.int8.diagnosis.json is damaged: not valid JSON"),
        ('{"file": "student.int8.onnx"}', "student.int8.diagnosis.json is damaged: 'images' field required"),
    ],
)
def test_a_damaged_diagnosis_is_one_line(rejected, tmp_path, damage, says):
    run = copy_run(rejected[0], tmp_path / "run")
    (run / "export" / "student.int8.diagnosis.json").write_text(damage)
    assert_one_line_error(invoke("report", run), says, "re-run gtcompress export")
