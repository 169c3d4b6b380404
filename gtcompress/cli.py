"""The `gtcompress` command line: parses options into a configuration and calls one stage function."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.columns import Columns
from rich.console import Console
from rich.markup import escape

from .bench import BenchConfig, parse_batch_sizes
from .distributed import is_main_process, report_rank_failure
from .errors import UserError
from .export.config import ExportConfig, parse_tolerances
from .publish import PublishConfig

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Generous Teacher distillation of timm models, exported to ONNX/TensorRT and benchmarked.",
)
# Tables keep their layout in logs and pipes, where rich would otherwise assume 80 columns.
WIDTH = None if sys.stdout.isatty() else 120
console = Console(soft_wrap=True, width=WIDTH)
err_console = Console(stderr=True, soft_wrap=True, width=WIDTH)


def say(line: str) -> None:
    """A progress line as it is: file names and hints hold brackets that rich would read as markup."""
    console.print(line, markup=False, highlight=False)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False) -> None:
    """Options before the command (read by `user_errors` from the root context)."""


def user_errors(fn: Callable) -> Callable:
    """Turn a UserError into one line on stderr and exit code 2 (unless --debug); Ctrl-C into exit code 130.

    The wrapped command takes `ctx: typer.Context` first, to read the root's --debug.
    """

    @functools.wraps(fn)
    def wrapper(ctx: typer.Context, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(ctx, *args, **kwargs)
        except UserError as e:
            if ctx.find_root().params.get("debug"):
                raise
            # escaped: messages hold brackets (`gtcompress[trt]`) that rich would take for markup
            if is_main_process():  # under torchrun every rank has the error; rank 0 reports it
                err_console.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as e:
            if int(os.environ.get("WORLD_SIZE", "1")) == 1 or ctx.find_root().params.get("debug"):
                raise
            report_rank_failure(e)
            raise typer.Exit(1) from None

    return wrapper


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE", "e.g. --set data.train_fraction=0.2")
        out[key.strip()] = yaml.safe_load(value)
    return out


TOLERANCE_HELP = "Override a verification tolerance: int8.min_agreement=90, fp32.max_abs_diff=1e-2."


def _split(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeatable and comma-separated option values as one tuple (None when not given)."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip()) if values else None


# distill's options that set one configuration key, and those that set a key of every stage's schedule
OPTION_KEYS = {
    "teacher": "teacher.arch",
    "student": "student.arch",
    "dataset": "data.name",
    "data_root": "data.root",
    "download": "data.download",
    "img_size": "data.img_size",
    "small_stem": "small_stem",
    "method": "student.method",
    "gt_beta": "generous.beta",
    "gt_k": "generous.k",
    "gt_init": "generous.init",
    "teacher_checkpoint": "teacher.checkpoint",
    "pretrained": "teacher.pretrained",
    "compare": "compare",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "compile_": "compile",
    "tensorboard": "tensorboard",
    "cache_teacher_logits": "cache_teacher_logits",
    "latency_budget": "budget.latency_ms",
    "budget_backend": "budget.backend",
    "budget_batch": "budget.batch",
    "budget_precision": "budget.precision",
}
PER_STAGE_OPTIONS = ("epochs", "batch_size", "lr")
# The latency budget's options, shared by distill (and run) and candidates.
LatencyBudget = Annotated[
    Optional[float], typer.Option(help="p50 budget (ms) on the target: slower students are dropped before training.")
]
BudgetBackend = Annotated[Optional[str], typer.Option(help="onnxruntime | tensorrt | torch (default: the best here).")]
BudgetBatch = Annotated[Optional[int], typer.Option(help="Batch size of the budget (default 1).")]
BudgetPrecision = Annotated[Optional[str], typer.Option(help="fp32 | fp16 | int8 (default fp16 on CUDA, fp32 on CPU).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Any recipe key: --set data.train_fraction=0.2")]
Students = Annotated[
    Optional[list[str]], typer.Option(help="timm student(s), resolved like --teacher: a,b or repeated.")
]


def _distill_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The dotted configuration keys that distill's given options set (--set last, so it wins)."""
    given = {name: value for name, value in params.items() if value not in (None, [], ())}
    if "student" in given:  # several students: a list, one: a name (as before)
        students = list(_split(given["student"]))
        given["student"] = students[0] if len(students) == 1 else students
    overrides = {
        f"{stage}.train.{name}": given[name]
        for name in PER_STAGE_OPTIONS
        if name in given
        for stage in ("teacher", "generous", "student")
    }
    overrides.update(
        {
            key: str(given[name]) if isinstance(given[name], Path) else given[name]
            for name, key in OPTION_KEYS.items()
            if name in given
        }
    )
    overrides.update(_parse_set(given.get("set_") or []))
    return overrides


