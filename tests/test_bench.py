"""Benchmark: latency statistics, the timing loop, bench.json, backends detected or skipped, bad input."""

import importlib.util
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BENCH_BATCHES, BENCH_ITERS, BENCH_THREADS, INT8_TOLERANCE, assert_one_line_error, copy_run, invoke

from gtcompress.backends.torch_runner import TorchBackend
from gtcompress.bench import speedup
from gtcompress.environment import CPU_FEATURES
from gtcompress.errors import UserError
from gtcompress.models import create_model
from gtcompress.records import BenchFile, BenchResult, in_order
from gtcompress.settings import BenchConfig, parse_batch_sizes
from gtcompress.timing import latency_stats, time_backend

CONTRACT = {
    "stage": str,
    "backend": str,
    "precision": str,
    "batch_size": int,
    "p50_ms": float,
    "p90_ms": float,
    "p99_ms": float,
    "mean_ms": float,
    "throughput": float,
    "iters": int,
    "cuda_graph": bool,
}
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def bench_json(run: Path) -> dict:
    return json.loads((run / "bench.json").read_text())


def test_latency_stats_match_numpy():
    samples = np.random.default_rng(1).lognormal(0.0, 0.5, size=997)
    stats = latency_stats(samples.tolist(), batch_size=8)
    for key, q in (("p50_ms", 50), ("p90_ms", 90), ("p95_ms", 95), ("p99_ms", 99)):
        assert stats[key] == pytest.approx(np.percentile(samples, q), rel=1e-12)
    assert stats["min_ms"] == samples.min() and stats["max_ms"] == samples.max()
    assert stats["mean_ms"] == pytest.approx(samples.mean()) and stats["std_ms"] == pytest.approx(samples.std())
    assert stats["throughput"] == pytest.approx(8 * 1000 / samples.mean())
    assert stats["iters"] == 997
    assert (
        stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p95_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    )


def test_latency_stats_of_known_values():
    stats = latency_stats([1.0, 2.0, 3.0, 4.0], batch_size=1)
    assert (stats["p50_ms"], stats["mean_ms"], stats["throughput"]) == (2.5, 2.5, 400.0)
    assert stats["p90_ms"] == pytest.approx(3.7)  # linear interpolation: 1 + 0.9 * 3


class Counting:
    """A real backend that also counts its calls."""

    def __init__(self, backend):
        self.backend, self.calls = backend, 0
        self.name, self.precision, self.device = backend.name, backend.precision, backend.device

    def infer(self, x):
        self.calls += 1
        return self.backend.infer(x)


@pytest.fixture(scope="module")
def tiny_backend():
    return Counting(TorchBackend(create_model("test_resnet", 10), "cpu"))


def test_timing_runs_warmup_then_the_counted_calls(tiny_backend):
    x = np.zeros((2, 3, 32, 32), np.float32)
    before = tiny_backend.calls
    samples = time_backend(tiny_backend, x, warmup=3, iters=7, seconds=None)
    assert len(samples) == 7 and tiny_backend.calls - before == 10
    assert all(s > 0 for s in samples)


def test_timing_stops_at_the_time_budget_after_a_minimum_of_calls(tiny_backend):
    x = np.zeros((1, 3, 32, 32), np.float32)
    start = time.perf_counter()
    samples = time_backend(tiny_backend, x, warmup=0, iters=None, seconds=0.2)
    elapsed = time.perf_counter() - start
    assert len(samples) >= 5 and elapsed < 0.2 + 5 * max(samples) / 1000 + 0.1
    assert len(time_backend(tiny_backend, x, warmup=0, iters=None, seconds=1e-9)) == 5  # the minimum
    assert len(time_backend(tiny_backend, x, warmup=0, iters=3, seconds=10)) == 3  # whichever comes first


@pytest.mark.parametrize("text", ["0", "1,-8", "a,b", "", "1.5"])
def test_bad_batch_sizes_are_refused(text):
    with pytest.raises(UserError, match="positive integers"):
        parse_batch_sizes(text)


def test_batch_sizes_parse_in_order_without_duplicates():
    assert parse_batch_sizes("1, 8,32,8") == (1, 8, 32)


def test_default_budget_is_count_and_time_but_either_alone_stays_alone():
    assert BenchConfig().limits() == (200, 2.0)
    assert BenchConfig(iters=50).limits() == (50, None)
    assert BenchConfig(seconds=5).limits() == (None, 5)


