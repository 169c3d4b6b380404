"""ONNX Runtime: an exported ONNX file on the CPU (its intra-op thread count chosen), or on the CUDA execution
provider, eager or replayed as a CUDA graph (`enable_cuda_graph`, inputs and outputs bound to device memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError, first_line
from . import BACKENDS, Backend, Setting

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def missing(device: str) -> str | None:
    import onnxruntime as ort

    if PROVIDERS[device] in ort.get_available_providers():
        return None
    return f"onnxruntime has no {PROVIDERS[device]} here"


def open(source: Path, device: str, precision: str, setting: Setting) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(Path(source), device, precision, setting)


def _session(path: Path, device: str, setting: Setting) -> Any:
    """An InferenceSession on `device`; one that silently fell back to the CPU is an error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if setting.threads:
        options.intra_op_num_threads = setting.threads
    provider = PROVIDERS[device]
    providers: list[Any] = [provider] if device == "cpu" else [(provider, _cuda_options(setting)), PROVIDERS["cpu"]]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable models
        raise UserError(f"onnxruntime cannot load {path.name}: {first_line(e)}", "re-run gtcompress export") from None
    # onnxruntime falls back to CPU, with a warning only, when its CUDA provider fails to load
    if session.get_providers()[0] != provider:
        raise UserError(
            f"onnxruntime could not start {provider} for {path.name}: it would run on {session.get_providers()[0]}",
            "check that the CUDA and cuDNN versions match onnxruntime-gpu's (its log says which library failed), "
            "or use device cpu",
        )
    return session


def _cuda_options(setting: Setting) -> dict[str, str]:
    return {"enable_cuda_graph": "1"} if setting.cuda_graph else {}


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime inference. With a CUDA graph, one session per batch size: ORT captures a graph on a
    session's first runs over fixed device buffers and replays it after."""

    name = "onnxruntime"

    def __init__(self, path: Path, device: str = "cpu", precision: str = "fp32", setting: Setting = Setting()):
        if device not in PROVIDERS:
            raise UserError(f"onnxruntime has no device '{device}'", "use cpu or cuda")
        if setting.cuda_graph and device != "cuda":
            raise UserError("CUDA graphs need the cuda device", "drop the CUDA-graph setting on CPU")
        reason = missing(device)
        if reason is not None:
            raise UserError(reason, f"use device cpu, or {BACKENDS['onnxruntime'].install}")
        self.path, self.device, self.precision, self.setting = Path(path), device, precision, setting
        self.session = _session(self.path, device, setting)
        self.input_name = self.session.get_inputs()[0].name
        self.bound: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    def close(self) -> None:
        """Release the sessions and their device buffers."""
        self.bound.clear()
        self.session = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not self.setting.cuda_graph:
            return self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)
        session, binding, (inp, out) = self._bound(x)
        inp.update_inplace(x)
        session.run_with_iobinding(binding)
        return out.numpy().astype(np.float32, copy=False)

    def _bound(self, x: np.ndarray) -> tuple[Any, Any, tuple[Any, Any]]:
        """The session, I/O binding and device buffers of this batch size (made, and warmed up, once)."""
        import onnxruntime as ort

        if x.shape not in self.bound:
            session = self.session if not self.bound else _session(self.path, self.device, self.setting)
            out_shape = (x.shape[0], *session.get_outputs()[0].shape[1:])
            inp = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            out = ort.OrtValue.ortvalue_from_shape_and_type(out_shape, np.float32, "cuda", 0)
            binding = session.io_binding()
            binding.bind_ortvalue_input(self.input_name, inp)
            binding.bind_ortvalue_output(session.get_outputs()[0].name, out)
            session.run_with_iobinding(binding)  # the first run captures the graph
            self.bound[x.shape] = (session, binding, (inp, out))
        return self.bound[x.shape]
