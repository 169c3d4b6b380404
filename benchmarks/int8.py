"""int8 benchmark: each int8 method and format side by side on one run's models, on this host's kernels.

    python -m benchmarks.int8 [RUN] [--qat 2] [--speed] [--threads 2] [--out benchmarks/results/int8.json]

RUN is a finished `gtcompress distill` run (default runs/latest; `make demo` makes one). For its student and
its Generous Teacher the script exports the int8 graph of every method (plain PTQ, accuracy-aware PTQ) in the
portable format, and plain PTQ in the VNNI-only format, each verified as `gtcompress export` verifies it (the
tolerance opened so every result is recorded), into a copy of the run. With --qat N (default 2; 0: none) the
copy's student is also fine-tuned with fake quantizers for N epochs (`export --qat`) and its int8 file made by
plain PTQ: the row "qat", whose drop is measured against the student's own fp32 top-1. Each row: top-1 and
agreement with PyTorch on onnxruntime (and OpenVINO where installed), the drop from the fp32 model it replaces,
size, the layers left in float, the static saturation verdict, and the host's cpu_features. With --speed, the
onnxruntime p50 of fp32 and of each int8 file at batch 32, one after another (time nothing else meanwhile).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from gtcompress.backends import BACKENDS, Setting
from gtcompress.environment import command_line, cpu_features, machine_info, versions
from gtcompress.evaluate import batches, load_eval_data
from gtcompress.export.exporter import run_export
from gtcompress.export.source import resolve_source
from gtcompress.files import write_json
from gtcompress.models import load_model
from gtcompress.pipeline import add_qat
from gtcompress.rundir import RunDir, resolve_run
from gtcompress.settings import ExportConfig, parse_tolerances
from gtcompress.timing import time_backend

RESULTS = Path(__file__).resolve().parent / "results" / "int8.json"
VARIANTS = (  # (method, format): the default first
    ("ptq", "portable"),
    ("accuracy-aware", "portable"),
    ("ptq", "vnni"),
)
STAGES = ("student", "generous_teacher")
SPEED_BATCH = 32


def variant(run: Path, stage: str, method: str, fmt: str, console: Console, label: str | None = None) -> list[dict]:
    """One int8 export of `stage` (fp32 too, its source): every verifier's record of the int8 file, its method
    named `label` where given."""
    cfg = ExportConfig(
        run=run, stage=stage, precisions=("int8",), int8_method=method, int8_format=fmt,
        tolerances=parse_tolerances(["int8.min_agreement=0"]),
    )  # fmt: skip
    records = [r for r in run_export(cfg, say=console.print) if r.precision == "int8" and r.target == "onnxruntime"]
    keep = ("backend", "path", "bytes", "top1", "reference_top1", "top1_agreement", "saturation_safe",
            "heldout_top1", "heldout_reference_top1", "float_layers", "export_seconds")  # fmt: skip
    return [
        {"stage": stage, "method": label or method, "int8_format": fmt, **r.model_dump(include=set(keep))}
        for r in records
    ]


def speed(run: Path, stage: str, files: dict[str, Path], threads: int, iters: int) -> dict[str, float]:
    """onnxruntime p50 (ms) at batch SPEED_BATCH of each file, one after another."""
    _, spec, _ = load_model(run / f"{stage}.pt")
    data = load_eval_data(resolve_source(ExportConfig(run=run, stage=stage)).data, spec)
    images = next(batches(data.test, SPEED_BATCH))
    out = {}
    for name, path in files.items():
        precision = "fp32" if name == "fp32" else "int8"
        with BACKENDS["onnxruntime"].open(path, "cpu", precision, Setting(threads=threads)) as runner:
            out[name] = float(np.median(time_backend(runner, images, 10, iters, None)))
    return out


def measure(run: Path, args: argparse.Namespace, console: Console) -> tuple[list[dict], dict]:
    rows, latency = [], {}
    for stage in STAGES:
        files = {"fp32": run / "export" / f"{stage}.onnx"}
        made = [(stage, method, fmt, None) for method, fmt in VARIANTS]
        if stage == "student" and args.qat:
            made.append((add_qat(RunDir(run), args.qat, stage, console), "ptq", "portable", "qat"))
        for source, method, fmt, label in made:
            records = variant(run, source, method, fmt, console, label)
            baseline = next(r["reference_top1"] for r in rows + records if r["stage"] == stage)
            rows += [{**r, "drop": baseline - r["top1"]} for r in records]
            kept = run / "export" / f"{stage}.{label or method}.{fmt}.int8.onnx"
            shutil.copy(run / records[0]["path"], kept)
            files[f"{label or method} {fmt}"] = kept
        if args.speed:
            latency[stage] = speed(run, stage, files, args.threads, args.iters)
    return rows, latency


def table(rows: list[dict]) -> Table:
    t = Table(title=f"int8 on this host's kernels (cpu_features: {', '.join(cpu_features())})", title_justify="left")
    for col in (
        "model",
        "method",
        "format",
        "backend",
        "MB",
        "top-1 %",
        "drop",
        "PyTorch %",
        "agree %",
        "float",
        "safe",
    ):
        t.add_column(col, justify="left" if col in ("model", "method", "format", "backend") else "right")
    for r in rows:
        t.add_row(
            r["stage"], r["method"], r["int8_format"], r["backend"], f"{r['bytes'] / 1e6:.2f}", f"{r['top1']:.2f}",
            f"{r['drop']:.2f}", f"{r['reference_top1']:.2f}", f"{r['top1_agreement']:.2f}",
            str(len(r.get("float_layers") or [])), str(r["saturation_safe"]),
        )  # fmt: skip
    return t


def markdown(result: dict) -> str:
    """int8.md: the rows on onnxruntime and OpenVINO, with the host's CPU features and the speeds measured."""
    m = result["machine"]
    lines = [
        "# int8 methods and formats side by side (`python -m benchmarks.int8`)",
        "",
        f"Run `{result['run']}`, {result['started']}, {m['cpu']} ({m['cores']} cores), cpu_features: "
        f"{', '.join(m['cpu_features'])}; versions {result['versions']}. Top-1 on the run's test split; drop: the "
        "fp32 PyTorch top-1 of the model the file replaces (the student's, for its QAT copy) minus the file's; "
        "PyTorch: the fp32 top-1 of the checkpoint it was made from; agreement: top-1 the same as that's; held-out: "
        "top-1 on training images the calibration did not see "
        "(accuracy-aware only); float: Conv/MatMul/Gemm nodes left in float; safe: no node can saturate int16 on x86 "
        "without VNNI.",
        "",
        "| model | method | format | backend | MB | top-1 % | drop | PyTorch % | agree % | held-out fp32 → int8 % "
        "| float | safe |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        held = f"{r['heldout_reference_top1']:.1f} → {r['heldout_top1']:.1f}" if r.get("heldout_top1") else ""
        lines.append(
            f"| {r['stage']} | {r['method']} | {r['int8_format']} | {r['backend']} | {r['bytes'] / 1e6:.2f} | "
            f"{r['top1']:.2f} | {r['drop']:.2f} | {r['reference_top1']:.2f} | {r['top1_agreement']:.2f} | {held} | "
            f"{len(r.get('float_layers') or [])} | {r['saturation_safe']} |"
        )
    for stage, ms in result["latency_ms_batch32"].items():
        speeds = ", ".join(f"{k} {v:.3f} ms ({ms['fp32'] / v:.2f}× fp32)" for k, v in ms.items())
        lines += ["", f"{stage}, onnxruntime p50 at batch {SPEED_BATCH}, {m['threads']} threads: {speeds}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, nargs="?", help="run directory (default runs/latest)")
    parser.add_argument("--qat", type=int, default=2, help="QAT epochs of the student's copy (0: no qat row)")
    parser.add_argument("--speed", action="store_true", help="also time fp32 and each int8 file (idle machine)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads for --speed")
    parser.add_argument("--iters", type=int, default=100, help="timed calls per file for --speed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results")
    args = parser.parse_args()
    console = Console(width=None if sys.stdout.isatty() else 140)
    source = resolve_run(args.run)
    with tempfile.TemporaryDirectory(prefix="gtcompress-int8-bench-") as tmp:
        run = Path(tmp) / "run"  # a copy: the run's own export/ and metrics.json stay as they were
        shutil.copytree(source.path, run, ignore=shutil.ignore_patterns("export", "checkpoints"))
        rows, latency = measure(run, args, console)
    result = {
        "benchmark": "int8",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "machine": machine_info(args.threads if args.speed else None),
        "versions": versions(),
        "run": str(source.path),
        "rows": rows,
        "latency_ms_batch32": latency,
    }
    write_json(args.out, result)
    args.out.with_suffix(".md").write_text(markdown(result))
    console.print(table(rows))
    for stage, ms in latency.items():
        console.print(f"{stage}: " + ", ".join(f"{k} {v:.3f} ms ({ms['fp32'] / v:.2f}x fp32)" for k, v in ms.items()))
    console.print(f"results in {args.out}")


if __name__ == "__main__":
    main()
