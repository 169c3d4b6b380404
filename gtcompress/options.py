"""What the command line shares: the one error wrapper, and the option groups several commands take, each option
declared once and named after the configuration field it sets (cli.py keeps only the commands).

A group is a function whose parameters declare options; `takes(group, ...)` gives a command all of them, their
values reaching it as `options`. distill and run take the distill group, bench and run the bench group, export and
run the export group, so an option means the same everywhere it is offered.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
import yaml
from pydantic import BaseModel
from rich.markup import escape

from .backends import backend as lookup
from .config import BudgetConfig, RunConfig
from .errors import UserError
from .settings import BenchConfig, ExportConfig, parse_batch_sizes, parse_threads, parse_tolerances
from .terminal import err_console, is_main_process
from .typed import field_help

DEBUG = inspect.Parameter(
    "debug",
    inspect.Parameter.KEYWORD_ONLY,
    default=False,
    annotation=Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.", rich_help_panel="Output")],
)


def user_errors(fn: Callable) -> Callable:
    """Turn a UserError into one line on stderr and exit code 2 (unless --debug, before or after the command);
    Ctrl-C into exit code 130. The wrapped command takes `ctx: typer.Context` first."""

    @functools.wraps(fn)
    def wrapper(ctx: typer.Context, *args: Any, debug: bool = False, **kwargs: Any) -> Any:
        debug = debug or ctx.find_root().params.get("debug", False)
        try:
            return fn(ctx, *args, **kwargs)
        except UserError as e:
            if debug:
                raise
            # escaped: messages hold brackets (`gtcompress[trt]`) that rich would take for markup
            if e.rank is not None or is_main_process():  # the rank that alone raised it, or rank 0 for all
                err_console.print(f"[bold red]error:[/] {escape(e.line())}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as e:
            if not _distributed() or debug:
                raise
            from .distributed import report_rank_failure  # torch: only where a rank failed

            report_rank_failure(e)
            raise typer.Exit(1) from None

    return _with_parameters(wrapper, inspect.signature(fn, eval_str=True), [DEBUG])


def _distributed() -> bool:
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _with_parameters(wrapper: Callable, signature: inspect.Signature, extra: list[inspect.Parameter]) -> Callable:
    """`wrapper` presented to Typer with `signature`'s parameters and `extra` after them."""
    known = {p.name for p in signature.parameters.values()}
    params = [*signature.parameters.values(), *(p for p in extra if p.name not in known)]
    wrapper.__signature__ = signature.replace(parameters=params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def takes(*groups: Callable[..., None]) -> Callable[[Callable], Callable]:
    """A command that also takes every option of `groups`; their values reach it as `options` (by name)."""
    extra = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for group in groups
        for p in inspect.signature(group, eval_str=True).parameters.values()
    ]
    names = {p.name for p in extra}

    def decorate(fn: Callable) -> Callable:
        own = inspect.signature(fn, eval_str=True)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            options = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
            return fn(*args, options=options, **kwargs)

        mine = own.replace(parameters=[p for p in own.parameters.values() if p.name != "options"])
        return _with_parameters(wrapper, mine, extra)

    return decorate


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE", "e.g. --set data.train_fraction=0.2")
        out[key.strip()] = yaml.safe_load(value)
    return out


def split(values: list[str] | None) -> tuple[str, ...] | None:
    """Repeatable and comma-separated option values as one tuple (None when not given)."""
    return tuple(v.strip() for item in values for v in item.split(",") if v.strip()) if values else None


def only_given(values: dict[str, Any]) -> dict[str, Any]:
    """The options given (None: not given, so the model's default applies)."""
    return {k: v for k, v in values.items() if v is not None}


def field_option(cls: type[BaseModel], key: str, *flags: str, panel: str, metavar: str | None = None) -> Any:
    """An option that sets one configuration field: its help is the field's description, the default shown and the
    value's name are the field's (the option itself defaults to None: not given, so a recipe's value stands)."""
    field = _field(cls, key)
    default = field.get_default(call_default_factory=True)
    shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
    flag = _plain(field.annotation) is bool
    return typer.Option(
        *flags,
        help=field_help(cls, key),
        show_default=False if shown is None or flag else str(shown),
        rich_help_panel=panel,
        metavar=metavar or ("" if flag else _metavar(field.annotation)),
    )


