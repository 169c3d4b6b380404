"""`make gpu-check`: every check that needs a CUDA GPU, with its results in benchmarks/results/gpu.json.

    python -m benchmarks.gpu_check [--out benchmarks/results/gpu.json]

On a CUDA machine: the CUDA and TensorRT tests, `gtcompress run` on digits trained in bf16, benched with
torch on CUDA eager and replaying CUDA graphs and onnxruntime (CUDA where onnxruntime-gpu is installed, else the
CPU at each thread count), student beside teacher; the untrained pair at 224 px on torch-CUDA (the candidates'
timing); the GPU, driver and versions. TensorRT is run where it is installed; where it is not, gpu.json says so
(it is never skipped silently). Without CUDA it says so and exits 1. Exit code: 0 only if every check passed.
`speed` records the issue's ratios as measured (not pass/fail: they are findings).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from gtcompress.rundir import RunDir

REPO = Path(__file__).resolve().parent.parent
TESTS = [
    "tests/test_cuda.py",
    "tests/test_tensorrt.py",
    "tests/test_backends.py",
    "tests/test_bench.py",
    "tests/test_export.py",
]
RUN_ARGS = [
    "--recipe",
    "recipes/digits.yaml",
    "--teacher",
    "resnet18",
    "--student",
    "mobilenetv3_small_050",
    "--set",
    "precision=bf16",
    "--backend",
    "torch,onnxruntime",
    "--batch-sizes",
    "1,8,32",
    "--iters",
    "100",
]
SUMMARY_KEYS = (
    "stage",
    "backend",
    "device",
    "precision",
    "batch_size",
    "threads",
    "cuda_graph",
    "p50_ms",
    "throughput",
)


def _command(args: list[str], timeout: int = 3600) -> dict[str, Any]:
    """Run a command in the repository; its exit code and the last lines of its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    return {
        "command": " ".join(args),
        "returncode": proc.returncode,
        "seconds": time.perf_counter() - start,
        "tail": tail,
    }


def _tensorrt() -> str:
    try:
        import tensorrt
    except ImportError:
        return (
            "not installed: its libraries come from NVIDIA's index (pip install 'gtcompress[trt]'); the "
            "TensorRT tests skip with that reason"
        )
    return tensorrt.__version__


def _bench_summary(run: Path) -> list[dict[str, Any]]:
    """Every result's setting and p50, from the run's bench.json."""
    return [r.model_dump(mode="json", include=set(SUMMARY_KEYS)) for r in RunDir(run).bench().results]


def _p50(rows: list[dict[str, Any]], **match: Any) -> float | None:
    """The best p50 of the rows matching every key (None where none does)."""
    found = [r["p50_ms"] for r in rows if all(r.get(k) == v for k, v in match.items())]
    return min(found) if found else None


def speed(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's ratios: a CUDA graph against eager for the student at batch 1; the student against the teacher
    with CUDA graphs; onnxruntime's best thread count against all threads, at every batch."""
    torch_b1 = {"backend": "torch", "device": "cuda", "precision": "fp32", "batch_size": 1}
    eager = _p50(rows, stage="student", cuda_graph=False, **torch_b1)
    graph = _p50(rows, stage="student", cuda_graph=True, **torch_b1)
    teacher_graph = _p50(rows, stage="generous_teacher", cuda_graph=True, **torch_b1)
    out: dict[str, Any] = {"student_torch_cuda_b1_ms": {"eager": eager, "cuda_graph": graph}}
    out["student_cuda_graph_over_eager"] = eager / graph if eager and graph else None
    out["teacher_torch_cuda_graph_b1_ms"] = teacher_graph
    out["student_faster_than_teacher_with_cuda_graphs"] = bool(graph and teacher_graph and graph < teacher_graph)
    threads = max((r["threads"] or 0 for r in rows if r["backend"] == "onnxruntime"), default=0)
    out["onnxruntime_student_best_vs_all_threads"] = {
        b: {"best": _p50(rows, stage="student", backend="onnxruntime", precision="fp32", batch_size=b),
            "all": _p50(rows, stage="student", backend="onnxruntime", precision="fp32", batch_size=b, threads=threads)}
        for b in sorted({r["batch_size"] for r in rows})
    }  # fmt: skip
    return out


def at_224() -> dict[str, Any]:
    """The untrained teacher and student at 224 px on torch-CUDA, fp32 and fp16, each at its best setting."""
    from gtcompress.candidates import measure
    from gtcompress.config import RunConfig

    out = {}
    for precision in ("fp32", "fp16"):
        cfg = RunConfig(
            teacher={"arch": "resnet18"},
            student={"arch": "mobilenetv3_small_050"},
            budget={"backend": "torch", "device": "cuda", "precision": precision, "iters": 100},
        )
        result = measure(cfg, 1000, 224, say=lambda line: None)
        out[precision] = {
            r["arch"]: {k: r[k] for k in ("p50_ms", "setting")} for r in [result["teacher"], *result["candidates"]]
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/gpu.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu-check: no CUDA device here (torch.cuda.is_available() is False); run it on a CUDA machine",
            file=sys.stderr,
        )
        return 1
    from gtcompress.environment import machine_info, nvidia_smi, versions
    from gtcompress.files import write_json

    result: dict[str, Any] = {
        "benchmark": "gpu-check",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            **machine_info(torch.get_num_threads(), cuda=True),
            "driver": (nvidia_smi("driver_version") or [None])[0],
        },
        "versions": versions(),
        "tensorrt": _tensorrt(),
    }
    save = lambda: write_json(args.out, result)  # noqa: E731  after each part: a cut-short check keeps what it did
    result["run"] = _run()
    save()
    result["at_224px"] = at_224()
    save()
    result["tests"] = _command([sys.executable, "-m", "pytest", "-q", "-rs", *TESTS])
    save()
    ok = result["tests"]["returncode"] == 0 and result["run"]["returncode"] == 0
    print(f"gpu-check on {result['machine']['gpu']}: {'passed' if ok else 'FAILED'}; wrote {args.out}")
    return 0 if ok else 1


def _run() -> dict[str, Any]:
    """`gtcompress run` on digits in bf16, its accuracy, every bench row and the speed findings."""
    with tempfile.TemporaryDirectory(prefix="gtcompress-gpu-check-") as tmp:
        run = Path(tmp) / "run"
        result = _command([sys.executable, "-m", "gtcompress", "run", *RUN_ARGS, "--out", str(run)])
        if result["returncode"] == 0:
            result["metrics"] = {k: v.top1 for k, v in RunDir(run).stage_records().items()}
            result["bench"] = _bench_summary(run)
            result["speed"] = speed(result["bench"])
    return result


if __name__ == "__main__":
    sys.exit(main())