def test_bench_json_follows_the_contract(workflow_run):
    bench = bench_json(workflow_run)
    assert {"device", "versions", "results"} <= bench.keys()
    assert {"cpu", "cores", "threads"} <= bench["device"].keys()
    features = bench["device"]["cpu_features"]  # what decides int8 and fp16 speed, checked against torch's own view
    assert set(features) <= set(CPU_FEATURES)
    capability = torch.backends.cpu.get_cpu_capability()
    assert ("avx512f" in features) == capability.startswith("AVX512") and ("avx2" in features) == (
        capability != "DEFAULT"
    )
    assert {"torch", "onnxruntime", "timm", "gtcompress"} <= bench["versions"].keys()
    for r in bench["results"]:
        for key, kind in CONTRACT.items():
            assert isinstance(r[key], kind), (key, r)
        assert r["iters"] == BENCH_ITERS == len(r["samples_ms"])
        assert r["p50_ms"] == pytest.approx(np.percentile(r["samples_ms"], 50), abs=1e-4)
        assert r["bytes"] == (workflow_run / r["artefact"]).stat().st_size
    measured = {(r["stage"], r["backend"], r["precision"], r["batch_size"]) for r in bench["results"]}
    for b in BENCH_BATCHES:
        for model in ("student", "generous_teacher"):
            assert {(model, "torch", "fp32", b), (model, "onnxruntime", "fp32", b)} <= measured
        assert ("student", "onnxruntime", "int8", b) in measured
    for model in ("student", "generous_teacher"):
        assert bench["models"][model]["params"] > 0 and bench["models"][model]["macs"] > 0
    assert bench["models"]["generous_teacher"]["macs"] != bench["models"]["student"]["macs"]


def test_the_gpu_check_summarises_the_runs_bench_rows_and_reads_its_ratios_from_them(workflow_run):
    from benchmarks import gpu_check

    rows = gpu_check._bench_summary(workflow_run)
    results = bench_json(workflow_run)["results"]
    assert rows == [{k: r[k] for k in gpu_check.SUMMARY_KEYS} for r in results]
    threads = max(BENCH_THREADS)
    for b, got in gpu_check.speed(rows)["onnxruntime_student_best_vs_all_threads"].items():
        mine = [r for r in results if (r["stage"], r["backend"], r["precision"], r["batch_size"]) ==
                ("student", "onnxruntime", "fp32", b)]  # fmt: skip
        assert got == {"best": min(r["p50_ms"] for r in mine),
                       "all": next(r["p50_ms"] for r in mine if r["threads"] == threads)}  # fmt: skip


@pytest.mark.slow
def test_the_export_benchmark_exports_every_precision_and_times_each_beside_pytorch(workflow_run, tmp_path):
    import argparse

    from rich.console import Console

    from benchmarks import export
    from gtcompress.rundir import RunDir

    run = RunDir(copy_run(workflow_run, tmp_path / "run"))
    args = argparse.Namespace(threads=1, iters=2, warmup=0, tolerance=[INT8_TOLERANCE])
    got = export.measure(run, "student", args, Console(file=io.StringIO()))
    assert [a["precision"] for a in got["artefacts"]] == list(export.PRECISIONS)
    assert all((run.path / a["path"]).is_file() for a in got["artefacts"])
    timed = {(r["backend"], r["precision"], r["batch_size"]) for r in got["latency"]}
    pairs = [("torch", "fp32"), *(("onnxruntime", p) for p in export.PRECISIONS)]
    assert timed == {(*pair, b) for pair in pairs for b in export.BATCH_SIZES}
    assert all(r["iters"] == 2 and r["p50_ms"] > 0 for r in got["latency"])


@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(), reason="TensorRT can run here, so it is not skipped")
def test_an_unavailable_backend_is_listed_as_skipped_with_its_reason(workflow_run):
    skipped = {s["backend"]: s["reason"] for s in bench_json(workflow_run)["skipped"] if s.get("stage") is None}
    assert "tensorrt" in skipped and ("gtcompress[trt]" in skipped["tensorrt"] or "CUDA" in skipped["tensorrt"])


def test_speedup_is_the_teachers_best_p50_over_the_students(workflow_run):
    bench = BenchFile.model_validate(bench_json(workflow_run))
    student = bench.best("student", "onnxruntime", "int8", 4)
    teachers = [r for r in bench.results if (r.stage, r.backend, r.precision, r.batch_size) ==
                ("generous_teacher", "onnxruntime", "fp32", 4)]  # fmt: skip
    assert student is not None and len(teachers) == len(bench.settings["threads"]) >= 1
    best = min(r.p50_ms for r in teachers)
    assert speedup(bench, student) == pytest.approx(best / student.p50_ms)
    assert speedup(bench, teachers[0]) is None


