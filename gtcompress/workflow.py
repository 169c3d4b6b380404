"""`gtcompress run`: a finished (or resumed) run taken through export -> bench -> report in one go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .bench import BenchConfig, bench_table, run_bench
from .evaluate import Tolerance
from .export.config import ExportConfig
from .export.exporter import artefact_table, is_up_to_date, run_export
from .export.precisions import PRECISIONS
from .report import report
from .rundir import resolve_run
from .stages import distilled_students, stage_records
from .typed import validate


@dataclass(frozen=True)
class Workflow:
    """What follows the training: the exports (skipped when up to date; the `student` one is made for every
    student distilled from the GT) and the bench (None: keep bench.json)."""

    exports: tuple[ExportConfig, ...]
    bench: BenchConfig | None

    @classmethod
    def default(
        cls,
        precisions: tuple[str, ...] | None,
        backends: tuple[str, ...],
        tolerances: dict[str, Tolerance],
        bench: BenchConfig | None,
        export: bool = True,
    ) -> Workflow:
        """`gtcompress run`'s: the students at `precisions` (default every registered one; a reduced precision that
        fails verification is reported, the others go on) and the Generous Teacher at fp32, the speed reference."""
        values = {"precisions": precisions or tuple(PRECISIONS), "backends": backends, "tolerances": tolerances}
        student = validate(ExportConfig, {"stage": "student", **values, "keep_going": True})
        teacher = ExportConfig(stage="generous_teacher", backends=backends, tolerances=tolerances)
        return cls(exports=(student, teacher) if export else (), bench=bench)


def _exports(workflow: Workflow, run: Path, students: list[str]) -> list[ExportConfig]:
    per_student = [(cfg, students) if cfg.stage == "student" else (cfg, [cfg.stage]) for cfg in workflow.exports]
    return [cfg.model_copy(update={"run": run, "stage": s}) for cfg, names in per_student for s in names]


def run_workflow(run: Path | None, workflow: Workflow, say: Callable[[str], None], console: Console) -> None:
    """Export what is stale, bench, and write the report of the run at `run` (default runs/latest)."""
    rundir = resolve_run(run)
    for cfg in _exports(workflow, rundir.path, distilled_students(stage_records(rundir))):
        if is_up_to_date(cfg):
            say(f"{cfg.stage}: exports are up to date")
        else:
            console.print(artefact_table(run_export(cfg, say=say)))
    if workflow.bench is not None:
        result = run_bench(workflow.bench.model_copy(update={"run": rundir.path}), say=say, console=console)
        console.print(bench_table(result))
    report(rundir.path, None, say, console)
