"""Quantization-aware distillation (`--qat`): a student's copy fine-tuned with NNCF's fake quantizers on the
student's objective, resumable, saved as float weights that the int8 export quantizes, and a candidate beside its
student, not one of its controls."""

import json

import pytest
import torch
from conftest import (
    INT8_TOLERANCE,
    PAIR,
    STUDENT,
    assert_one_line_error,
    assert_recorded_accuracy_is_the_saved_models,
    copy_run,
    interrupted,
    invoke,
)

from gtcompress.models import create_model, load_model
from gtcompress.qat import fake_quantize, float_weights
from gtcompress.rundir import RunDir
from gtcompress.stages import controls_of, distilled_students, stage_records


def test_fake_quantizers_use_the_portable_grid_and_give_back_the_float_weights():
    from nncf.torch.function_hook import get_hook_storage

    torch.manual_seed(0)
    model = create_model(STUDENT, 10).eval()
    names = list(model.state_dict())
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    weights = {id(m): m.weight.detach().clone() for m in layers}
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        reference = model(x)
    quantized = fake_quantize(model, iter([x[:8], x[8:], x]), images=16)
    assert quantized.training, "ready to be trained"
    hooks = get_hook_storage(quantized).named_hooks()
    grids = [(m.level_low, m.level_high) for name, m in hooks if name.startswith("pre_hooks") and "__1." in name]
    # NNCF leaves some patterns' layers in float (the squeeze-excitation gates here); the rest have 7-bit weights
    assert len(layers) / 2 < len(grids) <= len(layers) and set(grids) == {(-63, 63)}, grids
    with torch.no_grad():
        out = quantized.eval()(x)
    assert torch.isfinite(out).all() and not torch.equal(out, reference), "the forward pass is fake-quantized"
    state = float_weights(quantized)
    assert list(state) == names, "the model's own tensors, none of the quantizers'"
    assert all(torch.equal(m.weight, weights[id(m)]) for m in layers), "the weights themselves are not rounded"


@pytest.mark.slow
def test_qat_copies_the_student_resumes_exports_in_int8_and_is_a_candidate_not_a_control(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ("distill", *PAIR, "--epochs", 1, "--qat", 2, "--out", out, "--set", "data.train_fraction=0.3")
    first = interrupted(monkeypatch, "student_qat", *args)
    assert first.exit_code == 130, first.output
    result = invoke("distill", "--resume", "--out", out)
    assert result.exit_code == 0, result.output
    assert "student_qat: resuming after epoch 1/2" in result.output

    history = RunDir(out).history()
    lrs = {s: max(r["lr"] for r in history if r["stage"] == s) for s in ("student", "student_qat")}
    assert [r["epoch"] for r in history if r["stage"] == "student_qat"] == [1, 2]
    assert lrs["student_qat"] <= 0.01 * 0.05 + 1e-12, lrs  # the student's peak lr times qat.lr_factor
    qat = json.loads((out / "metrics.json").read_text())["student_qat"]
    assert (qat["qat"], qat["qat_epochs"], qat["teacher_stage"], qat["title"]) == (
        True, 2, "generous_teacher", "student <- GT QAT"
    )  # fmt: skip
    assert 0 <= qat["trained_top1"] <= 100, "the fake-quantized model's top-1 beside the saved one's"
    assert_recorded_accuracy_is_the_saved_models(qat, out / "student_qat.pt")
    copy, student = load_model(out / "student_qat.pt")[0], load_model(out / "student.pt")[0]
    pairs = zip(copy.state_dict().values(), student.state_dict().values())
    assert not all(torch.equal(a, b) for a, b in pairs), "fine-tuned from the student"

    records = stage_records(RunDir(out))
    assert distilled_students(records) == ["student"]
    assert distilled_students(records, qat=True) == ["student", "student_qat"]
    assert controls_of(records, "student") == {} and controls_of(records, "student_qat") == {}

    exported = invoke(
        "export", out, "--stage", "student_qat", "--export-precision", "int8", "--tolerance", INT8_TOLERANCE
    )
    assert exported.exit_code == 0, exported.output
    records = json.loads((out / "metrics.json").read_text())["export"]
    int8 = next(r for r in records if r["path"] == "export/student_qat.int8.onnx" and r["backend"] == "onnxruntime")
    assert int8["saturation_safe"] is True and int8["int8_format"] == "portable"
    assert int8["reference_top1"] == pytest.approx(qat["top1"]), "verified against the saved float weights"


@pytest.mark.slow
def test_export_qat_fine_tunes_a_finished_runs_student_and_exports_the_copy(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    before = RunDir(run).history()
    options = ("--export-precision", "int8", "--tolerance", INT8_TOLERANCE)
    result = invoke("export", run, "--qat", 2, *options)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["student_qat"]["qat_epochs"] == 2 and RunDir(run).saved_config().student.qat.epochs == 2
    assert {"export/student_qat.onnx", "export/student_qat.int8.onnx"} <= {r["path"] for r in metrics["export"]}
    trained = RunDir(run).history()[len(before) :]
    assert [(r["stage"], r["epoch"]) for r in trained] == [("student_qat", 1), ("student_qat", 2)], "only the copy"
    again = invoke("export", run, "--qat", 3, *options)
    assert_one_line_error(again, "already trains student_qat with 2 QAT epochs", "pass --qat 2")
    teacher = invoke("export", run, "--qat", 3, "--stage", "generous_teacher")
    assert_one_line_error(teacher, "--qat fine-tunes a student")
    assert RunDir(run).saved_config().student.qat.epochs == 2, "a refused command writes nothing"
