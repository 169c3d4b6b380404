"""Backends: one small protocol to run a model (torch, onnxruntime, tensorrt), shared by eval, verify and bench.

A backend takes a float32 NCHW batch (numpy, already normalised) and returns float32 logits (N, C).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .errors import UserError


class Backend(Protocol):
    name: str  # "torch" | "onnxruntime" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "bf16" | "int8"
    device: str  # "cpu" | "cuda"

    def run(self, x: np.ndarray) -> np.ndarray: ...


class TorchBackend:
    """PyTorch eager: a model on CPU or CUDA, optionally under fp16/bf16 autocast (CUDA)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", precision: str = "fp32", channels_last: bool = True):
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("the torch backend was asked for CUDA, which is not available", "use device cpu")
        if precision not in ("fp32", "fp16", "bf16"):
            raise UserError(f"the torch backend has no precision '{precision}'", "use fp32, fp16 or bf16")
        if precision == "fp16" and device != "cuda":
            raise UserError("fp16 autocast needs CUDA", "use precision fp32 or bf16 on CPU")
        self.device, self.precision = device, precision
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device, memory_format=self.memory_format)

    @torch.inference_mode()
    def run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device, memory_format=self.memory_format)
        if self.precision == "fp32":
            out = self.model(t)
        else:
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            with torch.autocast(self.device, dtype=dtype):
                out = self.model(t)
        return out.float().cpu().numpy()


class OnnxRuntimeBackend:
    """ONNX Runtime: CPU by default; CUDA or TensorRT execution providers when installed and asked for."""

    name = "onnxruntime"
    PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}

    def __init__(self, path: Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        providers = self.PROVIDERS[device]
        if providers[0] not in ort.get_available_providers():
            raise UserError(f"onnxruntime has no {providers[0]} here",
                            "install onnxruntime-gpu on a CUDA machine, or use device cpu")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"onnxruntime cannot load {path}: {str(e).splitlines()[0]}", "re-run gtcompress export")
        self.input_name = self.session.get_inputs()[0].name
        self.device, self.precision = device, precision

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(
            np.float32, copy=False)
