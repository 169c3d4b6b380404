"""The `gtcompress` command line: parses options into a configuration and calls one stage function.

Only typer, rich, pydantic and the configurations are imported here: each command imports what it runs, so that
`gtcompress --help` answers at once.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.columns import Columns

from .backends import backend_help
from .errors import UserError
from .options import (
    EXPORT,
    OldModel,
    OldModels,
    bench_group,
    bench_values,
    distill_group,
    distill_overrides,
    export_group,
    export_values,
    only_given,
    precision_alias,
    split,
    stage_alias,
    takes,
    user_errors,
)
from .rundir import RunDir, resolve_run
from .settings import BenchConfig, ExportConfig, PublishConfig
from .terminal import console, is_main_process, say
from .typed import field_help, validate

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generous Teacher distillation of timm models, exported to ONNX/TensorRT and benchmarked.",
)
RUN = "Run"
Out = Annotated[
    Optional[Path], typer.Option(help="Run directory (default runs/<timestamp>).", rich_help_panel=RUN, metavar="PATH")
]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="Continue the run in --out (default runs/latest).", rich_help_panel=RUN, metavar=""),
]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False) -> None:
    """Options before the command (read by `user_errors` from the root context)."""


def _distill_step(options: dict[str, Any], out: Path | None, resume: bool) -> Any:
    """The training step the options describe: a new run's configuration, or the run to resume (with the keys the
    command line set, which must agree with its saved configuration)."""
    from .config import given_keys, load_config
    from .workflow import Distill

    overrides = distill_overrides(options)
    given = given_keys(options["recipe"], overrides) if resume else None  # re-running the command is fine
    cfg = load_config(options["recipe"], overrides) if not resume or given else None
    return Distill(cfg, out, resume, given)


@app.command()
@user_errors
@takes(distill_group)
def distill(
    ctx: typer.Context,
    out: Out = None,
    resume: Resume = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Build data, models and optimizers, then stop.", rich_help_panel=RUN)
    ] = False,
    options: dict[str, Any] | None = None,
) -> None:
    """Train the Standard Teacher, the Generous Teacher and the student(s) into one run directory."""
    from .pipeline import run_distill
    from .report import stage_table
    from .stages import stage_records

    step = _distill_step(options, out, resume)
    run = run_distill(step.cfg, out=out, resume=resume, console=console, dry_run=dry_run, given=step.given)
    if run is not None and is_main_process():
        console.print(stage_table(stage_records(run)))
        say(f"results in {run.path} (metrics.json, history.jsonl, *.pt); next: gtcompress export")


@app.command()
@user_errors
@takes(distill_group)
def candidates(ctx: typer.Context, options: dict[str, Any] | None = None) -> None:
    """What could I ship here? Each candidate student's latency on the target against the teacher's, untrained."""
    from .candidates import candidate_table, measure
    from .config import load_config
    from .data import load_splits
    from .resolve import resolve_names

    cfg, notes = resolve_names(load_config(options["recipe"], distill_overrides(options)))
    for note in notes:
        say(f"resolved {note}")
    splits = load_splits(cfg.data)
    console.print(candidate_table(measure(cfg, splits.num_classes, cfg.data.img_size or splits.img_size, say)))


@app.command()
@user_errors
def models(
    ctx: typer.Context,
    pattern: Annotated[str, typer.Argument(help="Wildcard filter, e.g. 'mobilenetv3*'.")] = "*",
    pretrained: Annotated[bool, typer.Option("--pretrained", help="Only models with pretrained weights.")] = False,
) -> None:
    """List timm model names."""
    import timm

    pattern = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
    names = timm.list_models(pattern, pretrained=pretrained)
    if not names:
        raise UserError(f"no timm model matches '{pattern}'", "try a shorter pattern, e.g. 'resnet*'")
    console.print(Columns(names, equal=True, column_first=True))
    console.print(f"{len(names)} models", style="dim")


@app.command()
@user_errors
@takes(export_group)
def export(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=field_help(ExportConfig, "run"))] = None,
    stage: Annotated[Optional[str], typer.Option(help=field_help(ExportConfig, "stage"))] = None,
    model: OldModel = None,
    backend: Annotated[
        Optional[list[str]], typer.Option(help=field_help(ExportConfig, "backends"), rich_help_panel=EXPORT)
    ] = None,
    precision: Annotated[Optional[list[str]], typer.Option(hidden=True, help="Deprecated: --export-precision.")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "checkpoint"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help=field_help(ExportConfig, "dataset"))] = None,
    data_root: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "data_root"))] = None,
    out: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "out"))] = None,
    triton: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "triton"))] = None,
    qat: Annotated[
        Optional[int],
        typer.Option(
            help="Fine-tune the run's student for EPOCHS (>= 1) of quantization-aware distillation, then export "
            "that copy (the run resumes with the stage added).",
            rich_help_panel=EXPORT,
            metavar="EPOCHS",
        ),
    ] = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Export a run's model to ONNX (fp32/fp16/int8) and TensorRT, each verified against PyTorch on the test set."""
    from .export.exporter import artefact_table, run_export

    if qat is not None:  # the run's students gain QAT copies first (pipeline.add_qat); the copy is exported
        if qat < 1 or checkpoint is not None:
            raise UserError(
                "export --qat fine-tunes a run's student for N >= 1 epochs", "pass a run: export RUN --qat N"
            )
        from .pipeline import add_qat

        found = resolve_run(run)
        run, stage, model = found.path, add_qat(found, qat, stage_alias(stage, model) or "student", console), None

    values = {
        "run": run,
        "checkpoint": checkpoint,
        "stage": stage_alias(stage, model),
        "dataset": dataset,
        "data_root": data_root,
        "out": out,
        "triton": triton,
    }
    values = {**only_given(values), **export_values(precision_alias(precision, options), backend)}
    cfg = validate(ExportConfig, values, hint="see gtcompress export --help")
    console.print(artefact_table(run_export(cfg, say=say)))


