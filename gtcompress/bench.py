"""Benchmark: latency, throughput and size of a run's models on every backend, side by side in one process.

Each measurement runs one backend (torch, onnxruntime, tensorrt) on one artefact at one batch size: warm-up
calls, then timed calls until `iters` and/or `seconds` is reached. A call is end to end: a float32 NCHW batch
in host memory to logits in host memory (host<->device copies included on CUDA, timed with CUDA events).
The teacher and the student are measured in the same run, interleaved per batch size, so their ratio
compares one machine state.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .backends import Backend, OnnxRuntimeBackend, TensorRTBackend, TorchBackend
from .benchfile import BENCH_FILE
from .environment import command_line, machine_info, versions
from .errors import UserError
from .models import count_macs, count_params, load_model
from .rundir import PRECISIONS, artefact_name, resolve_run, write_json
from .stages import STAGE_NAMES, distilled_students, is_stage

BACKENDS = ("torch", "onnxruntime", "tensorrt")
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")  # autocast; fp16 needs CUDA
DEFAULT_ITERS, DEFAULT_SECONDS, MIN_ITERS = 200, 2.0, 5


class BenchConfig(BaseModel):
    """What `gtcompress bench` measures; None means everything available. The descriptions are the CLI's help."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: Path | None = Field(None, description="Run directory (default runs/latest).")
    backends: tuple[str, ...] | None = Field(
        None,
        description="torch | onnxruntime | tensorrt, repeatable or comma-separated (default: every installed one).",
    )
    precisions: tuple[str, ...] | None = Field(
        None,
        description="fp32 | fp16 | int8 | bf16 (torch), repeatable or comma-separated (default: every exported one).",
    )
    stages: tuple[str, ...] | None = Field(
        None,
        description="The run's models to time, repeatable (default: every student distilled from the GT, "
        "and the GT): student | generous_teacher | standard_teacher | ...",
    )
    batch_sizes: tuple[int, ...] = Field((1, 8, 32), description="Comma-separated batch sizes.")
    warmup: int = Field(10, description="Untimed calls before each measurement.")
    iters: int | None = Field(None, description=f"Timed calls per measurement (default {DEFAULT_ITERS}, or --seconds).")
    seconds: float | None = Field(None, description=f"Time budget per measurement (default {DEFAULT_SECONDS:g} s).")
    threads: int | None = Field(None, description="CPU threads of torch and onnxruntime.")
    device: str = Field("auto", description="auto | cpu | cuda (torch and onnxruntime).")

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        """User mistakes as UserError (pydantic passes them through unchanged); iters/seconds defaulted."""

        def check(values: tuple[str, ...] | None, known: tuple[str, ...], what: str) -> None:
            for v in values or ():
                if v not in known:
                    raise UserError(f"unknown {what} '{v}'", f"choose from {', '.join(known)}")

        check(self.backends, BACKENDS, "backend")
        check(self.precisions, (*PRECISIONS, "bf16"), "precision")
        for stage in self.stages or ():
            if not is_stage(stage):
                raise UserError(f"unknown model '{stage}'", f"choose from {', '.join(STAGE_NAMES)} (or _<student>)")
        check((self.device,), ("auto", "cpu", "cuda"), "device")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise UserError(
                f"batch sizes must be positive integers, got {list(self.batch_sizes)}", "e.g. --batch-sizes 1,8,32"
            )
        for name in ("iters", "seconds", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise UserError(f"--{name} must be positive, got {value}", f"pass a positive --{name}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be at least 0, got {self.warmup}", "pass 0 or more")
        if self.iters is None and self.seconds is None:
            object.__setattr__(self, "iters", DEFAULT_ITERS)
            object.__setattr__(self, "seconds", DEFAULT_SECONDS)
        return self


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """`"1,8,32"` -> (1, 8, 32); a clear error naming `option` for anything but a list of positive integers."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise UserError(f"{option} '{text}' is not a list of positive integers", f"e.g. {option} 1,8,32")
    return tuple(dict.fromkeys(sizes))


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


def _call_ms(backend: Backend, x: np.ndarray) -> float:
    if backend.device == "cuda":  # events on the current stream, after draining queued work
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


def backend_availability(cuda: bool) -> dict[str, str | None]:
    """None for an installed backend, else the reason it cannot run here."""
    import onnxruntime

    ort_missing = (
        None
        if "CPUExecutionProvider" in onnxruntime.get_available_providers()
        else "onnxruntime has no CPU execution provider"
    )
    trt_missing = (
        "tensorrt is not installed (pip install 'gtcompress[trt]' on a CUDA machine)"
        if importlib.util.find_spec("tensorrt") is None
        else None
        if cuda
        else "no CUDA device"
    )
    return {"torch": None, "onnxruntime": ort_missing, "tensorrt": trt_missing}


@dataclass
class Target:
    """One thing to time: a model's artefact on a backend at a precision."""

    model: str
    backend: str
    precision: str
    path: Path
    make: Callable[[], Backend] = field(repr=False)
    max_batch: int | None = None


# torch "fp32" on CUDA would run cuDNN convolutions in TF32, while TensorRT's fp32 engine clears TF32; eager
# timing also wants cuDNN's autotuner, as TensorRT tunes its tactics.
CUDA_TIMING = {"tf32": False, "cudnn_benchmark": True}


def _like_for_like_cuda() -> None:
    torch.backends.cuda.matmul.allow_tf32 = CUDA_TIMING["tf32"]
    torch.backends.cudnn.allow_tf32 = CUDA_TIMING["tf32"]
    torch.backends.cudnn.benchmark = CUDA_TIMING["cudnn_benchmark"]


def _too_large(target: Target, batch: int) -> dict[str, str]:
    return {
        "model": target.model,
        "backend": target.backend,
        "precision": target.precision,
        "batch_size": str(batch),
        "reason": f"the engine's largest batch is {target.max_batch} "
        "(rebuild with gtcompress export --trt --max-batch N)",
    }


class Bench:
    """One `gtcompress bench`: finds what the run has, times it, writes `<run>/bench.json`."""

    def __init__(self, cfg: BenchConfig, say: Callable[[str], None] = print, console: Console | None = None):
        self.cfg, self.say, self.console = cfg, say, console
        self.run = resolve_run(cfg.run)
        self.cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        if self.cuda and not torch.cuda.is_available():
            raise UserError("--device cuda was asked for, but CUDA is not available", "use --device cpu or auto")
        self.device = "cuda" if self.cuda else "cpu"
        self.threads = cfg.threads or torch.get_num_threads()
        self.skipped: list[dict[str, str]] = []
        self.missing: list[str] = []
        self.models: dict[str, dict[str, Any]] = {}
        self.metrics = self.run.metrics()

    # -- what can run -----------------------------------------------------------------------------------------
    def backends(self) -> list[str]:
        available = backend_availability(self.cuda)
        chosen = []
        for name in BACKENDS:
            reason = available[name]
            if self.cfg.backends is not None and name not in self.cfg.backends:
                continue
            if reason is None:
                chosen.append(name)
            elif self.cfg.backends is not None:
                raise UserError(
                    f"backend {name} was asked for but cannot run here: {reason}",
                    "install it, or leave it out of --backend",
                )
            else:
                self.skipped.append({"backend": name, "reason": reason})
        return chosen

    def _wanted(self, precision: str, default: tuple[str, ...]) -> bool:
        return precision in (self.cfg.precisions if self.cfg.precisions is not None else default)

    def targets(self) -> list[Target]:
        backends = self.backends()
        out: list[Target] = []
        for model in self.cfg.stages or (*distilled_students(self.metrics), "generous_teacher"):
            ckpt = self.run.checkpoint(model)
            if not ckpt.is_file():
                self.missing.append(f"{ckpt.name} (the {model} stage has not finished: gtcompress distill --resume)")
                continue
            net, spec, _ = load_model(ckpt)
            self.models[model] = {
                "arch": spec.arch,
                "img_size": spec.img_size,
                "num_classes": spec.num_classes,
                "params": count_params(net),
                "macs": count_macs(net, spec.img_size),
                "checkpoint_bytes": ckpt.stat().st_size,
            }
            if "torch" in backends:
                torch_default = ("fp32", "fp16") if self.cuda else ("fp32",)
                for precision in TORCH_PRECISIONS:
                    if self._wanted(precision, torch_default) and (precision != "fp16" or self.cuda):
                        out.append(
                            Target(
                                model,
                                "torch",
                                precision,
                                ckpt,
                                lambda n=net, p=precision: TorchBackend(n, self.device, p),
                            )
                        )
            for precision in PRECISIONS:
                if not self._wanted(precision, PRECISIONS):
                    continue
                if "onnxruntime" in backends:
                    out += self._artefact(model, "onnxruntime", precision, "onnx")
                if "tensorrt" in backends:
                    out += self._artefact(model, "tensorrt", precision, "engine")
        if self.cfg.precisions is not None:
            for precision in self.cfg.precisions:
                if not any(t.precision == precision for t in out):
                    raise UserError(
                        f"nothing in {self.run.path} can run at precision {precision}",
                        f"export it first: gtcompress export --precision {precision}",
                    )
        if self.cfg.backends is not None:
            for backend in self.cfg.backends:
                if not any(t.backend == backend for t in out):
                    fix = "gtcompress export --trt" if backend == "tensorrt" else "gtcompress export"
                    raise UserError(f"nothing in {self.run.path} can run on {backend}", f"make it with {fix}")
        if not out:
            raise UserError(
                f"nothing to benchmark in {self.run.path}", "finish the run with gtcompress distill --resume"
            )
        return out

    def _artefact(self, model: str, backend: str, precision: str, fmt: str) -> list[Target]:
        path = self.run.export_dir / artefact_name(model, precision, fmt)
        if not path.is_file():
            if precision == "fp32" or self.cfg.precisions is not None:
                trt = " --trt" if fmt == "engine" else ""
                prec = f" --precision {precision}" if precision != "fp32" else ""
                self.missing.append(f"export/{path.name} (make it with gtcompress export --model {model}{prec}{trt})")
            return []
        if fmt == "onnx" and precision == "int8" and self._ort_cuda():
            self.skipped.append(
                {
                    "model": model,
                    "backend": backend,
                    "precision": precision,
                    "reason": "onnxruntime's CUDA provider has no int8 kernels for Q/DQ graphs: it would time "
                    "dequantized float math, not int8 inference (time int8 on TensorRT or the CPU)",
                }
            )
            return []
        if fmt == "onnx":
            return [
                Target(
                    model,
                    backend,
                    precision,
                    path,
                    lambda: OnnxRuntimeBackend(
                        path, self.device if self._ort_cuda() else "cpu", precision, self.threads
                    ),
                )
            ]
        record = next((r for r in self.metrics.get("export", []) if r.get("path") == f"export/{path.name}"), {})
        built_on, here = record.get("gpu"), torch.cuda.get_device_name()
        if built_on and built_on != here:
            raise UserError(
                f"export/{path.name} was built for {built_on}, but this GPU is {here}",
                f"rebuild it here with gtcompress export --model {model} --trt",
            )
        return [
            Target(
                model,
                backend,
                precision,
                path,
                lambda: TensorRTBackend(path, precision),
                max_batch=record.get("max_batch"),
            )
        ]

    def _ort_cuda(self) -> bool:
        import onnxruntime

        return self.cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers()

    # -- timing -------------------------------------------------------------------------------------------------
    def measure(self) -> dict[str, Any]:
        """Time every target at every batch size (batch sizes outermost: teacher and student side by side)."""
        targets = self.targets()
        torch.set_num_threads(self.threads)
        if self.cuda:
            _like_for_like_cuda()
        rng = np.random.default_rng(0)
        jobs = [(b, t) for b in self.cfg.batch_sizes for t in targets]
        results, loaded = [], {}
        with self._progress() as progress:
            task = progress.add_task("bench", total=len(jobs))
            for batch, target in jobs:
                progress.update(task, description=f"{target.model} {target.backend} {target.precision} b{batch}")
                if target.max_batch is not None and batch > target.max_batch:
                    self.skipped.append(_too_large(target, batch))
                else:
                    if id(target) not in loaded:
                        loaded[id(target)] = target.make()
                    results.append(self._time(target, loaded[id(target)], batch, rng))
                    if not progress.live.is_started:
                        r = results[-1]
                        self.say(
                            f"{target.model:>16} {target.backend:>11} {target.precision} b{batch:<3} "
                            f"p50 {r['p50_ms']:.3f} ms  {r['throughput']:.0f}/s"
                        )
                progress.advance(task)
        return {
            "run": str(self.run.path),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": command_line(),
            "device": machine_info(self.threads, self.cuda),
            "versions": versions(),
            "settings": self.cfg.model_dump(mode="json", exclude={"run"})
            | {"threads": self.threads, **({"torch_cuda": CUDA_TIMING} if self.cuda else {})},
            "models": self.models,
            "results": results,
            "skipped": self.skipped,
            "missing": self.missing,
        }

    def _time(self, target: Target, backend: Backend, batch: int, rng: np.random.Generator) -> dict[str, Any]:
        """One bench.json result: a target's latencies at one batch size on random input."""
        size = self.models[target.model]["img_size"]
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        samples = time_backend(backend, x, self.cfg.warmup, self.cfg.iters, self.cfg.seconds)
        return {
            "model": target.model,
            "arch": self.models[target.model]["arch"],
            "backend": target.backend,
            "device": backend.device,
            "precision": target.precision,
            "batch_size": batch,
            "artefact": os.path.relpath(target.path, self.run.path),
            "bytes": target.path.stat().st_size,
            **latency_stats(samples, batch),
            "samples_ms": [round(s, 5) for s in samples],
        }

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.console is None or not self.console.is_terminal,
        )


def run_bench(cfg: BenchConfig, say: Callable[[str], None] = print, console: Console | None = None) -> dict[str, Any]:
    """Benchmark the run's models and write `<run>/bench.json` (atomically); returns its content."""
    bench = Bench(cfg, say, console)
    result = bench.measure()
    write_json(bench.run.path / BENCH_FILE, result)
    for line in bench.missing:
        say(f"not benchmarked, missing: {line}")
    for s in bench.skipped:
        what = " ".join(s[k] for k in ("model", "backend", "precision") if k in s)
        say(f"skipped {what}{' b' + s['batch_size'] if 'batch_size' in s else ''}: {s['reason']}")
    return result
