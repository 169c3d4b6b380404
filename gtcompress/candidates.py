"""Which students could ship within a latency budget: each candidate timed on the target before any training.

Latency does not depend on the weights, so each candidate is built with random weights, exported as the
target runs it (an ONNX file, an int8 graph calibrated on random images, a TensorRT engine) and timed like
`gtcompress bench` times the trained artefacts: at each setting a deployment would choose from (CPU thread
counts, CUDA graphs), keeping the best, so no candidate loses to the teacher for want of a setting.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from .backends import BACKENDS, BackendSpec, BuildOptions, Setting, settings, thread_counts
from .config import BudgetConfig, RunConfig
from .environment import machine_info
from .errors import UserError
from .export.precisions import PRECISIONS, Conversion
from .models import base_arch, count_macs, count_params, create_model
from .records import Candidate, CandidateCheck
from .timing import latency_stats, like_for_like_cuda, time_backend


def target(cfg: BudgetConfig) -> tuple[str, str, str]:
    """(backend, precision, device) of the budget: the configured ones, or the best available here."""
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise UserError("budget.device cuda was asked for, but CUDA is not available", "--set budget.device=cpu")
    device = "cuda" if cuda else "cpu"
    trt = cuda and BACKENDS["tensorrt"].missing("cuda") is None
    spec = BACKENDS[cfg.backend or ("tensorrt" if trt else "onnxruntime")]
    if device not in spec.devices:
        where = "a CUDA GPU" if "cuda" in spec.devices else "the CPU"
        raise UserError(f"a {spec.name} latency budget needs {where}", "choose another --budget-backend")
    precision = cfg.precision or ("fp16" if cuda else "fp32")
    lack = spec.lacks(device, precision)
    if lack is not None:
        raise UserError(lack, "choose another --budget-precision or --budget-backend")
    return spec.name, precision, device


def _artefact(model: torch.nn.Module, img_size: int, spec: BackendSpec, precision: str, tmp: Path, batch: int) -> Any:
    """What the target runs for this candidate, made as export makes it: the model itself, its ONNX graph (for the
    backend's target), or the backend's own artefact built from one of those."""
    if spec.kind.model:
        return model
    rng = np.random.default_rng(0)
    target = spec.onnx_target
    paths = {p: tmp / PRECISIONS[p].onnx_file("model", target) for p in ("fp32", precision)}
    images = lambda: (rng.standard_normal((8, 3, img_size, img_size), dtype=np.float32) for _ in range(4))  # noqa: E731
    for name in dict.fromkeys(("fp32", precision)):  # fp32 first: the other graphs are converted from it
        conversion = Conversion(
            model=model,
            img_size=img_size,
            fp32=paths["fp32"],
            dst=paths[name],
            target=target,
            opset=None,
            calibration=images,
            calibration_images=32,
            calibration_method="minmax",
            int8_method="ptq",  # untrained weights have no accuracy for accuracy-aware int8 to keep
        )
        PRECISIONS[name].convert(conversion)
    if spec.loader is None:
        return paths[precision]
    own = tmp / PRECISIONS[precision].own_file("model", spec.loader.suffix)
    source = model if spec.loader.built_from == "model" else paths[precision]
    spec.build(source, own, precision, BuildOptions(max_batch=batch, opt_batches=(batch,), cache_dir=tmp))
    return own


def _time(arch: str, num_classes: int, img_size: int, cfg: RunConfig, tmp: Path) -> Candidate:
    """One untrained model's size and p50 on the budget's target, at the target's best setting."""
    name, precision, device = target(cfg.budget)
    spec = BACKENDS[name]
    model = create_model(base_arch(arch), num_classes, small_stem=cfg.small_stem).eval()  # latency: any weights
    source = _artefact(model, img_size, spec, precision, tmp, cfg.budget.batch)
    x = np.random.default_rng(0).standard_normal((cfg.budget.batch, 3, img_size, img_size), dtype=np.float32)
    best: tuple[dict[str, Any], Setting] | None = None
    for setting in settings(spec, device, thread_counts("auto"), "both"):
        with spec.open(source, device, precision, setting) as runner:
            stats = latency_stats(time_backend(runner, x, 5, cfg.budget.iters, None), cfg.budget.batch)
        best = (stats, setting) if best is None or stats["p50_ms"] < best[0]["p50_ms"] else best
    stats, setting = best
    return Candidate(
        arch=arch,
        params=count_params(model),
        macs=count_macs(model, img_size),
        **{k: stats[k] for k in ("p50_ms", "p90_ms", "mean_ms")},
        setting=setting.label(),
    )


def measure(cfg: RunConfig, num_classes: int, img_size: int, say: Callable[[str], None] = print) -> CandidateCheck:
    """Every candidate's p50 on the target at the budget's batch size, whether it fits the budget, and whether it
    is faster than the teacher there (timed the same way): a student that is not buys nothing."""
    backend, precision, device = target(cfg.budget)
    where = f"{backend} {precision} batch {cfg.budget.batch}"
    if device == "cuda":
        like_for_like_cuda()
    with tempfile.TemporaryDirectory(prefix="gtcompress-candidate-") as tmp:
        teacher = _time(cfg.teacher.arch, num_classes, img_size, cfg, Path(tmp))
    rows = []
    for arch in cfg.student.arch:
        with tempfile.TemporaryDirectory(prefix="gtcompress-candidate-") as tmp:
            row = _time(arch, num_classes, img_size, cfg, Path(tmp))
        row.fits = cfg.budget.latency_ms is None or row.p50_ms <= cfg.budget.latency_ms
        row.faster_than_teacher = row.p50_ms < teacher.p50_ms
        rows.append(row)
        say(f"candidate {arch}: p50 {row.p50_ms:.3f} ms ({where})")
        if not row.faster_than_teacher:
            say(
                f"warning: candidate {arch} is not faster than the teacher {teacher.arch} "
                f"({teacher.p50_ms:.3f} ms on {where}): distilling it buys no speed there"
            )
    return CandidateCheck(
        budget_ms=cfg.budget.latency_ms,
        backend=backend,
        precision=precision,
        device=device,
        batch_size=cfg.budget.batch,
        img_size=img_size,
        machine=machine_info(torch.get_num_threads(), device == "cuda"),
        note="untrained models with random weights: the target's latency, not the trained artefacts'",
        teacher=teacher,
        candidates=rows,
    )


def candidate_table(check: CandidateCheck) -> Table:
    budget = check.budget_ms
    table = Table(
        title=f"candidates on {check.backend} {check.precision} ({check.device}), batch "
        f"{check.batch_size}" + (f", budget {budget:g} ms" if budget is not None else ""),
        title_justify="left",
    )
    for col in (
        "model",
        "params",
        "MMACs",
        "p50 ms",
        "p90 ms",
        "setting",
        "× faster than the teacher",
        "within budget",
    ):
        table.add_column(col, justify="left" if col == "model" else "right")
    t = check.teacher
    for r in [t.model_copy(update={"arch": f"{t.arch} (teacher)"}), *check.candidates]:
        table.add_row(
            r.arch,
            f"{r.params / 1e6:.2f}M",
            f"{r.macs / 1e6:.1f}",
            f"{r.p50_ms:.3f}",
            f"{r.p90_ms:.3f}",
            r.setting,
            "–" if r.fits is None else f"{t.p50_ms / r.p50_ms:.2f}×",  # the teacher's row has no verdicts
            "–" if budget is None or r.fits is None else "yes" if r.fits else "no",
        )
    return table


def within_budget(check: CandidateCheck) -> list[str]:
    """The candidates that fit; none is one clear error (the table was printed before)."""
    kept = [r.arch for r in check.candidates if r.fits]
    if not kept:
        fastest = min(check.candidates, key=lambda r: r.p50_ms)
        raise UserError(
            f"no candidate student runs within the {check.budget_ms:g} ms budget (the fastest, "
            f"{fastest.arch}, takes {fastest.p50_ms:.3f} ms); nothing was trained",
            "raise --latency-budget, add smaller students, or change --budget-backend/--budget-precision",
        )
    return kept