def test_bench_cli_prints_the_table_and_rewrites_bench_json(workflow_run, tmp_path):
    run = copy_run(workflow_run, tmp_path / "run")
    result = invoke(
        "bench",
        run,
        "--backend",
        "onnxruntime",
        "--precision",
        "int8",
        "--stage",
        "student",
        "--batch-sizes",
        "2",
        "--iters",
        3,
        "--warmup",
        1,
        "--threads",
        "1,2",
    )
    assert result.exit_code == 0, result.output
    assert "gtcompress bench" in result.stdout and "int8" in result.stdout
    bench = bench_json(run)
    got = [
        (r["stage"], r["backend"], r["precision"], r["batch_size"], r["iters"], r["threads"]) for r in bench["results"]
    ]
    assert got == [("student", "onnxruntime", "int8", 2, 3, t) for t in (1, 2)]
    assert bench["settings"]["threads"] == [1, 2] and bench["settings"]["warmup"] == 1


def test_the_old_model_option_still_selects_a_stage_with_a_note(workflow_run, tmp_path):
    run = copy_run(workflow_run, tmp_path / "run")
    options = ("--backend", "onnxruntime", "--precision", "fp32", "--batch-sizes", "1", "--iters", 2, "--threads", 1)
    result = invoke("bench", run, "--model", "generous_teacher", *options)
    assert result.exit_code == 0, result.output
    assert "--model is deprecated" in result.stderr and "--stage" in result.stderr
    assert {r["stage"] for r in bench_json(run)["results"]} == {"generous_teacher"}


def test_cpu_backends_are_timed_at_each_thread_count_and_auto_means_powers_of_two_to_the_cores():
    from gtcompress.backends import BACKENDS, Setting, settings, thread_counts

    assert thread_counts("auto", 16) == (1, 2, 4, 8, 16) and thread_counts("auto", 6) == (1, 2, 4, 6)
    assert thread_counts((3,), 16) == (3,)
    assert settings(BACKENDS["onnxruntime"], "cpu", (1, 4), "both") == [Setting(1), Setting(4)]
    assert settings(BACKENDS["torch"], "cuda", (1, 4), "both") == [Setting(), Setting(cuda_graph=True)]
    assert settings(BACKENDS["torch"], "cuda", (1,), "off") == [Setting()]
    assert settings(BACKENDS["openvino"], "cpu", (2,), "on") == [Setting(2)]


def test_a_run_without_exports_benches_what_exists_and_says_what_is_missing(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    result = invoke("bench", run, "--batch-sizes", "1", "--iters", 2, "--warmup", 0, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert (
        "missing: student fp32 verified on onnxruntime (make it with gtcompress export --stage student)"
        in result.stdout
    )
    assert {r["backend"] for r in bench_json(run)["results"]} == {"torch"}
    if not HAS_TRT:  # printed as it is: rich would take `[trt]` for markup
        assert "skipped tensorrt: tensorrt is not installed (pip install 'gtcompress[trt]'" in result.stdout
    assert_one_line_error(
        invoke("bench", run, "--backend", "onnxruntime", "--iters", 2),
        "nothing in",
        "can run on onnxruntime",
        "gtcompress export",
    )
    assert_one_line_error(
        invoke("bench", run, "--precision", "int8", "--iters", 2),
        "precision int8",
        "gtcompress export --precision int8",
    )


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["--backend", "tensorflow"], ["unknown backend 'tensorflow'", "tensorrt, onnxruntime, openvino, torch"]),
        (["--precision", "int4"], ["unknown precision 'int4'"]),
        (["--stage", "teacher"], ["unknown stage 'teacher'", "generous_teacher"]),
        (["--batch-sizes", "0,8"], ["positive integers"]),
        (["--batch-sizes", "eight"], ["positive integers"]),
        (["--iters", "0"], ["'iters'", "greater than 0"]),
        (["--threads", "0"], ["--threads", "positive integers"]),
        (["--cuda-graph", "sometimes"], ["'cuda_graph'", "'both', 'on' or 'off'"]),
    ],
)
def test_bad_bench_options_are_one_line_errors(workflow_run, args, fragments):
    assert_one_line_error(invoke("bench", workflow_run, *args), *fragments)


@pytest.mark.skipif(HAS_TRT and torch.cuda.is_available(), reason="TensorRT can run here")
def test_asking_for_tensorrt_where_it_cannot_run_is_an_error(workflow_run):
    assert_one_line_error(
        invoke("bench", workflow_run, "--backend", "tensorrt"), "backend tensorrt cannot run here", "gtcompress[trt]"
    )


