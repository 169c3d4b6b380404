"""The `gtcompress` command line: parses options into a configuration and calls one stage function."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.columns import Columns

from .backends import backend_help
from .bench import BenchConfig, parse_batch_sizes, parse_threads
from .distributed import is_main_process
from .errors import UserError
from .export.config import ExportConfig, parse_tolerances
from .options import (
    TOLERANCE_HELP,
    BudgetBackend,
    BudgetBatch,
    BudgetPrecision,
    LatencyBudget,
    OldModel,
    OldModels,
    Sets,
    Students,
    config_option,
    distill_overrides,
    only_given,
    split,
    stage_alias,
    user_errors,
)
from .publish import PublishConfig
from .rundir import RunDir
from .terminal import console, say
from .typed import field_default, field_help, validate

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generous Teacher distillation of timm models, exported to ONNX/TensorRT and benchmarked.",
)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False) -> None:
    """Options before the command (read by `user_errors` from the root context)."""


@app.command()
@user_errors
def distill(
    ctx: typer.Context,
    teacher: Annotated[Optional[str], config_option("teacher")] = None,
    student: Students = None,
    dataset: Annotated[Optional[str], config_option("dataset")] = None,
    data_root: Annotated[Optional[Path], config_option("data_root")] = None,
    download: Annotated[Optional[bool], config_option("download", "--download")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="yAML recipe; options given here override it")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs of every stage")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="global batch size of every stage")] = None,
    lr: Annotated[Optional[float], typer.Option(help="peak learning rate of every stage")] = None,
    img_size: Annotated[Optional[int], config_option("img_size")] = None,
    small_stem: Annotated[Optional[bool], config_option("small_stem", "--small-stem")] = None,
    method: Annotated[Optional[str], config_option("method")] = None,
    gt_beta: Annotated[Optional[float], config_option("gt_beta")] = None,
    gt_k: Annotated[Optional[float], config_option("gt_k")] = None,
    gt_init: Annotated[Optional[str], config_option("gt_init")] = None,
    teacher_checkpoint: Annotated[Optional[Path], config_option("teacher_checkpoint")] = None,
    pretrained: Annotated[Optional[bool], config_option("pretrained", "--pretrained")] = None,
    compare: Annotated[Optional[bool], config_option("compare", "--compare")] = None,
    seed: Annotated[Optional[int], config_option("seed")] = None,
    device: Annotated[Optional[str], config_option("device")] = None,
    precision: Annotated[Optional[str], config_option("precision")] = None,
    dist_bn: Annotated[Optional[str], config_option("dist_bn")] = None,
    compile_: Annotated[Optional[bool], config_option("compile_", "--compile")] = None,
    tensorboard: Annotated[Optional[bool], config_option("tensorboard", "--tensorboard")] = None,
    cache_teacher_logits: Annotated[
        Optional[bool], config_option("cache_teacher_logits", "--cache-teacher-logits/--no-cache-teacher-logits")
    ] = None,
    set_: Sets = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<timestamp>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out (default runs/latest).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build data, models and optimizers, then stop.")] = False,
    latency_budget: LatencyBudget = None,
    budget_backend: BudgetBackend = None,
    budget_batch: BudgetBatch = None,
    budget_precision: BudgetPrecision = None,
) -> None:
    """Train the Standard Teacher, the Generous Teacher and the student(s) into one run directory."""
    from .config import given_keys, load_config
    from .pipeline import run_distill
    from .report import stage_table
    from .stages import stage_records

    overrides = distill_overrides(ctx.params)
    given = given_keys(recipe, overrides) if resume else None  # re-running the starting command is fine
    cfg = load_config(recipe, overrides) if not resume or given else None
    run = run_distill(cfg, out=out, resume=resume, console=console, dry_run=dry_run, given=given)
    if run is not None and is_main_process():
        console.print(stage_table(stage_records(run)))
        say(f"results in {run.path} (metrics.json, history.jsonl, *.pt); next: gtcompress export")


@app.command()
@user_errors
def candidates(
    ctx: typer.Context,
    student: Students = None,
    teacher: Annotated[Optional[str], typer.Option(help="The teacher the students must beat on speed.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="yAML recipe; options given here override it")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="The data set (its class count and image size).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Data directory (CIFAR, ImageFolder).")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input resolution.")] = None,
    set_: Sets = None,
    latency_budget: LatencyBudget = None,
    budget_backend: BudgetBackend = None,
    budget_batch: BudgetBatch = None,
    budget_precision: BudgetPrecision = None,
) -> None:
    """What could I ship here? Each candidate student's latency on the target against the teacher's, untrained."""
    from .candidates import candidate_table, measure
    from .config import load_config
    from .data import load_splits
    from .resolve import resolve_names

    cfg, notes = resolve_names(load_config(recipe, distill_overrides(ctx.params)))
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
def export(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=field_help(ExportConfig, "run"))] = None,
    stage: Annotated[Optional[str], typer.Option(help=field_help(ExportConfig, "stage"))] = None,
    model: OldModel = None,
    precision: Annotated[Optional[list[str]], typer.Option(help=field_help(ExportConfig, "precisions"))] = None,
    trt: Annotated[bool, typer.Option("--trt", help=field_help(ExportConfig, "trt"))] = False,
    max_batch: Annotated[int, typer.Option(help=field_help(ExportConfig, "max_batch"))] = field_default(
        ExportConfig, "max_batch"
    ),
    workspace_gib: Annotated[float, typer.Option(help=field_help(ExportConfig, "workspace_gib"))] = field_default(
        ExportConfig, "workspace_gib"
    ),
    opt_batches: Annotated[str, typer.Option(help=field_help(ExportConfig, "opt_batches"))] = ",".join(
        map(str, field_default(ExportConfig, "opt_batches"))
    ),
    calibration_images: Annotated[
        int, typer.Option(help=field_help(ExportConfig, "calibration_images"))
    ] = field_default(ExportConfig, "calibration_images"),
    calibration_method: Annotated[
        str, typer.Option(help=field_help(ExportConfig, "calibration_method"))
    ] = field_default(ExportConfig, "calibration_method"),
    int8_format: Annotated[str, typer.Option(help=field_help(ExportConfig, "int8_format"))] = field_default(
        ExportConfig, "int8_format"
    ),
    opset: Annotated[Optional[int], typer.Option(help=field_help(ExportConfig, "opset"))] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help=TOLERANCE_HELP)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "checkpoint"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help=field_help(ExportConfig, "dataset"))] = None,
    data_root: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "data_root"))] = None,
    out: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "out"))] = None,
    triton: Annotated[Optional[Path], typer.Option(help=field_help(ExportConfig, "triton"))] = None,
) -> None:
    """Export a run's model to ONNX (fp32/fp16/int8) and TensorRT, each verified against PyTorch on the test set."""
    from .export.exporter import artefact_table, run_export

    values = {
        "run": run,
        "checkpoint": checkpoint,
        "stage": stage_alias(stage, model),
        "precisions": split(precision),
        "trt": trt,
        "max_batch": max_batch,
        "workspace_gib": workspace_gib,
        "opt_batches": parse_batch_sizes(opt_batches, "--opt-batches"),
        "calibration_images": calibration_images,
        "calibration_method": calibration_method,
        "int8_format": int8_format,
        "opset": opset,
        "dataset": dataset,
        "data_root": data_root,
        "out": out,
        "triton": triton,
        "tolerances": parse_tolerances(tolerance or []),
    }
    cfg = validate(ExportConfig, only_given(values), hint="see gtcompress export --help")
    console.print(artefact_table(run_export(cfg, say=say)))


