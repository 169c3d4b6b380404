"""benchmarks/gpu_check.py (make gpu-check): without CUDA it says so, exits non-zero and writes nothing."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_gpu_check_without_cuda_says_so_and_fails(tmp_path):
    code = (
        "import sys, torch; torch.cuda.is_available = lambda: False; "
        "from benchmarks import gpu_check; sys.exit(gpu_check.main(['--out', sys.argv[1]]))"
    )
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "no CUDA device here" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_the_speed_findings_come_from_the_rows():
    from benchmarks import gpu_check

    def row(stage, backend, device, batch, p50, threads=None, graph=False):
        return {"stage": stage, "backend": backend, "device": device, "precision": "fp32", "batch_size": batch,
                "threads": threads, "cuda_graph": graph, "p50_ms": p50}  # fmt: skip

    rows = [
        row("student", "torch", "cuda", 1, 3.0),
        row("student", "torch", "cuda", 1, 0.5, graph=True),
        row("generous_teacher", "torch", "cuda", 1, 0.4, graph=True),
        *(row("student", "onnxruntime", "cpu", 1, p, threads=t) for t, p in ((1, 0.3), (2, 0.4), (16, 1.1))),
    ]
    got = gpu_check.speed(rows)
    assert got["student_cuda_graph_over_eager"] == 6.0
    assert got["student_faster_than_teacher_with_cuda_graphs"] is False
    assert got["onnxruntime_student_best_vs_all_threads"] == {1: {"best": 0.3, "all": 1.1}}