def test_bench_of_a_directory_that_is_no_run_is_an_error(tmp_path):
    assert_one_line_error(invoke("bench", tmp_path), "no gtcompress run at", "gtcompress distill")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bench_records_the_gpu_and_times_with_events(workflow_run, tmp_path):
    run = copy_run(workflow_run, tmp_path / "run")
    result = invoke("bench", run, "--backend", "torch", "--device", "cuda", "--batch-sizes", "1,4", "--iters", 5)
    assert result.exit_code == 0, result.output
    bench = bench_json(run)
    assert bench["device"]["gpu"] == torch.cuda.get_device_name()
    assert {r["device"] for r in bench["results"]} == {"cuda"}
    assert {r["precision"] for r in bench["results"]} == {"fp32", "fp16"}
    assert {r["cuda_graph"] for r in bench["results"]} == {False, True}, "eager and CUDA-graph rows, labelled"
    assert bench["settings"]["torch_cuda"] == {"tf32": False, "cudnn_benchmark": True}
    assert not torch.backends.cudnn.allow_tf32, "torch fp32 timed like TensorRT's fp32, without TF32"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_int8_onnx_on_the_cuda_provider_is_skipped_with_the_reason(workflow_run, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    run = copy_run(workflow_run, tmp_path / "run")
    result = invoke("bench", run, "--backend", "onnxruntime", "--device", "cuda", "--batch-sizes", "1", "--iters", 5)
    assert result.exit_code == 0, result.output
    bench = bench_json(run)
    assert "int8" not in {r["precision"] for r in bench["results"]}
    assert any(s.get("precision") == "int8" and "no int8 kernels" in s["reason"] for s in bench["skipped"])


def test_an_onnxruntime_cuda_provider_that_falls_back_to_cpu_is_an_error(workflow_run, monkeypatch):
    import onnxruntime

    from gtcompress.backends.onnxruntime_runner import OnnxRuntimeBackend
    from gtcompress.errors import UserError

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("the CUDA provider is really there")
    # as when onnxruntime-gpu is installed but its CUDA libraries do not load: the session runs on CPU
    available = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])
    with (
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),  # onnxruntime's own, easily missed in a log
        pytest.raises(UserError, match="could not start CUDAExecutionProvider .* would run on CPUExecutionProvider"),
    ):
        OnnxRuntimeBackend(workflow_run / "export" / "student.onnx", device="cuda")


STATS = {k: 1.0 for k in ("min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")}


def _result(batch, stage, backend, precision, **setting):
    stats = STATS
    return BenchResult(stage=stage, arch="a", backend=backend, device="cpu", precision=precision, batch_size=batch,
                       artefact="x", bytes=1, throughput=1.0, iters=1, **stats, **setting)  # fmt: skip


def test_results_are_listed_by_batch_then_stage_then_backend_precision_and_setting():
    shuffled = [
        _result(8, "student", "onnxruntime", "fp32"),
        _result(1, "student", "torch", "fp32"),
        _result(1, "generous_teacher", "torch", "fp32"),
        _result(1, "student", "onnxruntime", "int8", threads=2),
        _result(1, "student", "onnxruntime", "int8", threads=1),
        _result(1, "student", "onnxruntime", "fp32"),
    ]
    assert [(r.batch_size, r.stage, r.backend, r.precision, r.threads) for r in in_order(shuffled)] == [
        (1, "generous_teacher", "torch", "fp32", None),
        (1, "student", "onnxruntime", "fp32", None),
        (1, "student", "onnxruntime", "int8", 1),
        (1, "student", "onnxruntime", "int8", 2),
        (1, "student", "torch", "fp32", None),
        (8, "student", "onnxruntime", "fp32", None),
    ]


def test_a_bench_file_of_an_earlier_gtcompress_still_reads():
    old = {"model": "student", "arch": "a", "backend": "onnxruntime", "device": "cpu", "precision": "fp32",
           "batch_size": 1, "artefact": "x", "bytes": 1, "throughput": 1.0, "iters": 1,
           **STATS}  # fmt: skip
    r = BenchResult.model_validate(old)
    assert r.stage == "student" and r.threads is None and r.cuda_graph is False and r.setting.label() == "eager"


def test_the_readme_quotes_the_export_benchmarks_committed_numbers():
    """README "Speed and size" is benchmarks/results/export.json: every file's size, top-1 and p50s."""
    root = Path(__file__).resolve().parent.parent
    result = json.loads((root / "benchmarks/results/export.json").read_text())
    readme = (root / "README.md").read_text()
    section = readme[readme.index("**Speed and size**") : readme.index("## Benchmark and report")]
    rows = {
        tuple(c.strip() for c in line.strip("|").split("|")[:2]): line for line in section.splitlines() if "|" in line
    }
    for stage, model in result["models"].items():
        who = "student" if stage == "student" else "teacher"
        latency = {(r["backend"], r["precision"], r["batch_size"]): r["p50_ms"] for r in model["latency"]}
        for a in model["artefacts"]:
            line = rows[who, f"onnxruntime {a['precision']}"]
            cells = [f"{a['bytes'] / 1e6:.2f}", f"{a['top1']:.2f}"]
            cells += [f"{latency['onnxruntime', a['precision'], b]:.3f}" for b in (1, 32)]
            assert all(f" {c} " in line for c in cells), (line, cells)
        eager = rows[who, "PyTorch eager fp32"]
        assert all(f" {latency['torch', 'fp32', b]:.3f} " in eager for b in (1, 32)), eager
