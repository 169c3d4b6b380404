"""`make gpu-check`: every check that needs a CUDA GPU, with its results in benchmarks/results/gpu.json.

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu.json]

On a CUDA machine: the CUDA and TensorRT tests, `gtcompress run` on digits trained in bf16, benched with
torch-CUDA and onnxruntime-CUDA (student vs teacher), and the GPU, driver and versions. TensorRT is run
where it is installed; where it is not, gpu.json says so (it is never skipped silently). Without CUDA it
says so and exits 1. Exit code: 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
TESTS = ["tests/test_cuda.py", "tests/test_tensorrt.py", "tests/test_bench.py", "tests/test_export.py"]
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
]


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
    """Student vs teacher p50 per backend, precision and batch, from the run's bench.json."""
    bench = json.loads((run / "bench.json").read_text())
    keys = ("model", "backend", "device", "precision", "batch_size", "p50_ms", "throughput")
    return [{k: r[k] for k in keys} for r in bench["results"]]


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
    result["tests"] = _command([sys.executable, "-m", "pytest", "-q", "-rs", *TESTS])
    with tempfile.TemporaryDirectory(prefix="gtcompress-gpu-check-") as tmp:
        run = Path(tmp) / "run"
        result["run"] = _command([sys.executable, "-m", "gtcompress", "run", *RUN_ARGS, "--out", str(run)])
        if result["run"]["returncode"] == 0:
            result["run"]["metrics"] = {
                k: v["top1"]
                for k, v in json.loads((run / "metrics.json").read_text()).items()
                if isinstance(v, dict) and "top1" in v
            }
            result["bench"] = _bench_summary(run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    ok = result["tests"]["returncode"] == 0 and result["run"]["returncode"] == 0
    print(f"gpu-check on {result['machine']['gpu']}: {'passed' if ok else 'FAILED'}; wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