def _field(cls: type[BaseModel], key: str) -> Any:
    *parents, leaf = key.split(".")
    for parent in parents:
        cls = cls.model_fields[parent].annotation
    return cls.model_fields[leaf]


def _plain(annotation: Any) -> Any:
    """A field's type without `| None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return (
        args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 else annotation
    )


def _metavar(annotation: Any) -> str:
    """The value's name in the help: its choices, or a plain word for its type."""
    kind = _plain(annotation)
    if typing.get_origin(kind) is Literal:
        return "|".join(map(str, typing.get_args(kind)))
    return {int: "N", float: "X", Path: "PATH"}.get(kind, "TEXT")


# -- distill's options: distill and run ---------------------------------------------------------------------------
# Each sets one configuration key; --epochs, --batch-size and --lr set every stage's schedule.
OPTION_KEYS = {
    "teacher": "teacher.arch",
    "student": "student.arch",
    "dataset": "data.name",
    "data_root": "data.root",
    "download": "data.download",
    "img_size": "data.img_size",
    "small_stem": "small_stem",
    "method": "student.method",
    "qat": "student.qat.epochs",
    "gt_beta": "generous.beta",
    "gt_k": "generous.k",
    "gt_init": "generous.init",
    "teacher_checkpoint": "teacher.checkpoint",
    "pretrained": "teacher.pretrained",
    "compare": "compare",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "dist_bn": "dist_bn",
    "compile_": "compile",
    "tensorboard": "tensorboard",
    "cache_teacher_logits": "cache_teacher_logits",
    "latency_budget": "budget.latency_ms",
    "budget_backend": "budget.backend",
    "budget_batch": "budget.batch",
    "budget_precision": "budget.precision",
}
PER_STAGE_OPTIONS = ("epochs", "batch_size", "lr")


def run_option(name: str, *flags: str, panel: str, metavar: str | None = None) -> Any:
    """distill's option `name`: the configuration key it sets (OPTION_KEYS) gives its help and shown default."""
    return field_option(RunConfig, OPTION_KEYS[name], *flags, panel=panel, metavar=metavar)


DATA, MODELS, TRAIN, GT, STUDENT, BUDGET = "Data", "Models", "Training", "Generous Teacher", "Student", "Latency budget"
MORE = "Training, more"
Students = Annotated[Optional[list[str]], run_option("student", panel=MODELS, metavar="NAME[,NAME...]")]


