"""Backends: one small protocol to run a model (torch, onnxruntime, tensorrt), shared by eval, verify and bench.

A backend takes a float32 NCHW batch (numpy, already normalised) and returns float32 logits (N, C).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from .errors import UserError, first_line
from .rundir import parse_artefact_name


class Backend(Protocol):
    name: str  # "torch" | "onnxruntime" | "tensorrt"
    precision: str  # "fp32" | "fp16" | "bf16" | "int8"
    device: str  # "cpu" | "cuda"

    def infer(self, x: np.ndarray) -> np.ndarray: ...


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
    def infer(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(x).to(self.device, memory_format=self.memory_format)
        if self.precision == "fp32":
            out = self.model(t)
        else:
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            with torch.autocast(self.device, dtype=dtype):
                out = self.model(t)
        return out.float().cpu().numpy()


# onnxruntime (CPU) and onnxruntime-gpu install the same module: the CPU package must leave first.
ORT_GPU_INSTALL = "pip uninstall -y onnxruntime && pip install onnxruntime-gpu (the two cannot coexist)"


class OnnxRuntimeBackend:
    """ONNX Runtime: CPU by default; CUDA or TensorRT execution providers when installed and asked for."""

    name = "onnxruntime"
    PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}

    def __init__(self, path: Path, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        import onnxruntime as ort

        providers = self.PROVIDERS[device]
        if providers[0] not in ort.get_available_providers():
            raise UserError(f"onnxruntime has no {providers[0]} here", f"use device cpu, or {ORT_GPU_INSTALL}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise UserError(f"onnxruntime cannot load {path}: {first_line(e)}", "re-run gtcompress export")
        # onnxruntime falls back to CPU, with a warning only, when its CUDA provider fails to load
        if self.session.get_providers()[0] != providers[0]:
            raise UserError(
                f"onnxruntime could not start {providers[0]} for {Path(path).name}: it would run on "
                f"{self.session.get_providers()[0]}",
                "check that the CUDA and cuDNN versions match "
                "onnxruntime-gpu's (its log says which library failed), or use device cpu",
            )
        self.input_name = self.session.get_inputs()[0].name
        self.device, self.precision = device, precision

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0].astype(
            np.float32, copy=False
        )


class TensorRTBackend:
    """A serialized TensorRT engine, run on torch CUDA tensors through its named I/O tensors.

    Each batch runs under the optimization profile whose range holds it (gtcompress builds one per tuned batch
    size); batches larger than the engine allows are run in slices of its maximum batch.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path, precision: str | None = None):
        from .tensorrt import make_logger, require_tensorrt

        trt = require_tensorrt()
        path = Path(path)
        self.precision = precision or parse_artefact_name(path)[1]
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"TensorRT cannot load {path.name} (built by another TensorRT version or for another GPU)",
                "rebuild it here with gtcompress export --trt",
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(
                f"{path.name} has {len(inputs)} inputs and {len(outputs)} outputs",
                "use an engine of a classifier built by gtcompress export --trt",
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        dtypes = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int32: torch.int32,
            trt.int8: torch.int8,
        }
        self.input_dtype = dtypes[self.engine.get_tensor_dtype(self.input_name)]
        self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output_name)]
        self.profiles = [
            (int(lo[0]), int(hi[0]))
            for lo, _, hi in (
                self.engine.get_tensor_profile_shape(self.input_name, i)
                for i in range(self.engine.num_optimization_profiles)
            )
        ]
        self.max_batch = max(hi for _, hi in self.profiles)
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.profile = 0

    def _use_profile(self, batch: int) -> None:
        index = _profile_for(self.profiles, batch)
        if index != self.profile:
            self.context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.profile = index

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._infer(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to("cuda").to(self.input_dtype)
            self._use_profile(len(x))
            if not self.context.set_input_shape(self.input_name, tuple(inp.shape)):
                raise UserError(
                    f"the engine does not accept input shape {tuple(inp.shape)}", "rebuild it for this image size"
                )
            out = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device="cuda"
            )
            self.context.set_tensor_address(self.input_name, inp.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed: {'; '.join(self.logger.errors) or 'no message'}")
        self.stream.synchronize()
        return out.float().cpu().numpy()


def _profile_for(profiles: list[tuple[int, int]], batch: int) -> int:
    """The index of the (min, max) batch range that holds `batch`."""
    return next(i for i, (low, high) in enumerate(profiles) if low <= batch <= high)


def load_backend(path: Path, device: str = "cpu", threads: int | None = None) -> Backend:
    """The backend for an artefact, chosen by its suffix: .pt (torch), .onnx (onnxruntime), .engine (tensorrt)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found", "pass a .pt, .onnx or .engine file")
    if path.suffix == ".pt":
        from .models import load_model

        return TorchBackend(load_model(path)[0], device)
    if path.suffix == ".onnx":
        return OnnxRuntimeBackend(path, device, parse_artefact_name(path)[1], threads)
    if path.suffix == ".engine":
        return TensorRTBackend(path)
    raise UserError(f"{path.name} is not a model artefact gtcompress can run", "pass a .pt, .onnx or .engine file")
