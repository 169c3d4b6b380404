"""The backend registry: one entry per runtime, and every consumer offers exactly its entries."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PAIR, copy_run, invoke
from typer.testing import CliRunner

from gtcompress.backends import BACKENDS, Setting, artefact_kind, backend, runs
from gtcompress.cli import app
from gtcompress.config import BudgetConfig
from gtcompress.errors import UserError
from gtcompress.settings import BenchConfig
from gtcompress.typed import validate


def _help(command: str) -> str:
    text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400"}).stdout
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def test_bench_eval_candidates_and_distill_offer_exactly_the_registrys_backends():
    names = " | ".join(BACKENDS)
    for command in ("bench", "eval", "candidates", "distill", "run"):
        assert names in _help(command), command
    assert BenchConfig(backends=tuple(BACKENDS)).backends == tuple(BACKENDS)
    assert all(BudgetConfig(backend=name).backend == name for name in BACKENDS)
    for wrong in (BenchConfig, BudgetConfig):
        field = "backends" if wrong is BenchConfig else "backend"
        value = ("tflite",) if wrong is BenchConfig else "tflite"
        with pytest.raises(UserError, match="unknown backend 'tflite'"):
            validate(wrong, {field: value})


def test_a_new_registry_entry_is_offered_without_other_edits(monkeypatch):
    from dataclasses import replace

    monkeypatch.setitem(BACKENDS, "onnxruntime-copy", replace(BACKENDS["onnxruntime"], name="onnxruntime-copy"))
    assert BenchConfig(backends=("onnxruntime-copy",)).backends == ("onnxruntime-copy",)
    assert BudgetConfig(backend="onnxruntime-copy").backend == "onnxruntime-copy"
    assert [s.name for s in runs("onnx")] == ["onnxruntime", "openvino", "onnxruntime-copy"]


@pytest.fixture
def npz_backend(monkeypatch):
    """A backend with an artefact of its own (tests/npz_runner.py), registered in one entry."""
    import npz_runner

    from gtcompress.backends import BackendSpec, Loader

    monkeypatch.setitem(sys.modules, "gtcompress.backends.npz_runner", npz_runner)
    spec = BackendSpec("npz", "npz", {"cpu": ("fp32",)}, "it is a test's", loader=Loader(".npz", "model", "cpu"))
    monkeypatch.setitem(BACKENDS, "npz", spec)
    return spec


@pytest.mark.slow
def test_a_backend_with_its_own_artefact_is_built_verified_timed_evaluated_and_reported(
    npz_backend, pipeline_run, tmp_path
):
    run = copy_run(pipeline_run, tmp_path / "run")
    result = invoke("export", run, "--backend", "npz")
    assert result.exit_code == 0, result.output
    record = next(r for r in json.loads((run / "metrics.json").read_text())["export"] if r["backend"] == "npz")
    assert (record["path"], record["format"]) == ("export/student.fp32.npz", "npz") and record["arrays"] > 0
    assert record["top1_agreement"] == 100.0 and record["max_abs_diff"] < 1e-4, "verified against PyTorch"
    evaluated = invoke("eval", run / "export" / "student.fp32.npz")
    assert evaluated.exit_code == 0 and f"(npz fp32): top-1 {record['top1']:.2f}%" in evaluated.stdout
    bench = invoke("bench", run, "--backend", "npz", "--batch-sizes", "1", "--iters", "5", "--threads", "1")
    assert bench.exit_code == 0, bench.output
    assert {r["backend"] for r in json.loads((run / "bench.json").read_text())["results"]} == {"npz"}
    assert invoke("report", run).exit_code == 0
    assert json.loads((run / "report.json").read_text())["backends"] == ["npz"]
    checked = invoke("candidates", *PAIR, "--budget-backend", "npz", "--set", "budget.iters=5")
    assert checked.exit_code == 0 and "candidates on npz fp32 (cpu)" in checked.stdout, checked.output


def test_each_entry_runs_one_kind_of_artefact_and_says_why_it_cannot_run():
    assert {spec.artefact for spec in BACKENDS.values()} == {"checkpoint", "onnx", "engine"}
    assert artefact_kind("x/student.int8.onnx") == BACKENDS["openvino"].kind and not artefact_kind("x.onnx").model
    assert artefact_kind("a.pt") == BACKENDS["torch"].kind and artefact_kind("a.pt").model, "torch runs the model"
    assert artefact_kind("s.fp16.engine") == BACKENDS["tensorrt"].kind and not BACKENDS["tensorrt"].kind.model
    with pytest.raises(UserError, match="not a model artefact"):
        artefact_kind("notes.txt")
    assert BACKENDS["openvino"].missing("cuda") == "openvino does not run on cuda (it runs on cpu)"
    assert "no int8 kernels" in BACKENDS["onnxruntime"].lacks("cuda", "int8")
    assert BACKENDS["torch"].lacks("cpu", "bf16") is None and "no precision fp16" in BACKENDS["torch"].lacks(
        "cpu", "fp16"
    )
    with pytest.raises(UserError, match="unknown backend 'tvm'"):
        backend("tvm")


def test_every_onnx_runtime_verifies_exports_and_every_cpu_runtime_sweeps_threads(monkeypatch):
    from dataclasses import replace

    from gtcompress.backends import settings

    assert [s.name for s in BACKENDS.values() if s.onnx_verifier] == ["onnxruntime", "openvino"]
    monkeypatch.setitem(BACKENDS, "ncnn", replace(BACKENDS["openvino"], name="ncnn"))
    assert BACKENDS["ncnn"].onnx_verifier and not BACKENDS["tensorrt"].onnx_verifier
    for spec in BACKENDS.values():
        if "cpu" in spec.devices:
            assert settings(spec, "cpu", (1, 2), "both") == [Setting(threads=1), Setting(threads=2)], spec.name
    assert settings(BACKENDS["tensorrt"], "cuda", (1, 2), "both") == [Setting(), Setting(cuda_graph=True)]


def test_settings_are_labelled_as_a_deployment_names_them():
    assert [Setting(1).label(), Setting(8).label(), Setting(cuda_graph=True).label(), Setting().label()] == [
        "1 thread",
        "8 threads",
        "CUDA graph",
        "eager",
    ]


def test_cuda_graphs_need_cuda():
    from gtcompress.backends.torch_runner import TorchBackend
    from gtcompress.models import create_model

    with pytest.raises(UserError, match="CUDA graphs need the cuda device"):
        TorchBackend(create_model("test_resnet", 10), "cpu", setting=Setting(cuda_graph=True))


def test_eval_on_a_backend_that_does_not_run_the_file_is_one_line(workflow_run):
    result = invoke("eval", workflow_run / "export" / "student.onnx", "--backend", "torch")
    assert result.exit_code == 2 and "backend torch does not run student.onnx" in result.stderr


def test_a_signal_after_openvino_backends_closed_out_of_order(tmp_path):
    """Each OpenVINO Core's CPU plugin installs an alternate signal stack for the main thread and, when closed,
    restores the one it found and unmaps its own. Closed out of order (bench replaces one backend by the next), the
    main thread was left on an unmapped stack, and the next signal with a Python handler (the SIGCHLD that a
    DataLoader with workers handles) killed the process. Run in a child, so a crash is a failure."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")
    script = f"""
import os, signal, numpy as np, torch
from gtcompress.backends import Setting
from gtcompress.backends.openvino_runner import OpenVINOBackend
path = {str(tmp_path / "conv.onnx")!r}
torch.onnx.export(torch.nn.Conv2d(3, 4, 3), torch.zeros(1, 3, 8, 8), path, dynamo=False)
for threads in (1, 2):
    backend = OpenVINOBackend(path, setting=Setting(threads))
    backend.infer(np.zeros((1, 3, 8, 8), np.float32))
del backend
signal.signal(signal.SIGUSR1, lambda *_: print("handled"))
os.kill(os.getpid(), signal.SIGUSR1)
"""
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert (child.returncode, child.stdout.split()) == (0, ["handled"]), child.stderr[-2000:]


@pytest.mark.slow
def test_a_loader_with_workers_after_openvino_in_the_same_process(workflow_run, tmp_path):
    """After bench timed OpenVINO at two thread counts, a training run in the same process with loader workers
    crashed the process (it killed a pytest worker): the out-of-order Cores above, end to end. Run in a child."""
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e '.[openvino]')")
    run = copy_run(workflow_run, tmp_path / "timed")
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import distill, invoke
from test_timmdata import write_parquet_digits
r = invoke("bench", {str(run)!r}, "--backend", "openvino", "--batch-sizes", "1", "--iters", "5", "--threads", "1,2")
assert r.exit_code == 0, r.output
hf = write_parquet_digits(Path({str(tmp_path / "hf")!r}))
r = distill("--dataset", f"hfds/{{hf}}", "--img-size", "32", "--epochs", "1", "--set", "data.workers=2",
            "--out", {str(tmp_path / "run")!r})
assert r.exit_code == 0, r.output
"""
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-2000:]
