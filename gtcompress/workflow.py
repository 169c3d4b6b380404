"""`gtcompress run`: a finished (or resumed) run taken through export -> bench -> report in one go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .bench import BenchConfig, run_bench
from .benchfile import bench_table
from .export.config import ExportConfig
from .export.exporter import artefact_table, is_up_to_date, run_export
from .report import build_report, report_table, write_report
from .rundir import resolve_run


@dataclass(frozen=True)
class Workflow:
    """What follows the training: the exports (skipped when up to date) and the bench (None: keep bench.json)."""

    exports: tuple[ExportConfig, ...]
    bench: BenchConfig | None


def run_workflow(run: Path | None, workflow: Workflow, say: Callable[[str], None], console: Console) -> None:
    """Export what is stale, bench, and write the report of the run at `run` (default runs/latest)."""
    rundir = resolve_run(run)
    for cfg in workflow.exports:
        cfg = cfg.model_copy(update={"run": rundir.path})
        if is_up_to_date(cfg):
            say(f"{cfg.stage}: exports are up to date")
        else:
            console.print(artefact_table(run_export(cfg, say=say)))
    if workflow.bench is not None:
        result = run_bench(workflow.bench.model_copy(update={"run": rundir.path}), say=say, console=console)
        console.print(bench_table(result))
    report(rundir.path, None, say, console)


def report(run: Path | None, batch_size: int | None, say: Callable[[str], None], console: Console) -> None:
    """Write report.{md,json,html} of the run and print its table and notes."""
    rundir = resolve_run(run)
    content = build_report(rundir, batch_size)
    paths = write_report(rundir, content)
    console.print(report_table(content))
    for note in content["notes"]:
        console.print(f"note: {note}", markup=False, highlight=False, style="dim")
    say(f"wrote {', '.join(str(p) for p in paths)}")