@app.command("eval")
@user_errors
def eval_(
    ctx: typer.Context,
    artefact: Annotated[Path, typer.Argument(help="A .pt checkpoint, .onnx file or .engine file.")],
    dataset: Annotated[Optional[str], typer.Option(help="Data set (default: the artefact's run's).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Data directory (CIFAR, ImageFolder).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda (engines run on CUDA).")] = "cpu",
    backend: Annotated[
        Optional[str], typer.Option(help=f"{backend_help()} (default: the first that runs the file).")
    ] = None,
) -> None:
    """Test-set accuracy of a checkpoint, ONNX file or TensorRT engine, on any backend that runs it."""
    from .evaluate import evaluate_artefact

    result = evaluate_artefact(artefact, dataset=dataset, data_root=data_root, device=device, backend=backend)
    topk = next(k for k in result if k.startswith("top") and k != "top1")
    console.print(
        f"{artefact.name} ({result['backend']} {result['precision']}): top-1 {result['top1']:.2f}%  "
        f"{topk.replace('top', 'top-')} {result[topk]:.2f}%  on {result['data']}",
        highlight=False,
    )


def _bench_config(values: dict[str, Any]) -> BenchConfig:
    return validate(BenchConfig, only_given(values), hint="see gtcompress bench --help")


@app.command()
@user_errors
def bench(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=field_help(BenchConfig, "run"))] = None,
    backend: Annotated[Optional[list[str]], typer.Option(help=field_help(BenchConfig, "backends"))] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help=field_help(BenchConfig, "precisions"))] = None,
    stage: Annotated[Optional[list[str]], typer.Option(help=field_help(BenchConfig, "stages"))] = None,
    model: OldModels = None,
    batch_sizes: Annotated[str, typer.Option(help=field_help(BenchConfig, "batch_sizes"))] = ",".join(
        map(str, field_default(BenchConfig, "batch_sizes"))
    ),
    iters: Annotated[Optional[int], typer.Option(help=field_help(BenchConfig, "iters"))] = None,
    seconds: Annotated[Optional[float], typer.Option(help=field_help(BenchConfig, "seconds"))] = None,
    warmup: Annotated[int, typer.Option(help=field_help(BenchConfig, "warmup"))] = field_default(BenchConfig, "warmup"),
    threads: Annotated[str, typer.Option(help=field_help(BenchConfig, "threads"))] = field_default(
        BenchConfig, "threads"
    ),
    cuda_graph: Annotated[str, typer.Option(help=field_help(BenchConfig, "cuda_graph"))] = field_default(
        BenchConfig, "cuda_graph"
    ),
    device: Annotated[str, typer.Option(help=field_help(BenchConfig, "device"))] = field_default(BenchConfig, "device"),
) -> None:
    """Latency percentiles and throughput of the students and the teacher on every backend -> RUN/bench.json."""
    from .bench import bench_table, run_bench

    cfg = _bench_config(
        {
            "run": run,
            "backends": split(backend),
            "precisions": split(precision),
            "stages": split(stage_alias(stage, model)),
            "batch_sizes": parse_batch_sizes(batch_sizes),
            "iters": iters,
            "seconds": seconds,
            "warmup": warmup,
            "threads": parse_threads(threads),
            "cuda_graph": cuda_graph,
            "device": device,
        }
    )
    result = run_bench(cfg, say=say, console=console)
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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
@user_errors
def run(
    ctx: typer.Context,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<timestamp>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out (default runs/latest).")] = False,
    precision: Annotated[
        Optional[list[str]], typer.Option(help="Student export precisions (the teacher is exported at fp32).")
    ] = None,
    trt: Annotated[bool, typer.Option("--trt", help="Also build TensorRT engines (CUDA).")] = False,
    tolerance: Annotated[Optional[list[str]], typer.Option(help=TOLERANCE_HELP)] = None,
    backend: Annotated[Optional[list[str]], typer.Option(help=field_help(BenchConfig, "backends"))] = None,
    batch_sizes: Annotated[str, typer.Option(help=field_help(BenchConfig, "batch_sizes"))] = ",".join(
        map(str, field_default(BenchConfig, "batch_sizes"))
    ),
    iters: Annotated[Optional[int], typer.Option(help=field_help(BenchConfig, "iters"))] = None,
    seconds: Annotated[Optional[float], typer.Option(help=field_help(BenchConfig, "seconds"))] = None,
    threads: Annotated[str, typer.Option(help=field_help(BenchConfig, "threads"))] = field_default(
        BenchConfig, "threads"
    ),
    skip_distill: Annotated[bool, typer.Option("--skip-distill", help="Use the run as it is.")] = False,
    skip_export: Annotated[bool, typer.Option("--skip-export", help="Use the exports as they are.")] = False,
    skip_bench: Annotated[bool, typer.Option("--skip-bench", help="Use bench.json as it is.")] = False,
) -> None:
    """distill -> export -> bench -> report in one go. Takes every `gtcompress distill` option too.

    Resumable: `gtcompress run --resume --out RUN` finishes the stages and exports that are not done yet.
    """
    from .rundir import new_run_path
    from .workflow import Workflow, run_workflow

    tolerances = parse_tolerances(tolerance or [])  # bad options fail here, not after the training
    bench = (
        None
        if skip_bench
        else _bench_config(
            {
                "backends": split(backend),
                "batch_sizes": parse_batch_sizes(batch_sizes),
                "iters": iters,
                "seconds": seconds,
                "threads": parse_threads(threads),
            }
        )
    )
    workflow = Workflow.default(split(precision), trt, tolerances, bench, export=not skip_export)
    if skip_distill and ctx.args:
        raise UserError(f"--skip-distill takes no distill options (got {' '.join(ctx.args)})", "drop them")
    if not skip_distill:
        out = out or (None if resume else new_run_path())
        distill_cmd = typer.main.get_command(app).get_command(ctx, "distill")
        args = [*ctx.args, *(["--out", str(out)] if out else []), *(["--resume"] if resume else [])]
        with distill_cmd.make_context("distill", args, parent=ctx.parent) as sub:
            distill_cmd.invoke(sub)
    run_workflow(out, workflow, say, console)