def distill_group(
    teacher: Annotated[Optional[str], run_option("teacher", panel=MODELS, metavar="NAME")] = None,
    student: Students = None,
    teacher_checkpoint: Annotated[Optional[Path], run_option("teacher_checkpoint", panel=MODELS)] = None,
    pretrained: Annotated[Optional[bool], run_option("pretrained", "--pretrained", panel=MODELS)] = None,
    small_stem: Annotated[Optional[bool], run_option("small_stem", "--small-stem", panel=MODELS)] = None,
    dataset: Annotated[Optional[str], run_option("dataset", panel=DATA, metavar="NAME")] = None,
    data_root: Annotated[Optional[Path], run_option("data_root", panel=DATA)] = None,
    download: Annotated[Optional[bool], run_option("download", "--download", panel=DATA)] = None,
    img_size: Annotated[Optional[int], run_option("img_size", panel=DATA, metavar="PX")] = None,
    recipe: Annotated[
        Optional[Path], typer.Option(help="YAML recipe; options given here override it", rich_help_panel=TRAIN)
    ] = None,
    epochs: Annotated[
        Optional[int],
        typer.Option(help="Epochs of every stage (default: teacher 8, student 15).", rich_help_panel=TRAIN),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(help="Global training batch size of every stage (default 64).", rich_help_panel=TRAIN),
    ] = None,
    lr: Annotated[
        Optional[float], typer.Option(help="Peak learning rate of every stage (default 0.05).", rich_help_panel=TRAIN)
    ] = None,
    seed: Annotated[Optional[int], run_option("seed", panel=TRAIN)] = None,
    device: Annotated[Optional[str], run_option("device", panel=TRAIN)] = None,
    precision: Annotated[Optional[str], run_option("precision", panel=TRAIN)] = None,
    dist_bn: Annotated[Optional[str], run_option("dist_bn", panel=MORE)] = None,
    compile_: Annotated[Optional[bool], run_option("compile_", "--compile", panel=MORE)] = None,
    cache_teacher_logits: Annotated[
        Optional[bool],
        run_option("cache_teacher_logits", "--cache-teacher-logits/--no-cache-teacher-logits", panel=MORE),
    ] = None,
    tensorboard: Annotated[Optional[bool], run_option("tensorboard", "--tensorboard", panel=MORE)] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="Any recipe key: --set data.train_fraction=0.2", rich_help_panel=TRAIN),
    ] = None,
    gt_beta: Annotated[Optional[float], run_option("gt_beta", panel=GT)] = None,
    gt_k: Annotated[Optional[float], run_option("gt_k", panel=GT)] = None,
    gt_init: Annotated[Optional[str], run_option("gt_init", panel=GT)] = None,
    compare: Annotated[Optional[bool], run_option("compare", "--compare", panel=GT)] = None,
    method: Annotated[Optional[str], run_option("method", panel=STUDENT)] = None,
    qat: Annotated[Optional[int], run_option("qat", panel=STUDENT, metavar="EPOCHS")] = None,
    latency_budget: Annotated[Optional[float], run_option("latency_budget", panel=BUDGET, metavar="MS")] = None,
    budget_backend: Annotated[Optional[str], run_option("budget_backend", panel=BUDGET)] = None,
    budget_batch: Annotated[Optional[int], run_option("budget_batch", panel=BUDGET)] = None,
    budget_precision: Annotated[Optional[str], run_option("budget_precision", panel=BUDGET)] = None,
) -> None:
    """distill's options that set the run's configuration (declared once: distill and run take them)."""


def distill_overrides(options: dict[str, Any]) -> dict[str, Any]:
    """The dotted configuration keys that the given distill options set (--set last, so it wins)."""
    given = {name: value for name, value in options.items() if value not in (None, [], ())}
    if "student" in given:
        given["student"] = list(split(given["student"]))
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
    overrides.update(parse_set(given.get("set_") or []))
    return overrides


# -- bench's options: bench and run -------------------------------------------------------------------------------
BENCH = "Benchmark"


def bench_option(key: str, *flags: str, metavar: str | None = None) -> Any:
    return field_option(BenchConfig, key, *flags, panel=BENCH, metavar=metavar)


def bench_group(
    batch_sizes: Annotated[Optional[str], bench_option("batch_sizes", metavar="N[,N...]")] = None,
    iters: Annotated[Optional[int], bench_option("iters")] = None,
    seconds: Annotated[Optional[float], bench_option("seconds")] = None,
    warmup: Annotated[Optional[int], bench_option("warmup")] = None,
    threads: Annotated[Optional[str], bench_option("threads", metavar="N[,N...]|auto")] = None,
    cuda_graph: Annotated[Optional[str], bench_option("cuda_graph", metavar="both|on|off")] = None,
    bench_device: Annotated[Optional[str], bench_option("device", "--bench-device", metavar="auto|cpu|cuda")] = None,
) -> None:
    """How bench times (declared once: bench and run take them)."""


def bench_values(options: dict[str, Any]) -> dict[str, Any]:
    """BenchConfig's values from the bench group's given options."""
    o = options
    return only_given(
        {
            "batch_sizes": parse_batch_sizes(o["batch_sizes"]) if o["batch_sizes"] else None,
            "iters": o["iters"],
            "seconds": o["seconds"],
            "warmup": o["warmup"],
            "threads": parse_threads(o["threads"]) if o["threads"] else None,
            "cuda_graph": o["cuda_graph"],
            "device": o["bench_device"],
        }
    )


# -- export's options: export and run -----------------------------------------------------------------------------
EXPORT = "Export"
TOLERANCE_HELP = "Override a verification tolerance: int8.min_agreement=90, fp32.max_abs_diff=1e-2."


def export_option(key: str, *flags: str, metavar: str | None = None) -> Any:
    return field_option(ExportConfig, key, *flags, panel=EXPORT, metavar=metavar)


