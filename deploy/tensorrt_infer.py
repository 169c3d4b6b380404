"""Classify image files with a TensorRT engine exported by `gtcompress export --trt`.

    python deploy/tensorrt_infer.py runs/latest/export/student.fp16.engine cat.png dog.jpg [--top-k 3] [--json]

Needs numpy, Pillow, tensorrt and cuda-python of the same CUDA major as the TensorRT wheel, no torch:

    pip install tensorrt-cu12 'cuda-python>=12.9,<13'     # or: tensorrt-cu13 'cuda-python>=13,<14'

(cuda-python 13 needs a driver >= 580.65, so a CUDA 12 machine fails at its first stream with it.) Device
buffers, copies and the stream come from the CUDA runtime API of cuda-python. Pre-processing,
normalisation and class names come from `<model>.json` beside the engine. Each batch runs under the
optimization profile whose range holds it; larger batches run in slices of the engine's maximum batch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tensorrt as trt
from cuda.bindings import runtime as cudart
from cuda.bindings.utils import get_cuda_native_handle
from preprocess import load_meta, preprocess, report


def check(result):
    """Unwrap a cuda-python `(error, *values)` tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA error: {cudart.cudaGetErrorName(err)[1].decode()}")
    return values[0] if len(values) == 1 else values


class Engine:
    """A deserialized engine with one input and one output, run on a CUDA stream."""

    def __init__(self, path: Path):
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise SystemExit(f"error: TensorRT cannot load {path} (another TensorRT version or GPU?)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if n != self.input)
        shapes = [
            self.engine.get_tensor_profile_shape(self.input, i) for i in range(self.engine.num_optimization_profiles)
        ]
        self.profiles = [(low[0], high[0]) for low, _, high in shapes]
        self.max_batch = max(high for _, high in self.profiles)
        self.context = self.engine.create_execution_context()
        self.stream = check(cudart.cudaStreamCreate())
        self.stream_handle = get_cuda_native_handle(self.stream)
        self.profile = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.concatenate([self.run(batch[i : i + self.max_batch]) for i in range(0, len(batch), self.max_batch)])

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=trt.nptype(self.engine.get_tensor_dtype(self.input)))
        profile = next(i for i, (low, high) in enumerate(self.profiles) if low <= len(x) <= high)
        if profile != self.profile:
            self.context.set_optimization_profile_async(profile, self.stream_handle)
            self.profile = profile
        if not self.context.set_input_shape(self.input, x.shape):
            raise SystemExit(f"error: the engine does not accept input shape {x.shape}")
        out = np.empty(
            tuple(self.context.get_tensor_shape(self.output)),
            dtype=trt.nptype(self.engine.get_tensor_dtype(self.output)),
        )
        d_in, d_out = check(cudart.cudaMalloc(x.nbytes)), check(cudart.cudaMalloc(out.nbytes))
        try:
            self.context.set_tensor_address(self.input, int(d_in))
            self.context.set_tensor_address(self.output, int(d_out))
            check(
                cudart.cudaMemcpyAsync(
                    d_in, x.ctypes.data, x.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream
                )
            )
            if not self.context.execute_async_v3(self.stream_handle):
                raise RuntimeError("TensorRT execution failed")
            check(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, d_out, out.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream
                )
            )
            check(cudart.cudaStreamSynchronize(self.stream))
        finally:
            check(cudart.cudaFree(d_in))
            check(cudart.cudaFree(d_out))
        return out.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", type=Path, help="an .engine file written by gtcompress export --trt")
    parser.add_argument("images", type=Path, nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--top-k", type=int, default=1, help="classes shown per image")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    meta = load_meta(args.engine)
    engine = Engine(args.engine)
    batch = np.stack([preprocess(path, meta) for path in args.images])
    report(args.images, engine(batch), meta, args.top_k, args.json)


if __name__ == "__main__":
    main()
