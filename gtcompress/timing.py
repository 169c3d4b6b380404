"""Timing one runner: warm-up calls, then timed calls, summarised as latency percentiles and throughput.

A call is end to end: a float32 NCHW batch in host memory to logits in host memory (host<->device copies
included on CUDA, timed with CUDA events on the current stream after draining queued work).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

from .backends import Backend

MIN_ITERS = 5
# torch "fp32" on CUDA would run cuDNN convolutions in TF32, while TensorRT's fp32 engine clears TF32; eager
# timing also wants cuDNN's autotuner, as TensorRT tunes its tactics.
CUDA_TIMING = {"tf32": False, "cudnn_benchmark": True}


def like_for_like_cuda() -> None:
    torch.backends.cuda.matmul.allow_tf32 = CUDA_TIMING["tf32"]
    torch.backends.cudnn.allow_tf32 = CUDA_TIMING["tf32"]
    torch.backends.cudnn.benchmark = CUDA_TIMING["cudnn_benchmark"]


def latency_stats(samples_ms: np.ndarray | list[float], batch_size: int) -> dict[str, float | int]:
    """Summary of per-call latencies: min, mean, std, percentiles (linear interpolation), max, samples/s."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    mean = float(a.mean())
    return {
        "min_ms": float(a.min()),
        "mean_ms": mean,
        "std_ms": float(a.std()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p95_ms": float(p95),
        "p99_ms": float(p99),
        "max_ms": float(a.max()),
        "throughput": batch_size * 1000.0 / mean,
        "iters": int(a.size),
    }


def median_interval(samples_ms: list[float], resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """A bootstrap 95% interval of the p50 (the median call): two p50s whose intervals overlap are a tie, which
    timing noise could reverse on the next run."""
    a = np.asarray(samples_ms, dtype=np.float64)
    draws = np.random.default_rng(seed).choice(a, size=(resamples, a.size), replace=True)
    low, high = np.percentile(np.median(draws, axis=1), [2.5, 97.5])
    return float(low), float(high)


def _call_ms(backend: Backend, x: np.ndarray) -> float:
    if backend.device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        backend.infer(x)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start_s = time.perf_counter()
    backend.infer(x)
    return (time.perf_counter() - start_s) * 1000.0


def time_backend(backend: Backend, x: np.ndarray, warmup: int, iters: int | None, seconds: float | None) -> list[float]:
    """Per-call latencies (ms) after `warmup` calls: until `iters` calls or `seconds` (at least 5 calls)."""
    for _ in range(warmup):
        backend.infer(x)
    samples: list[float] = []
    deadline = time.perf_counter() + seconds if seconds else float("inf")
    while len(samples) < (iters or sys.maxsize) and (len(samples) < MIN_ITERS or time.perf_counter() < deadline):
        samples.append(_call_ms(backend, x))
    return samples