def export_group(
    export_precision: Annotated[
        Optional[list[str]], export_option("precisions", "--export-precision", metavar="fp32|fp16|int8")
    ] = None,
    max_batch: Annotated[Optional[int], export_option("max_batch")] = None,
    workspace_gib: Annotated[Optional[float], export_option("workspace_gib")] = None,
    opt_batches: Annotated[Optional[str], export_option("opt_batches", metavar="N[,N...]")] = None,
    calibration_images: Annotated[Optional[int], export_option("calibration_images")] = None,
    calibration_method: Annotated[Optional[str], export_option("calibration_method")] = None,
    int8_format: Annotated[Optional[str], export_option("int8_format", metavar="portable|vnni")] = None,
    int8_method: Annotated[Optional[str], export_option("int8_method", metavar="accuracy-aware|ptq")] = None,
    int8_max_drop: Annotated[Optional[float], export_option("int8_max_drop", metavar="POINTS")] = None,
    int8_heldout_images: Annotated[Optional[int], export_option("int8_heldout_images")] = None,
    int8_head: Annotated[Optional[str], export_option("int8_head")] = None,
    opset: Annotated[Optional[int], export_option("opset")] = None,
    tolerance: Annotated[Optional[list[str]], typer.Option(help=TOLERANCE_HELP, rich_help_panel=EXPORT)] = None,
    trt: Annotated[bool, typer.Option("--trt", hidden=True, help="Deprecated: --backend tensorrt.")] = False,
) -> None:
    """How export makes and verifies artefacts (declared once: export and run take them)."""


def export_values(options: dict[str, Any], backends: list[str] | None) -> dict[str, Any]:
    """ExportConfig's values from the export group's given options and the backends asked for (those that build
    an artefact of their own build it; `--trt` is the old spelling of `--backend tensorrt`)."""
    o = options
    return only_given(
        {
            "precisions": split(o["export_precision"]),
            "backends": builder_backends(backends, o["trt"]),
            "max_batch": o["max_batch"],
            "workspace_gib": o["workspace_gib"],
            "opt_batches": parse_batch_sizes(o["opt_batches"], "--opt-batches") if o["opt_batches"] else None,
            "calibration_images": o["calibration_images"],
            "calibration_method": o["calibration_method"],
            "int8_format": o["int8_format"],
            # a drop budget is accuracy-aware int8's: giving one chooses it
            "int8_method": o["int8_method"] or ("accuracy-aware" if o["int8_max_drop"] is not None else None),
            "int8_max_drop": o["int8_max_drop"],
            "int8_heldout_images": o["int8_heldout_images"],
            "int8_head": o["int8_head"],
            "opset": o["opset"],
            "tolerances": parse_tolerances(o["tolerance"] or []),
        }
    )


def builder_backends(backend: list[str] | None, trt: bool) -> tuple[str, ...] | None:
    """Of the backends asked for, those that build an artefact of their own; `--trt` adds tensorrt (with a line)."""
    chosen = split(backend) or ()
    if trt:
        err_console.print("note: --trt is deprecated: use --backend tensorrt", markup=False)
        chosen = (*chosen, "tensorrt")
    built = tuple(b for b in dict.fromkeys(chosen) if lookup(b).loader is not None)
    return built or None


def stage_alias(stage: Any, model: Any) -> Any:
    """`--model` is the old name of `--stage` (a run's stage, not an architecture): still taken, with a line."""
    if model is not None:
        err_console.print("note: --model is deprecated: it names a stage of the run; use --stage", markup=False)
    return stage or model


def precision_alias(precision: list[str] | None, options: dict[str, Any]) -> dict[str, Any]:
    """export's `--precision` is the old name of `--export-precision` (there it cannot mean training's)."""
    if precision:
        err_console.print("note: export's --precision is now --export-precision", markup=False)
        return {**options, "export_precision": [*(options["export_precision"] or []), *precision]}
    return options


OldModel = Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated: --stage.")]
OldModels = Annotated[Optional[list[str]], typer.Option("--model", hidden=True, help="Deprecated: --stage.")]
LatencyBudget = Annotated[Optional[float], field_option(BudgetConfig, "latency_ms", panel=BUDGET, metavar="MS")]
