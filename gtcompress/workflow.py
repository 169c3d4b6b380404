"""`gtcompress run`: distill -> export -> bench -> report as one workflow of steps, each skipped when its work is
done (a finished stage is not retrained, an up-to-date export not redone)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .config import RunConfig
from .export.precisions import PRECISIONS
from .rundir import resolve_run
from .settings import BenchConfig, ExportConfig
from .stages import distilled_students, stage_records
from .typed import validate


@dataclass(frozen=True)
class Distill:
    """The training step: a new run of `cfg` in `out`, or (resume) the run in `out` continued; on resume, `given`
    are the keys the command line set, which must agree with the saved configuration."""

    cfg: RunConfig | None
    out: Path | None
    resume: bool = False
    given: set[str] | None = None


@dataclass(frozen=True)
class Workflow:
    """The steps: the training (None: use the run as it is), the exports (skipped when up to date; the `student`
    one is made for every student distilled from the GT) and the bench (None: keep bench.json); then the report."""

    distill: Distill | None
    exports: tuple[ExportConfig, ...]
    bench: BenchConfig | None

    @classmethod
    def default(cls, distill: Distill | None, export: dict | None, bench: BenchConfig | None) -> Workflow:
        """`gtcompress run`'s: the students at the export options' precisions (default every registered one; a
        reduced precision that fails verification is reported, the others go on) and the Generous Teacher at fp32,
        the speed reference (None: no export)."""
        if export is None:
            return cls(distill, (), bench)
        values = {"precisions": tuple(PRECISIONS), **export, "keep_going": True}
        student = validate(ExportConfig, {"stage": "student", **values}, hint="see gtcompress run --help")
        teacher = student.model_copy(update={"stage": "generous_teacher", "precisions": ("fp32",), "keep_going": False})
        return cls(distill, (student, teacher), bench)


def _exports(workflow: Workflow, run: Path, students: list[str]) -> list[ExportConfig]:
    per_student = [(cfg, students) if cfg.stage == "student" else (cfg, [cfg.stage]) for cfg in workflow.exports]
    return [cfg.model_copy(update={"run": run, "stage": s}) for cfg, names in per_student for s in names]


def describe(workflow: Workflow, say: Callable[[str], None]) -> None:
    """--dry-run: what the steps after the training would do."""
    for cfg in workflow.exports:
        built = f", and {', '.join(cfg.backends)} artefacts" if cfg.backends else ""
        say(f"then export {cfg.stage} (every student of the GT) at {', '.join(cfg.precisions)}{built}, verified")
    if workflow.bench is not None:
        b = workflow.bench
        say(f"then bench on {', '.join(b.backends or ['every installed backend'])} at batch sizes {b.batch_sizes}")
    say("then write the report (report.md, report.json, report.html)")


def run_workflow(workflow: Workflow, say: Callable[[str], None], console: Console, run: Path | None = None) -> None:
    """Train (or resume), export what is stale, bench, and write the report of the run (default runs/latest)."""
    from .bench import bench_table, run_bench
    from .export.exporter import artefact_table, is_up_to_date, run_export
    from .pipeline import run_distill
    from .report import report

    if workflow.distill is not None:
        d = workflow.distill
        run = run_distill(d.cfg, out=d.out, resume=d.resume, console=console, given=d.given).path
    rundir = resolve_run(run)
    for cfg in _exports(workflow, rundir.path, distilled_students(stage_records(rundir), qat=True)):
        if is_up_to_date(cfg):
            say(f"{cfg.stage}: exports are up to date")
        else:
            console.print(artefact_table(run_export(cfg, say=say)))
    if workflow.bench is not None:
        result = run_bench(workflow.bench.model_copy(update={"run": rundir.path}), say=say, console=console)
        console.print(bench_table(result))
    report(rundir.path, None, say, console)