@app.command()
@user_errors
def distill(
    ctx: typer.Context,
    teacher: Annotated[Optional[str], typer.Option(help="timm teacher: exact name, prefix or _100 variant.")] = None,
    student: Students = None,
    dataset: Annotated[Optional[str], typer.Option(help="digits | synthetic | cifar10/100 | imagefolder:PATH")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Data directory (CIFAR, ImageFolder).")] = None,
    download: Annotated[Optional[bool], typer.Option("--download", help="Download CIFAR if missing.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="YAML recipe; options given here override it.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs of every stage.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Global batch size of every stage.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate of every stage.")] = None,
    img_size: Annotated[Optional[int], typer.Option(help="Input resolution.")] = None,
    small_stem: Annotated[Optional[bool], typer.Option("--small-stem", help="CIFAR stem for 32-px inputs.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Student distillation: kd | dkd | lskd | dist.")] = None,
    gt_beta: Annotated[
        Optional[float], typer.Option(help="Weight of the GT's non-target term (the authors' --alpha, 1).")
    ] = None,
    gt_k: Annotated[
        Optional[float], typer.Option(help="GT temperature: T = k * std(logits) per sample (the authors' --Tn, 1).")
    ] = None,
    gt_init: Annotated[
        Optional[str], typer.Option(help="GT init: scratch (the authors', ST's schedule) | standard (fine-tune).")
    ] = None,
    teacher_checkpoint: Annotated[Optional[Path], typer.Option(help="Load the Standard Teacher.")] = None,
    pretrained: Annotated[Optional[bool], typer.Option("--pretrained", help="Fine-tune timm's pretrained ST.")] = None,
    compare: Annotated[Optional[bool], typer.Option("--compare", help="Also train the controls.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda")] = None,
    precision: Annotated[Optional[str], typer.Option(help="Training autocast: fp32 | bf16 | fp16 (CUDA).")] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile", help="torch.compile the trained model.")] = None,
    tensorboard: Annotated[Optional[bool], typer.Option("--tensorboard", help="Log to RUN/tensorboard.")] = None,
    cache_teacher_logits: Annotated[
        Optional[bool],
        typer.Option(
            "--cache-teacher-logits/--no-cache-teacher-logits",
            help="Reuse the frozen teachers' logits across epochs (default: when training has no augmentation).",
        ),
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

    overrides = _distill_overrides(ctx.params)
    given = given_keys(recipe, overrides) if resume else None  # re-running the starting command is fine
    cfg = load_config(recipe, overrides) if not resume or given else None
    run = run_distill(cfg, out=out, resume=resume, console=console, dry_run=dry_run, given=given)
    if run is not None and is_main_process():
        console.print(stage_table(run.metrics()))
        console.print(f"results in {run.path} (metrics.json, history.jsonl, *.pt); next: gtcompress export")


@app.command()
@user_errors
def candidates(
    ctx: typer.Context,
    student: Students = None,
    teacher: Annotated[Optional[str], typer.Option(help="The teacher the students must beat on speed.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="YAML recipe; options given here override it.")] = None,
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
    from .pipeline import resolve_names

    cfg = load_config(recipe, _distill_overrides(ctx.params))
    for note in resolve_names(cfg):
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


def _help(config: type, name: str) -> str:
    """A configuration field's description: the CLI's help text, written once."""
    return config.model_fields[name].description


@app.command()
@user_errors
def export(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=_help(ExportConfig, "run"))] = None,
    model: Annotated[str, typer.Option(help=_help(ExportConfig, "stage"))] = "student",
    precision: Annotated[Optional[list[str]], typer.Option(help=_help(ExportConfig, "precisions"))] = None,
    trt: Annotated[bool, typer.Option("--trt", help=_help(ExportConfig, "trt"))] = False,
    max_batch: Annotated[int, typer.Option(help=_help(ExportConfig, "max_batch"))] = 32,
    workspace_gib: Annotated[float, typer.Option(help=_help(ExportConfig, "workspace_gib"))] = 2.0,
    opt_batches: Annotated[str, typer.Option(help=_help(ExportConfig, "opt_batches"))] = "1,8,32",
    calibration_images: Annotated[int, typer.Option(help=_help(ExportConfig, "calibration_images"))] = 256,
    calibration_method: Annotated[str, typer.Option(help=_help(ExportConfig, "calibration_method"))] = "minmax",
    opset: Annotated[Optional[int], typer.Option(help=_help(ExportConfig, "opset"))] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help=TOLERANCE_HELP)] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help=_help(ExportConfig, "checkpoint"))] = None,
    dataset: Annotated[Optional[str], typer.Option(help=_help(ExportConfig, "dataset"))] = None,
    data_root: Annotated[Optional[Path], typer.Option(help=_help(ExportConfig, "data_root"))] = None,
    out: Annotated[Optional[Path], typer.Option(help=_help(ExportConfig, "out"))] = None,
    triton: Annotated[Optional[Path], typer.Option(help=_help(ExportConfig, "triton"))] = None,
) -> None:
    """Export a run's model to ONNX (fp32/fp16/int8) and TensorRT, each verified against PyTorch on the test set."""
    from .export.exporter import artefact_table, run_export

    cfg = ExportConfig(
        run=run,
        checkpoint=checkpoint,
        stage=model,
        precisions=_split(precision) or ("fp32",),
        trt=trt,
        max_batch=max_batch,
        workspace_gib=workspace_gib,
        opt_batches=parse_batch_sizes(opt_batches, "--opt-batches"),
        calibration_images=calibration_images,
        calibration_method=calibration_method,
        opset=opset,
        dataset=dataset,
        data_root=data_root,
        out=out,
        triton=triton,
        tolerances=parse_tolerances(tolerance or []),
    )
    console.print(artefact_table(run_export(cfg, say=say)))


@app.command("eval")
@user_errors
def eval_(
    ctx: typer.Context,
    artefact: Annotated[Path, typer.Argument(help="A .pt checkpoint, .onnx file or .engine file.")],
    dataset: Annotated[Optional[str], typer.Option(help="Data set (default: the artefact's run's).")] = None,
    data_root: Annotated[Optional[Path], typer.Option(help="Data directory (CIFAR, ImageFolder).")] = None,
    device: Annotated[str, typer.Option(help="cpu | cuda (.pt and .onnx; engines run on CUDA).")] = "cpu",
) -> None:
    """Test-set accuracy of a checkpoint, ONNX file or TensorRT engine."""
    from .evaluate import evaluate_artefact

    result = evaluate_artefact(artefact, dataset=dataset, data_root=data_root, device=device)
    topk = next(k for k in result if k.startswith("top") and k != "top1")
    console.print(
        f"{artefact.name} ({result['backend']} {result['precision']}): top-1 {result['top1']:.2f}%  "
        f"{topk.replace('top', 'top-')} {result[topk]:.2f}%  on {result['data']}",
        highlight=False,
    )


@app.command()
@user_errors
def bench(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=_help(BenchConfig, "run"))] = None,
    backend: Annotated[Optional[list[str]], typer.Option(help=_help(BenchConfig, "backends"))] = None,
    precision: Annotated[Optional[list[str]], typer.Option(help=_help(BenchConfig, "precisions"))] = None,
    model: Annotated[Optional[list[str]], typer.Option(help=_help(BenchConfig, "stages"))] = None,
    batch_sizes: Annotated[str, typer.Option(help=_help(BenchConfig, "batch_sizes"))] = "1,8,32",
    iters: Annotated[Optional[int], typer.Option(help=_help(BenchConfig, "iters"))] = None,
    seconds: Annotated[Optional[float], typer.Option(help=_help(BenchConfig, "seconds"))] = None,
    warmup: Annotated[int, typer.Option(help=_help(BenchConfig, "warmup"))] = 10,
    threads: Annotated[Optional[int], typer.Option(help=_help(BenchConfig, "threads"))] = None,
    device: Annotated[str, typer.Option(help=_help(BenchConfig, "device"))] = "auto",
) -> None:
    """Latency percentiles and throughput of the student and the teacher on every backend -> RUN/bench.json."""
    from .bench import run_bench
    from .benchfile import bench_table

    cfg = BenchConfig(
        run=run,
        backends=_split(backend),
        precisions=_split(precision),
        stages=_split(model),
        batch_sizes=parse_batch_sizes(batch_sizes),
        iters=iters,
        seconds=seconds,
        warmup=warmup,
        threads=threads,
        device=device,
    )
    result = run_bench(cfg, say=say, console=console)
    console.print(bench_table(result))
    console.print(f"wrote {Path(result['run']) / 'bench.json'}; next: gtcompress report")


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
    from .workflow import report as write

    write(run, batch_size, say, console, latency_budget)


