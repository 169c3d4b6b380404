"""PyTorch: a model on CPU or CUDA, under fp16/bf16 autocast where asked, eager or replayed as CUDA graphs.

A small model on a fast GPU is bound by kernel launches, not arithmetic: a deployment captures its forward
pass once per input shape as a CUDA graph (torch.cuda.CUDAGraph) and replays it, one launch per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import UserError
from . import Backend, Setting

AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def missing(device: str) -> str | None:
    return None if device == "cpu" or torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available())"


def open(source: nn.Module, device: str, precision: str, setting: Setting) -> TorchBackend:
    return TorchBackend(source, device, precision, setting=setting)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    input: torch.Tensor
    output: torch.Tensor


class TorchBackend(Backend):
    """PyTorch inference: eager calls, or (setting.cuda_graph) one captured CUDA graph per input shape."""

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        setting: Setting = Setting(),
    ):
        if device == "cuda" and not torch.cuda.is_available():
            raise UserError("the torch backend was asked for CUDA, which is not available", "use device cpu")
        if precision not in ("fp32", *AUTOCAST):
            raise UserError(f"the torch backend has no precision '{precision}'", "use fp32, fp16 or bf16")
        if precision == "fp16" and device != "cuda":
            raise UserError("fp16 autocast needs CUDA", "use precision fp32 or bf16 on CPU")
        if setting.cuda_graph and device != "cuda":
            raise UserError("CUDA graphs need the cuda device", "drop the CUDA-graph setting on CPU")
        self.device, self.precision, self.setting = device, precision, setting
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.eval().to(device, memory_format=self.memory_format)
        self.graphs: dict[tuple[int, ...], _Graph] = {}

    def close(self) -> None:
        """Drop the captured graphs (and their static buffers) and the model: their device memory is freed."""
        self.graphs.clear()
        self.model = None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return self.model(x)
        # no autocast cache: cached casts would be captured into a graph as stale tensors
        with torch.autocast(self.device, dtype=AUTOCAST[self.precision], cache_enabled=not self.setting.cuda_graph):
            return self.model(x)

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.setting.threads and torch.get_num_threads() != self.setting.threads:
            torch.set_num_threads(self.setting.threads)  # torch's intra-op pool is per process
        if not self.setting.cuda_graph:
            return (
                self._forward(torch.from_numpy(x).to(self.device, memory_format=self.memory_format))
                .float()
                .cpu()
                .numpy()
            )
        graph = self.graphs.get(x.shape) or self._capture(x.shape)
        graph.input.copy_(torch.from_numpy(x))
        graph.graph.replay()
        return graph.output.float().cpu().numpy()

    def _capture(self, shape: tuple[int, ...]) -> _Graph:
        """Warm up on a side stream (cuDNN picks its kernels), then capture one forward pass on static buffers."""
        static = torch.zeros(shape, device="cuda").contiguous(memory_format=self.memory_format)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._forward(static)
        self.graphs[tuple(shape)] = _Graph(graph, static, output)
        return self.graphs[tuple(shape)]
