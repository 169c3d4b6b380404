"""TensorRT engines built from the exported ONNX files, run on CUDA and verified (GPU machines with TensorRT only)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'gtcompress[trt]' on a CUDA machine)")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="TensorRT needs a CUDA GPU")

from conftest import invoke  # noqa: E402

from gtcompress.backends import Setting  # noqa: E402
from gtcompress.backends.onnxruntime_runner import OnnxRuntimeBackend  # noqa: E402
from gtcompress.backends.tensorrt_runner import TensorRTBackend  # noqa: E402
from gtcompress.config import DataConfig  # noqa: E402
from gtcompress.evaluate import Artefact, load_eval_data  # noqa: E402
from gtcompress.models import load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "fp16", "int8")
MAX_BATCH = 8


@pytest.fixture(scope="module")
def trt_run(pipeline_run, tmp_path_factory) -> Path:
    """A copy of the pipeline run exported to ONNX and TensorRT in every precision, with a Triton repository."""
    run = tmp_path_factory.mktemp("trt") / "run"
    shutil.copytree(pipeline_run, run, symlinks=True)
    # the 2-epoch student's near-tied logits flip under int8 rounding (see test_export.py)
    result = invoke(
        "export",
        run,
        "--export-precision",
        "fp16,int8",
        "--backend",
        "tensorrt",
        "--max-batch",
        MAX_BATCH,
        "--tolerance",
        "int8.min_agreement=50",
        "--triton",
        run.parent / "triton",
    )
    assert result.exit_code == 0, result.output
    return run


def engine_records(run: Path) -> dict[str, dict]:
    records = json.loads((run / "metrics.json").read_text())["export"]
    return {r["precision"]: r for r in records if r["format"] == "engine"}


def test_an_engine_per_precision_is_built_verified_and_recorded(trt_run):
    records = engine_records(trt_run)
    assert set(records) == set(PRECISIONS)
    for precision, r in records.items():
        path = trt_run / "export" / f"student.{precision}.engine"
        assert r["path"] == f"export/student.{precision}.engine" and r["bytes"] == path.stat().st_size
        assert (r["backend"], r["stage"], r["max_batch"]) == ("tensorrt", "student", MAX_BATCH)
        assert r["tensorrt"] and r["gpu"] and r["test_images"] == 360
    # TF32 is off: an fp32 engine reproduces PyTorch's fp32 logits
    assert records["fp32"]["max_abs_diff"] <= 1e-3 and records["fp32"]["top1_agreement"] >= 99.0
    assert records["fp16"]["top1_agreement"] >= 99.0
    assert (trt_run / "export" / "timing.cache").stat().st_size > 0
    assert not [p for p in (trt_run / "export").iterdir() if p.name.endswith(".tmp")]


def test_engine_runs_batches_beyond_its_profile_in_slices(trt_run):
    engine = TensorRTBackend(trt_run / "export" / "student.fp32.engine", "fp32")
    assert (engine.name, engine.precision, engine.device, engine.max_batch) == ("tensorrt", "fp32", "cuda", MAX_BATCH)
    x = np.random.default_rng(0).standard_normal((2 * MAX_BATCH + 3, 3, 32, 32)).astype(np.float32)
    out = engine.infer(x)
    assert out.shape == (len(x), 10) and out.dtype == np.float32
    np.testing.assert_allclose(out, OnnxRuntimeBackend(trt_run / "export" / "student.onnx").infer(x), atol=1e-3)
    np.testing.assert_allclose(engine.infer(x[:1]), out[:1], atol=1e-5)
    graph = TensorRTBackend(trt_run / "export" / "student.fp32.engine", "fp32", Setting(cuda_graph=True))
    for batch in (1, MAX_BATCH, 1):  # replays of a captured graph per shape give the eager results
        np.testing.assert_allclose(graph.infer(x[:batch]), out[:batch], atol=1e-4)
    assert all(b.graph is not None for b in graph.bound.values()) and len(graph.bound) == 2


def test_eval_of_an_engine_matches_its_record(trt_run):
    for precision, r in engine_records(trt_run).items():
        result = invoke("eval", trt_run / r["path"])
        assert result.exit_code == 0, result.output
        assert f"tensorrt {precision}" in result.stdout and f"top-1 {r['top1']:.2f}%" in result.stdout
    with Artefact.of(trt_run / "export" / "student.int8.engine").open("cuda") as runner:
        assert runner.precision == "int8"


def test_rebuild_reuses_the_timing_cache(trt_run, tmp_path):
    first = engine_records(trt_run)
    assert first["fp32"]["timing_cache"] == "new", "the first engine starts the cache"
    assert first["fp32"]["profiles"] == [[1, 1, 1], [2, MAX_BATCH, MAX_BATCH]]  # opt 32 clipped to the max
    assert first["fp16"]["timing_cache"] == first["int8"]["timing_cache"] == "reused"
    run = tmp_path / "run"
    shutil.copytree(trt_run, run, symlinks=True)
    result = invoke("export", run, "--backend", "tensorrt", "--max-batch", MAX_BATCH)
    assert result.exit_code == 0, result.output
    assert engine_records(run)["fp32"]["timing_cache"] == "reused"


def test_triton_repository_holds_the_engines(trt_run):
    root = trt_run.parent / "triton"
    for precision in PRECISIONS:
        model_dir = root / f"student_trt_{precision}"
        plan = (model_dir / "1" / "model.plan").read_bytes()
        assert plan == (trt_run / "export" / f"student.{precision}.engine").read_bytes()
        config = (model_dir / "config.pbtxt").read_text()
        assert 'platform: "tensorrt_plan"' in config and f"max_batch_size: {MAX_BATCH}" in config
        assert "KIND_GPU" in config


def test_tensorrt_deploy_script_matches_the_engine(trt_run, tmp_path):
    if not any(_importable(m) for m in ("cuda.bindings.runtime", "cuda.cudart")):
        pytest.skip("cuda-python is not installed (the deploy script's CUDA buffers)")
    from gtcompress.data import load_splits

    engine = trt_run / "export" / "student.fp16.engine"
    image, _ = load_splits(DataConfig(name="digits")).val[7]
    png = tmp_path / "digit.png"
    image.save(png)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "tensorrt_infer.py"), str(engine), str(png), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    _, spec, _ = load_model(trt_run / "student.pt")
    data = load_eval_data(DataConfig(name="digits"), spec)
    expected = TensorRTBackend(engine, "fp16").infer(data.test[7][0].numpy()[None])
    assert result["class_index"] == int(expected.argmax())


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def test_bench_times_every_engine_and_skips_batches_beyond_the_profile(trt_run):
    result = invoke(
        "bench",
        trt_run,
        "--backend",
        "tensorrt",
        "--stage",
        "student",
        "--batch-sizes",
        f"1,{MAX_BATCH},{MAX_BATCH * 2}",
        "--iters",
        10,
    )
    assert result.exit_code == 0, result.output
    bench = json.loads((trt_run / "bench.json").read_text())
    measured = {(r["precision"], r["batch_size"], r["cuda_graph"]) for r in bench["results"]}
    assert measured == {(p, b, g) for p in PRECISIONS for b in (1, MAX_BATCH) for g in (False, True)}
    assert {r["device"] for r in bench["results"]} == {"cuda"} and bench["device"]["gpu"]
    assert {(s["precision"], s["batch_size"]) for s in bench["skipped"] if s.get("backend") == "tensorrt"} == {
        (p, MAX_BATCH * 2) for p in PRECISIONS
    }


def test_bench_refuses_an_engine_built_for_another_gpu(trt_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trt_run, run, symlinks=True)
    metrics = json.loads((run / "metrics.json").read_text())
    for r in metrics["export"]:
        if r["format"] == "engine":
            r["gpu"] = "NVIDIA Imaginary 9000"
    (run / "metrics.json").write_text(json.dumps(metrics))
    result = invoke("bench", run, "--backend", "tensorrt")
    assert result.exit_code == 2 and "was built for NVIDIA Imaginary 9000" in result.stderr
