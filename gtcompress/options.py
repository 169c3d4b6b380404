"""What the command line shares: the one error wrapper, and the options and parsers several
commands take (cli.py keeps only the commands)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.markup import escape

from .config import BudgetConfig, RunConfig
from .distributed import is_main_process, report_rank_failure
from .errors import UserError
from .terminal import err_console
from .typed import field_help


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
            if e.rank is not None or is_main_process():  # the rank that alone raised it, or rank 0 for all
                err_console.print(f"[bold red]error:[/] {escape(e.line())}", markup=True, highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except Exception as e:
            if int(os.environ.get("WORLD_SIZE", "1")) == 1 or ctx.find_root().params.get("debug"):
                raise
            report_rank_failure(e)
            raise typer.Exit(1) from None

    return wrapper


def parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UserError(f"--set {item!r} is not KEY=VALUE", "e.g. --set data.train_fraction=0.2")
        out[key.strip()] = yaml.safe_load(value)
    return out


TOLERANCE_HELP = "Override a verification tolerance: int8.min_agreement=90, fp32.max_abs_diff=1e-2."


def split(values: list[str] | None) -> tuple[str, ...] | None:
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


def config_option(name: str, *flags: str) -> Any:
    """distill's option `name`, with the help of the configuration key it sets (OPTION_KEYS)."""
    return typer.Option(*flags, help=field_help(RunConfig, OPTION_KEYS[name]))


# The latency budget's options, shared by distill (and run) and candidates.
LatencyBudget = Annotated[Optional[float], typer.Option(help=field_help(BudgetConfig, "latency_ms"))]
BudgetBackend = Annotated[Optional[str], typer.Option(help=field_help(BudgetConfig, "backend"))]
BudgetBatch = Annotated[Optional[int], typer.Option(help=field_help(BudgetConfig, "batch"))]
BudgetPrecision = Annotated[Optional[str], typer.Option(help=field_help(BudgetConfig, "precision"))]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Any recipe key: --set data.train_fraction=0.2")]
Students = Annotated[Optional[list[str]], typer.Option(help=field_help(RunConfig, "student.arch"))]


def distill_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The dotted configuration keys that distill's given options set (--set last, so it wins)."""
    given = {name: value for name, value in params.items() if value not in (None, [], ())}
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


def only_given(values: dict[str, Any]) -> dict[str, Any]:
    """The options given (None: not given, so the model's default applies)."""
    return {k: v for k, v in values.items() if v is not None}


def stage_alias(stage: Any, model: Any) -> Any:
    """`--model` is the old name of `--stage` (a run's stage, not an architecture): still taken, with a line."""
    if model is not None:
        err_console.print("note: --model is deprecated: it names a stage of the run; use --stage", markup=False)
    return stage or model


OldModel = Annotated[Optional[str], typer.Option("--model", hidden=True, help="Deprecated: --stage.")]
OldModels = Annotated[Optional[list[str]], typer.Option("--model", hidden=True, help="Deprecated: --stage.")]


def builder_backends(backend: list[str] | None, trt: bool) -> tuple[str, ...] | None:
    """The --backend values, with `--trt`, the old spelling of `--backend tensorrt`, still taken (with a line)."""
    chosen = split(backend) or ()
    if trt:
        err_console.print("note: --trt is deprecated: use --backend tensorrt", markup=False)
        chosen = (*chosen, "tensorrt")
    return tuple(dict.fromkeys(chosen)) or None


OldTrt = Annotated[bool, typer.Option("--trt", hidden=True, help="Deprecated: --backend tensorrt.")]
