"""OpenVINO: an exported ONNX file (fp32, fp16 weights, or int8 Q/DQ) on the CPU runtime many Intel and AMD
servers deploy with, compiled for latency with a chosen thread count.

The CPU plugin would otherwise pick its own inference precision (bf16 where the CPU has it): the hint is f32,
so an artefact's precision is the one it was exported at (fp16 weights, int8 Q/DQ), as on onnxruntime.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, first_line
from . import BACKENDS, Backend, Setting


def missing(device: str) -> str | None:
    if importlib.util.find_spec("openvino") is None:
        return f"openvino is not installed ({BACKENDS['openvino'].install})"
    return None


@functools.cache
def core() -> Any:
    """One Core for the process. Each Core's CPU plugin sets the main thread's alternate signal stack and, when the
    Core goes, restores the one it found and unmaps its own (openvinotoolkit/openvino#11894): Cores closed out of
    order left the thread on an unmapped stack, and the next signal handled in Python killed the process."""
    import openvino as ov

    return ov.Core()


def open(source: Path, device: str, precision: str, setting: Setting) -> OpenVINOBackend:
    return OpenVINOBackend(Path(source), precision, setting)


class OpenVINOBackend(Backend):
    """A model compiled by OpenVINO's CPU plugin; one infer request reused across calls."""

    name = "openvino"
    device = "cpu"

    def __init__(self, path: Path, precision: str = "fp32", setting: Setting = Setting()):
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if setting.threads:
            config["INFERENCE_NUM_THREADS"] = setting.threads
        try:
            self.compiled = core().compile_model(str(path), "CPU", config)
        except RuntimeError as e:  # OpenVINO raises RuntimeError for files it cannot read or convert
            raise UserError(f"openvino cannot load {Path(path).name}: {first_line(e)}", "re-run gtcompress export")
        self.request = self.compiled.create_infer_request()
        self.precision, self.setting = precision, setting

    def close(self) -> None:
        """Release the compiled model and its request (the process's Core stays: see `core`)."""
        self.request = self.compiled = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)