@app.command("eval")
@user_errors
def eval_(
    ctx: typer.Context,
    artefact: Annotated[Path, typer.Argument(help="A .pt checkpoint, .onnx file or .engine file.")],
    dataset: Annotated[Optional[str], typer.Option(help="Data set (default: the artefact's run's).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Data directory (CIFAR, ImageFolder).")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download CIFAR if missing.")] = False,
    device: Annotated[str, typer.Option(help="cpu | cuda (engines run on CUDA).")] = "cpu",
    backend: Annotated[
        Optional[str], typer.Option(help=f"{backend_help()} (default: the first that runs the file).")
    ] = None,
) -> None:
    """Test-set accuracy of a checkpoint, ONNX file or TensorRT engine, on any backend that runs it."""
    from .evaluate import evaluate_artefact

    result = evaluate_artefact(
        artefact, dataset=dataset, data_root=data_root, device=device, backend=backend, download=download
    )
    topk = next(k for k in result if k.startswith("top") and k != "top1")
    console.print(
        f"{artefact.name} ({result['backend']} {result['precision']}): top-1 {result['top1']:.2f}%  "
        f"{topk.replace('top', 'top-')} {result[topk]:.2f}%  on {result['data']}",
        highlight=False,
    )


@app.command()
@user_errors
@takes(bench_group)
def bench(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=field_help(BenchConfig, "run"))] = None,
    backend: Annotated[Optional[list[str]], typer.Option(help=field_help(BenchConfig, "backends"))] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help=field_help(BenchConfig, "precisions"))] = None,
    stage: Annotated[Optional[list[str]], typer.Option(help=field_help(BenchConfig, "stages"))] = None,
    model: OldModels = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Latency percentiles and throughput of the students and the teacher on every backend -> RUN/bench.json."""
    from .bench import bench_table, run_bench

    values = {"run": run, "backends": split(backend), "precisions": split(precision)}
    values = {**only_given({**values, "stages": split(stage_alias(stage, model))}), **bench_values(options)}
    result = run_bench(validate(BenchConfig, values, hint="see gtcompress bench --help"), say=say, console=console)
    console.print(bench_table(result))
    say(f"wrote {RunDir(result.run).bench_path}; next: gtcompress report")


@app.command()
@user_errors
def report(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help="Run directory (default runs/latest).")] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="Batch size of the latency columns (default: smallest).")
    ] = None,
    latency_budget: Annotated[
        Optional[float], typer.Option(help="Recommend within this p50 (ms); default: the run's --latency-budget.")
    ] = None,
) -> None:
    """Accuracy, size and latency of every model and artefact, and which student to ship -> RUN/report.*"""
    from .report import report as write

    write(run, batch_size, say, console, latency_budget)


@app.command()
@user_errors
def repair(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help="Run directory (default runs/latest).")] = None,
) -> None:
    """Fix a damaged run: metrics.json rebuilt from the checkpoints, history.jsonl's unreadable lines dropped.

    Export records that still read are kept (others: verify the files again with `gtcompress export`).
    """
    from .repair import repair as fix

    fix(run, say)


@app.command()
@user_errors
def publish(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=field_help(PublishConfig, "run"))] = None,
    out: Annotated[Path, typer.Option(help=field_help(PublishConfig, "out"))] = ...,
    stage: Annotated[Optional[str], typer.Option(help=field_help(PublishConfig, "stage"))] = None,
    license_: Annotated[str, typer.Option("--license", help=field_help(PublishConfig, "license"))] = "other",
    push: Annotated[Optional[str], typer.Option(help=field_help(PublishConfig, "push"))] = None,
    private: Annotated[bool, typer.Option("--private", help=field_help(PublishConfig, "private"))] = False,
    force: Annotated[bool, typer.Option("--force", help=field_help(PublishConfig, "force"))] = False,
) -> None:
    """Share a run's model as a Hugging Face model folder timm loads (+ model card, ONNX files); --push uploads it."""
    from .publish import publish as write

    write(PublishConfig(run=run, out=out, stage=stage, license=license_, push=push, private=private, force=force), say)


