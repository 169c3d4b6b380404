"""Export benchmark: size, accuracy and onnxruntime CPU latency of the fp32/fp16/int8 student vs PyTorch eager.

    python benchmarks/export.py [RUN] [--threads 1] [--iters 200]

RUN is a finished `gtcompress distill` run (default runs/latest; `make demo` makes one). The script
exports and verifies its student in every precision (into RUN/export, as `gtcompress export` does), then
times PyTorch eager and the three ONNX files at batch 1 and 32 with one shared thread count, the
backends interleaved call by call so that a busy machine slows them alike, and checks the goals of
issue 4. Results go to benchmarks/results/export.json.
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
import yaml
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gtcompress import __version__  # noqa: E402
from gtcompress.backends import OnnxRuntimeBackend, TorchBackend  # noqa: E402
from gtcompress.environment import cpu_name, machine_info, versions  # noqa: E402
from gtcompress.export.config import ExportConfig  # noqa: E402
from gtcompress.export.exporter import run_export  # noqa: E402
from gtcompress.export.source import load_eval_data, resolve_source  # noqa: E402
from gtcompress.export.verify import batches  # noqa: E402
from gtcompress.models import load_model  # noqa: E402
from gtcompress.rundir import resolve_run, write_json  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "export.json"
BATCH_SIZES = (1, 32)
PRECISIONS = ("fp32", "fp16", "int8")


def time_interleaved(backends: dict[str, object], x: np.ndarray, iters: int, warmup: int) -> dict[str, list[float]]:
    """Per-call latencies (ms) of each backend on `x`, the backends taking turns call by call."""
    for backend in backends.values():
        for _ in range(warmup):
            backend.infer(x)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(iters):
        for name, backend in backends.items():
            start = time.perf_counter()
            backend.infer(x)
            times[name].append(1e3 * (time.perf_counter() - start))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="run directory (default runs/latest)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of torch and onnxruntime alike")
    parser.add_argument("--iters", type=int, default=200, help="timed calls per backend and batch size")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls first")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    args = parser.parse_args()

    console = Console(width=None if sys.stdout.isatty() else 120)  # keep the table whole in logs
    run = resolve_run(args.run)
    records = run_export(ExportConfig(run=run.path, precisions=PRECISIONS), say=console.print)
    by_precision = {r["precision"]: r for r in records}

    torch.set_num_threads(args.threads)
    model, spec, _ = load_model(run.checkpoint("student"))
    source = resolve_source(ExportConfig(run=run.path))
    data = load_eval_data(source.data, spec)
    images = np.concatenate(list(batches(data.test, max(BATCH_SIZES))))
    backends = {"torch eager fp32": TorchBackend(model, "cpu", "fp32")}
    for precision in PRECISIONS:
        backends[f"onnxruntime {precision}"] = OnnxRuntimeBackend(
            run.path / by_precision[precision]["path"], "cpu", precision, threads=args.threads
        )

    latency = []
    for batch in BATCH_SIZES:
        times = time_interleaved(backends, images[:batch], args.iters, args.warmup)
        for name, ms in times.items():
            backend, precision = name.rsplit(" ", 1)
            latency.append(
                {
                    "backend": backend.split()[0],
                    "precision": precision,
                    "batch_size": batch,
                    "p50_ms": float(np.median(ms)),
                    "p90_ms": float(np.percentile(ms, 90)),
                    "mean_ms": float(np.mean(ms)),
                    "iters": len(ms),
                }
            )

    def p50(backend: str, precision: str, batch: int) -> float:
        return next(
            r["p50_ms"]
            for r in latency
            if (r["backend"], r["precision"], r["batch_size"]) == (backend, precision, batch)
        )

    speedups = {
        f"onnxruntime {p} vs torch eager, batch {b}": p50("torch", "fp32", b) / p50("onnxruntime", p, b)
        for b in BATCH_SIZES
        for p in PRECISIONS
    }
    fp32, int8 = by_precision["fp32"], by_precision["int8"]
    goals = [
        {
            "goal": "onnxruntime fp32 >= 5x faster than PyTorch eager at batch 1",
            "value": speedups["onnxruntime fp32 vs torch eager, batch 1"],
            "target": 5.0,
        },
        {"goal": "int8 file <= 30% of fp32", "value": 100 * int8["bytes"] / fp32["bytes"], "target": 30.0},
        {"goal": "int8 top-1 within 1 point of fp32", "value": abs(fp32["top1"] - int8["top1"]), "target": 1.0},
    ]
    for g, met in zip(
        goals, (goals[0]["value"] >= 5.0, goals[1]["value"] <= 30.0, goals[2]["value"] <= 1.0), strict=True
    ):
        g["met"] = bool(met)

    environment = yaml.safe_load(run.config.read_text()).get("environment") or {}
    result = {
        "benchmark": "export",
        "gtcompress": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            **machine_info(args.threads),
            "note": "2-core CPU shared with other jobs; latencies interleaved call by call, compare ratios",
        },
        "versions": {**versions(), "onnx": onnx.__version__},
        "run": {
            "path": str(run.path),
            "command": environment.get("command"),
            "student": spec.arch,
            "test_images": len(data.labels),
        },
        "artefacts": [
            {
                k: r[k]
                for k in ("precision", "path", "bytes", "top1", "reference_top1", "top1_agreement", "max_abs_diff")
            }
            for r in records
        ],
        "latency": latency,
        "speedups": speedups,
        "goals": goals,
    }
    write_json(args.out, result)

    table = Table(title=f"{spec.arch} on {cpu_name()}, {args.threads} thread(s), p50 ms", title_justify="left")
    for col in ("backend", "MB", "top-1 %", *(f"batch {b}" for b in BATCH_SIZES), "speed-up b1", "speed-up b32"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    table.add_row(
        "torch eager fp32",
        f"{os.path.getsize(run.checkpoint('student')) / 1e6:.2f} (.pt)",
        f"{fp32['reference_top1']:.2f}",
        *(f"{p50('torch', 'fp32', b):.3f}" for b in BATCH_SIZES),
        "1.0x",
        "1.0x",
    )
    for p in PRECISIONS:
        r = by_precision[p]
        table.add_row(
            f"onnxruntime {p}",
            f"{r['bytes'] / 1e6:.2f}",
            f"{r['top1']:.2f}",
            *(f"{p50('onnxruntime', p, b):.3f}" for b in BATCH_SIZES),
            *(f"{speedups[f'onnxruntime {p} vs torch eager, batch {b}']:.1f}x" for b in BATCH_SIZES),
        )
    console.print(table)
    for g in goals:
        console.print(
            f"{'met' if g['met'] else 'NOT met'}: {g['goal']} (measured {g['value']:.2f}, target {g['target']:g})",
            style="green" if g["met"] else "red",
        )
    console.print(f"results in {args.out}")


if __name__ == "__main__":
    main()
