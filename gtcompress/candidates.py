"""Which students could ship within a latency budget: each candidate timed on the target before any training.

Latency does not depend on the weights, so each candidate is built with random weights, exported as the
target runs it (an ONNX file, an int8 graph calibrated on random images, a TensorRT engine) and timed like
`gtcompress bench` times the trained artefacts.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from .backends import Backend, OnnxRuntimeBackend, TensorRTBackend, TorchBackend
from .bench import latency_stats, time_backend
from .config import BudgetConfig, RunConfig
from .environment import machine_info
from .errors import UserError
from .export.graph import convert_fp16, export_onnx, quantize_int8
from .models import base_arch, count_macs, count_params, create_model


def target(cfg: BudgetConfig) -> tuple[str, str, str]:
    """(backend, precision, device) of the budget: the configured ones, or the best available here."""
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("budget.device cuda was asked for, but CUDA is not available", "--set budget.device=cpu")
    trt = cuda and importlib.util.find_spec("tensorrt") is not None
    backend = cfg.backend or ("tensorrt" if trt else "onnxruntime")
    if backend == "tensorrt" and not cuda:
        raise UserError("a TensorRT latency budget needs a CUDA GPU", "use --budget-backend onnxruntime or torch")
    precision = cfg.precision or ("fp16" if cuda else "fp32")
    if backend == "torch" and precision == "int8":
        raise UserError("the torch backend has no int8", "use --budget-backend onnxruntime or tensorrt")
    if backend == "onnxruntime" and cuda and precision == "int8":
        raise UserError(
            "onnxruntime's CUDA provider has no int8 kernels: an int8 budget there would time float math",
            "use --budget-backend tensorrt, or time int8 on the CPU (--set budget.device=cpu)",
        )
    return backend, precision, "cuda" if cuda else "cpu"


def _artefact(
    model: torch.nn.Module, img_size: int, backend: str, precision: str, device: str, tmp: Path, batch: int
) -> Backend:
    """The candidate as the target runs it."""
    if backend == "torch":
        return TorchBackend(model, device, precision)
    path = tmp / "model.onnx"
    export_onnx(model, img_size, path)
    if precision == "fp16":
        convert_fp16(path, tmp / "model.fp16.onnx")
        path = tmp / "model.fp16.onnx"
    elif precision == "int8":
        rng = np.random.default_rng(0)
        images = lambda: (rng.standard_normal((8, 3, img_size, img_size), dtype=np.float32) for _ in range(4))  # noqa: E731
        form = "tensorrt" if backend == "tensorrt" else "onnxruntime"
        quantize_int8(path, tmp / "model.int8.onnx", images, "minmax", form)
        path = tmp / "model.int8.onnx"
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(path, device, precision)
    from .tensorrt import EngineConfig, build_engine

    build_engine(path, tmp / "model.engine", EngineConfig(max_batch=batch, opt_batches=(batch,)))
    return TensorRTBackend(tmp / "model.engine", precision)


def _time(arch: str, num_classes: int, img_size: int, cfg: RunConfig, tmp: Path) -> dict[str, Any]:
    """One untrained model's size and p50 on the budget's target."""
    backend, precision, device = target(cfg.budget)
    model = create_model(base_arch(arch), num_classes, small_stem=cfg.small_stem).eval()  # latency: any weights
    runner = _artefact(model, img_size, backend, precision, device, tmp, cfg.budget.batch)
    x = np.random.default_rng(0).standard_normal((cfg.budget.batch, 3, img_size, img_size), dtype=np.float32)
    stats = latency_stats(time_backend(runner, x, 5, cfg.budget.iters, None), cfg.budget.batch)
    size = {"params": count_params(model), "macs": count_macs(model, img_size)}
    return {"arch": arch, **size, **{k: stats[k] for k in ("p50_ms", "p90_ms", "mean_ms")}}


def measure(cfg: RunConfig, num_classes: int, img_size: int, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every candidate's p50 on the target at the budget's batch size, whether it fits the budget, and whether it
    is faster than the teacher there (timed the same way): a student that is not buys nothing."""
    backend, precision, device = target(cfg.budget)
    where = f"{backend} {precision} batch {cfg.budget.batch}"
    with tempfile.TemporaryDirectory(prefix="gtcompress-candidate-") as tmp:
        teacher = _time(cfg.teacher.arch, num_classes, img_size, cfg, Path(tmp))
    rows = []
    for arch in cfg.student.archs:
        with tempfile.TemporaryDirectory(prefix="gtcompress-candidate-") as tmp:
            row = _time(arch, num_classes, img_size, cfg, Path(tmp))
        row["fits"] = cfg.budget.latency_ms is None or row["p50_ms"] <= cfg.budget.latency_ms
        row["faster_than_teacher"] = row["p50_ms"] < teacher["p50_ms"]
        rows.append(row)
        say(f"candidate {arch}: p50 {row['p50_ms']:.3f} ms ({where})")
        if not row["faster_than_teacher"]:
            say(
                f"[yellow]candidate {arch} is not faster than the teacher {teacher['arch']} "
                f"({teacher['p50_ms']:.3f} ms on {where}): distilling it buys no speed there"
            )
    return {
        "budget_ms": cfg.budget.latency_ms,
        "backend": backend,
        "precision": precision,
        "device": device,
        "batch_size": cfg.budget.batch,
        "img_size": img_size,
        "machine": machine_info(torch.get_num_threads(), device == "cuda"),
        "note": "untrained models with random weights: the target's latency, not the trained artefacts'",
        "teacher": teacher,
        "candidates": rows,
    }


def candidate_table(result: dict[str, Any]) -> Table:
    budget = result["budget_ms"]
    table = Table(
        title=f"candidates on {result['backend']} {result['precision']} ({result['device']}), batch "
        f"{result['batch_size']}" + (f", budget {budget:g} ms" if budget is not None else ""),
        title_justify="left",
    )
    for col in ("model", "params", "MMACs", "p50 ms", "p90 ms", "× faster than the teacher", "within budget"):
        table.add_column(col, justify="left" if col == "model" else "right")
    t = result["teacher"]
    for r in [{**t, "arch": f"{t['arch']} (teacher)"}, *result["candidates"]]:
        table.add_row(
            r["arch"],
            f"{r['params'] / 1e6:.2f}M",
            f"{r['macs'] / 1e6:.1f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p90_ms']:.3f}",
            "–" if "fits" not in r else f"{t['p50_ms'] / r['p50_ms']:.2f}×",  # the teacher's row has no verdicts
            "–" if budget is None or "fits" not in r else "yes" if r["fits"] else "no",
        )
    return table


def within_budget(result: dict[str, Any]) -> list[str]:
    """The candidates that fit; none is one clear error (the table was printed before)."""
    kept = [r["arch"] for r in result["candidates"] if r["fits"]]
    if not kept:
        fastest = min(result["candidates"], key=lambda r: r["p50_ms"])
        raise UserError(
            f"no candidate student runs within the {result['budget_ms']:g} ms budget (the fastest, "
            f"{fastest['arch']}, takes {fastest['p50_ms']:.3f} ms); nothing was trained",
            "raise --latency-budget, add smaller students, or change --budget-backend/--budget-precision",
        )
    return kept
