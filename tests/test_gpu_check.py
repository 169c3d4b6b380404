"""benchmarks/gpu_check.py (make gpu-check): without CUDA it says so, exits non-zero and writes nothing."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_without_cuda_says_so_and_fails(tmp_path):
    code = (
        "import sys, torch; torch.cuda.is_available = lambda: False; sys.path.insert(0, sys.argv[1]); "
        "import gpu_check; sys.exit(gpu_check.main(['--out', sys.argv[2]]))"
    )
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(BENCHMARKS), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "no CUDA device here" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()