@app.command()
@user_errors
def publish(
    ctx: typer.Context,
    run: Annotated[Optional[Path], typer.Argument(help=_help(PublishConfig, "run"))] = None,
    out: Annotated[Path, typer.Option(help=_help(PublishConfig, "out"))] = ...,
    stage: Annotated[Optional[str], typer.Option(help=_help(PublishConfig, "stage"))] = None,
    license_: Annotated[str, typer.Option("--license", help=_help(PublishConfig, "license"))] = "other",
    push: Annotated[Optional[str], typer.Option(help=_help(PublishConfig, "push"))] = None,
    private: Annotated[bool, typer.Option("--private", help=_help(PublishConfig, "private"))] = False,
    force: Annotated[bool, typer.Option("--force", help=_help(PublishConfig, "force"))] = False,
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
    backend: Annotated[Optional[list[str]], typer.Option(help="Bench backends (default: every installed one).")] = None,
    batch_sizes: Annotated[str, typer.Option(help="Bench batch sizes.")] = "1,8,32",
    iters: Annotated[Optional[int], typer.Option(help="Timed calls per measurement.")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Time budget per measurement.")] = None,
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
    batches = parse_batch_sizes(batch_sizes)
    bench = (
        None if skip_bench else BenchConfig(backends=_split(backend), batch_sizes=batches, iters=iters, seconds=seconds)
    )
    workflow = Workflow.default(_split(precision), trt, tolerances, bench, export=not skip_export)
    if skip_distill and ctx.args:
        raise UserError(f"--skip-distill takes no distill options (got {' '.join(ctx.args)})", "drop them")
    if not skip_distill:
        out = out or (None if resume else new_run_path())
        distill_cmd = typer.main.get_command(app).get_command(ctx, "distill")
        args = [*ctx.args, *(["--out", str(out)] if out else []), *(["--resume"] if resume else [])]
        with distill_cmd.make_context("distill", args, parent=ctx.parent) as sub:
            distill_cmd.invoke(sub)
    run_workflow(out, workflow, say, console)
