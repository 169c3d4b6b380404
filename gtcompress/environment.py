"""Where something ran: the machine, the library versions and the command line, captured the same way everywhere.

Runs (config.yaml), bench.json and the benchmarks' JSON all record these, so their numbers can be compared.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from . import __version__


def cpu_name() -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The CPU extensions that decide how fast fp16, bf16 and int8 kernels run (int8 is 2-4x faster with VNNI or AMX).
CPU_FEATURES = (
    "avx2", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16"
)  # fmt: skip
# The ones that give a CPU bf16 arithmetic of its own: without them oneDNN converts bf16 to fp32 around each op.
BF16_FEATURES = ("avx512_bf16", "amx_bf16")


def cpu_features() -> list[str]:
    """Which of CPU_FEATURES this CPU has (`/proc/cpuinfo` flags; empty where there is none)."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [f for f in CPU_FEATURES if f in flags]
    return []


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def gpu_id() -> str:
    """nvidia-smi's id of torch's current GPU: its UUID (torch's index is not NVML's under CUDA_VISIBLE_DEVICES)."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    uuid = getattr(props, "uuid", None)
    return f"GPU-{uuid}" if uuid is not None else str(torch.cuda.current_device())


def nvidia_smi(query: str) -> list[str] | None:
    """The values of `nvidia-smi --query-gpu=query` for torch's current GPU, or None where nvidia-smi fails."""
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader", "-i", gpu_id()],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return [v.strip() for v in out.stdout.strip().split(",")] if out.returncode == 0 and out.stdout.strip() else None


def gpu_clocks() -> dict[str, str] | None:
    """SM/memory clocks (current and maximum) from nvidia-smi, where it exists."""
    query = "clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit"
    values = nvidia_smi(query)
    return dict(zip(query.split(","), values)) if values is not None and len(values) == 5 else None


def machine_info(threads: int | None = None, cuda: bool = False) -> dict[str, Any]:
    """CPU (and its int8/fp16 extensions), cores, threads, OS and (with `cuda`) the GPU, its CUDA version and
    clocks."""
    info: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "cuda": cuda,
    }
    if cuda:
        info.update(gpu=torch.cuda.get_device_name(), cuda_version=torch.version.cuda, gpu_clocks=gpu_clocks())
    return info


def versions() -> dict[str, str]:
    """Versions of gtcompress, Python and the libraries that decide the numbers."""
    import onnxruntime
    import timm
    import torchvision

    out = {
        "gtcompress": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        out["tensorrt"] = tensorrt.__version__
    return out


def command_line() -> str:
    """The command as typed; an installed program's absolute path is shortened to its name (`gtcompress ...`)."""
    return " ".join(Path(a).name if i == 0 and Path(a).is_absolute() else a for i, a in enumerate(sys.argv))