@app.command()
@user_errors
@takes(distill_group, export_group, bench_group)
def run(
    ctx: typer.Context,
    out: Out = None,
    resume: Resume = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what every step would do, then stop.", rich_help_panel=RUN)
    ] = False,
    backend: Annotated[
        Optional[list[str]],
        typer.Option(
            help=field_help(BenchConfig, "backends") + " Those with artefacts of their own are built too.",
            rich_help_panel="Benchmark",
        ),
    ] = None,
    skip_distill: Annotated[
        bool, typer.Option("--skip-distill", help="Use the run as it is.", rich_help_panel=RUN)
    ] = False,
    skip_export: Annotated[
        bool, typer.Option("--skip-export", help="Use the exports as they are.", rich_help_panel=RUN)
    ] = False,
    skip_bench: Annotated[
        bool, typer.Option("--skip-bench", help="Use bench.json as it is.", rich_help_panel=RUN)
    ] = False,
    options: dict[str, Any] | None = None,
) -> None:
    """distill -> export -> bench -> report in one go, with every option of distill, export and bench.

    Resumable: `gtcompress run --resume --out RUN` finishes the stages and exports that are not done yet.
    """
    from .rundir import new_run_path
    from .workflow import Workflow, describe, run_workflow

    export = None if skip_export else export_values(options, backend)  # bad options fail here, before training
    benched = {"backends": split(backend), **bench_values(options)}
    bench = None if skip_bench else validate(BenchConfig, only_given(benched), hint="see gtcompress run --help")
    distill_options = {k: v for k, v in options.items() if k in _DISTILL_OPTIONS}
    if skip_distill and distill_overrides(distill_options):
        raise UserError("--skip-distill takes no distill options", "drop them, or drop --skip-distill")
    out = out or (None if resume or skip_distill else new_run_path())
    step = None if skip_distill else _distill_step(distill_options, out, resume)
    workflow = Workflow.default(step, export, bench)
    if dry_run:
        from .pipeline import run_distill

        if step is not None:
            run_distill(step.cfg, out=out, resume=resume, console=console, dry_run=True, given=step.given)
        describe(workflow, say)
        return
    run_workflow(workflow, say, console, out)


_DISTILL_OPTIONS = frozenset(inspect.signature(distill_group).parameters)
