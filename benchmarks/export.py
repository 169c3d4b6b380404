"""Export benchmark: size, accuracy and onnxruntime CPU latency of fp32/fp16/int8 student and teacher files.

    python -m benchmarks.export [RUN] [--threads 2] [--iters 100]

RUN is a finished `gtcompress distill` run (default runs/latest; `make demo` makes one). The script
exports and verifies its student and its Generous Teacher in every precision (into RUN/export, as
`gtcompress export` does), then times PyTorch eager and the three onnxruntime files of each at batch 1
and 32 with one shared thread count, one backend after another on an otherwise idle machine (interleaved
calls let one session's spinning threads slow the next), and checks the goals of issues 4 and 13.
Results go to benchmarks/results/export.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from rich.console import Console
from rich.table import Table

from gtcompress.backends import BACKENDS, Setting
from gtcompress.environment import command_line, cpu_name, machine_info, versions
from gtcompress.errors import UserError
from gtcompress.evaluate import batches, load_eval_data
from gtcompress.export.exporter import run_export
from gtcompress.export.precisions import PRECISIONS as EXPORT_PRECISIONS
from gtcompress.export.source import resolve_source
from gtcompress.files import write_json
from gtcompress.models import load_model
from gtcompress.rundir import resolve_run
from gtcompress.settings import ExportConfig, parse_tolerances
from gtcompress.timing import time_backend

RESULTS = Path(__file__).resolve().parent / "results" / "export.json"
BATCH_SIZES = (1, 32)
PRECISIONS = tuple(EXPORT_PRECISIONS)  # every registered one: fp32, fp16, int8


def measure(run, stage: str, args: argparse.Namespace, console: Console) -> dict:
    """Export one model of the run in every precision, then time PyTorch eager and its ONNX files."""
    cfg = ExportConfig(run=run.path, stage=stage, precisions=PRECISIONS, tolerances=parse_tolerances(args.tolerance))
    records = run_export(cfg, say=console.print)
    by_precision = {r.precision: r for r in records if r.target == "onnxruntime" and r.backend == "onnxruntime"}
    model, spec, _ = load_model(run.checkpoint(stage))
    data = load_eval_data(resolve_source(ExportConfig(run=run.path, stage=stage)).data, spec)
    images = np.concatenate(list(batches(data.test, max(BATCH_SIZES))))
    threads = Setting(threads=args.threads)
    runners = {("torch", "fp32"): BACKENDS["torch"].open(model, "cpu", "fp32", threads)}
    for precision in PRECISIONS:
        path = run.path / by_precision[precision].path
        runners["onnxruntime", precision] = BACKENDS["onnxruntime"].open(path, "cpu", precision, threads)
    latency = []
    for batch in BATCH_SIZES:
        for (backend, precision), runner in runners.items():
            # one backend at a time: interleaved calls would let each session's idle threads spin against the next
            ms = time_backend(runner, images[:batch], args.warmup, args.iters, None)
            latency.append(
                {
                    "backend": backend,
                    "precision": precision,
                    "batch_size": batch,
                    "p50_ms": float(np.median(ms)),
                    "p90_ms": float(np.percentile(ms, 90)),
                    "mean_ms": float(np.mean(ms)),
                    "iters": len(ms),
                }
            )
    keys = ("precision", "path", "bytes", "top1", "reference_top1", "top1_agreement", "max_abs_diff")
    return {
        "stage": stage,
        "arch": spec.arch,
        "test_images": len(data.labels),
        "latency": latency,
        "artefacts": [r.model_dump(include=set(keys)) for r in by_precision.values()],
        "checkpoint_bytes": os.path.getsize(run.checkpoint(stage)),
    }


def p50(model: dict, backend: str, precision: str, batch: int) -> float:
    return next(
        r["p50_ms"]
        for r in model["latency"]
        if (r["backend"], r["precision"], r["batch_size"]) == (backend, precision, batch)
    )


def goals(models: dict[str, dict]) -> list[dict]:
    """The goals of issues 4 and 13, each with its measured value and whether it is met."""
    student, teacher = models["student"], models["generous_teacher"]
    art = {name: {r["precision"]: r for r in m["artefacts"]} for name, m in models.items()}
    out = [
        (
            "student: onnxruntime fp32 >= 5x faster than PyTorch eager at batch 1",
            p50(student, "torch", "fp32", 1) / p50(student, "onnxruntime", "fp32", 1),
            ">=",
            5.0,
        ),
        (
            "student: int8 file <= 30% of fp32",
            100 * art["student"]["int8"]["bytes"] / art["student"]["fp32"]["bytes"],
            "<=",
            30.0,
        ),
        (
            "teacher: onnxruntime int8 >= 1.8x faster than fp32 at batch 32",
            p50(teacher, "onnxruntime", "fp32", 32) / p50(teacher, "onnxruntime", "int8", 32),
            ">=",
            1.8,
        ),
    ]
    out.append(  # at batch 32, as issue 13 measured it (batch 1 is in the tables)
        (
            "student: onnxruntime int8 not slower than fp32 at batch 32",
            p50(student, "onnxruntime", "fp32", 32) / p50(student, "onnxruntime", "int8", 32),
            ">=",
            1.0,
        )
    )
    out += [
        (
            f"{name}: int8 top-1 within 1 point of fp32",
            abs(art[name]["fp32"]["top1"] - art[name]["int8"]["top1"]),
            "<=",
            1.0,
        )
        for name in models
    ]
    return [{"goal": g, "value": v, "target": t, "met": bool(v >= t if op == ">=" else v <= t)} for g, v, op, t in out]


def table(model: dict, args: argparse.Namespace) -> Table:
    t = Table(
        title=f"{model['stage']} ({model['arch']}) on {cpu_name()}, {args.threads} thread(s), p50 ms",
        title_justify="left",
    )
    for col in ("backend", "MB", "top-1 %", *(f"batch {b}" for b in BATCH_SIZES), "× vs fp32 b1", "× vs fp32 b32"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    art = {r["precision"]: r for r in model["artefacts"]}
    t.add_row(
        "torch fp32",
        f"{model['checkpoint_bytes'] / 1e6:.2f} (.pt)",
        f"{art['fp32']['reference_top1']:.2f}",
        *(f"{p50(model, 'torch', 'fp32', b):.3f}" for b in BATCH_SIZES),
        "",
        "",
    )
    for p in PRECISIONS:
        t.add_row(
            f"onnxruntime {p}",
            f"{art[p]['bytes'] / 1e6:.2f}",
            f"{art[p]['top1']:.2f}",
            *(f"{p50(model, 'onnxruntime', p, b):.3f}" for b in BATCH_SIZES),
            *(f"{p50(model, 'onnxruntime', 'fp32', b) / p50(model, 'onnxruntime', p, b):.2f}x" for b in BATCH_SIZES),
        )
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="run directory (default runs/latest)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of torch and onnxruntime alike")
    parser.add_argument("--iters", type=int, default=100, help="timed calls per backend and batch size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls first")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    parser.add_argument("--tolerance", action="append", default=[], help="as export's: int8.min_agreement=80")
    args = parser.parse_args()

    console = Console(width=None if sys.stdout.isatty() else 120)  # keep the table whole in logs
    run = resolve_run(args.run)
    torch.set_num_threads(args.threads)
    models = {stage: measure(run, stage, args, console) for stage in ("student", "generous_teacher")}
    result = {
        "benchmark": "export",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "machine": {
            **machine_info(args.threads),
            "note": "2-core CPU; each backend timed in turn, the other work on the machine paused",
        },
        "versions": {**versions(), "onnx": onnx.__version__},
        "run": {"path": str(run.path), "command": (run.saved_config().environment or {}).get("command")},
        "models": models,
        "goals": goals(models),
    }
    write_json(args.out, result)
    for model in models.values():
        console.print(table(model, args))
    for g in result["goals"]:
        console.print(
            f"{'met' if g['met'] else 'NOT met'}: {g['goal']} (measured {g['value']:.2f}, target {g['target']:g})",
            style="green" if g["met"] else "red",
        )
    console.print(f"results in {args.out}")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        sys.exit(f"error: {e}")
