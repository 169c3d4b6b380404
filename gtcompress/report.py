"""Report: what compression bought — accuracy, size and latency of every model and exported artefact.

`build_report` joins metrics.json (accuracy, params, MACs, exports), bench.json (latency) and history.jsonl
(training curves) into one table; `write_report` writes it as report.md, report.json and a self-contained
report.html with the plots embedded (PNG files of the plots also go to `<run>/plots/`); `report` is the
`gtcompress report` command's work (both, then the table, recommendation and notes printed).
"""

from __future__ import annotations

import base64
import html
import re
import time
from collections.abc import Callable
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from .backends import BACKENDS, ONNX
from .bench import RESULT_COLUMNS, reference_teacher, result_cells
from .export.precisions import PRECISIONS
from .files import write_bytes, write_text
from .plots import PLOTS, make_plots
from .recommend import pareto_note, pareto_rows, recommendation_line, warnings, which_student
from .records import BenchFile, ExportRecord, Report, ReportHeader, ReportRow, StageRecord, in_order
from .rundir import RunDir, resolve_run
from .stages import controls_of, deployable_teachers, distilled_students, stage_records
from .tables import SCALE_NOTE, fmt, markdown_table, scale_rows, scale_table
from .timing import median_interval

# Students' top-1 differences: key -> (the teacher of the control student subtracted, its column, what it asks).
DELTAS = {
    "delta_vs_st_student": (
        "standard_teacher",
        "Δ vs ←ST",
        "Δ vs ←ST is top-1 minus the student distilled from the Standard Teacher (does the GT help?)",
    ),
    "delta_vs_continued_student": (
        "continued_teacher",
        "Δ vs ←continued",
        "Δ vs ←continued minus the student of the continued teacher, the ST fine-tuned with CE alone for the GT's "
        "epochs (does a fine-tuned GT help beyond its extra training?)",
    ),
    "delta_vs_born_again_student": (
        "born_again_teacher",
        "Δ vs ←born-again",
        "Δ vs ←born-again minus the student of the born-again teacher, the ST's architecture trained from scratch "
        "with plain KD from the ST for the GT's epochs (does a scratch GT help beyond being a distilled model?)",
    ),
}


def delta_columns(report: Report) -> list[str]:
    """The delta columns the table shows: vs ←ST always, the others where a row has a value."""
    return [k for k in DELTAS if k == "delta_vs_st_student" or any(getattr(r, k) is not None for r in report.rows)]


def delta_note(report: Report) -> str:
    """What the table's delta columns ask, only those it has; and what the CE-only student shows, if it is there."""
    parts = [DELTAS[k][2] for k in delta_columns(report)]
    if any(r.method == "ce" for r in report.rows):
        parts.append("the CE-only student shows whether distillation helps at all")
    return "; ".join(parts) + "."


def stage_table(records: dict[str, StageRecord]) -> Table:
    """One row per trained stage: accuracy, size and training cost."""
    table = Table(title="gtcompress distill", title_justify="left")
    for col in ("stage", "model", "top-1 %", "top-5 %", "params", "MMACs", "epochs", "train s"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for m in records.values():
        table.add_row(
            m.title,
            m.arch,
            f"{m.top1:.2f}",
            f"{m.top5:.2f}" if m.top5 is not None else "-",
            f"{m.params / 1e6:.2f}M",
            f"{m.macs / 1e6:.1f}" if m.macs is not None else "-",
            str(m.epochs),
            f"{m.train_seconds:.0f}",
        )
    return table


def _header(run: RunDir, records: dict[str, StageRecord], bench: BenchFile | None) -> ReportHeader:
    cfg = run.saved_config()
    env = cfg.environment or {}
    if bench:
        dev = bench.device
        features = f" ({', '.join(dev['cpu_features'])})" if dev.get("cpu_features") else ""
        machine = (f"{dev['gpu']} (CUDA {dev.get('cuda_version')}), " if dev.get("cuda") else "") + (
            f"{dev['cpu']}{features}, {dev['cores']} cores"
        )
    else:
        machine = f"{env.get('device_name', '?')} (training device {env.get('device', '?')})"
    g = cfg.generous
    return ReportHeader(
        run=run.path.name,
        command=env.get("command", "?"),
        bench_command=bench.command if bench else None,
        data=cfg.data.name,
        num_classes=next((m.num_classes for m in bench.models.values()), None) if bench else None,
        method=f"{cfg.student.method} from the Generous Teacher (beta {g.beta}, k {g.k}, init {g.init})",
        teacher=next((m.arch for m in records.values() if m.role == "standard"), None),
        student=", ".join(records[s].arch for s in distilled_students(records)) or None,
        machine=machine,
        trained_on=f"{env.get('device', '?')} x{env.get('world_size', 1)}",
        run_started=env.get("started"),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %z"),
    )


def build_report(run: RunDir, batch_size: int | None = None, budget_ms: float | None = None) -> Report:
    """The report's content: header, one row per model x verified precision (each timed at its best setting),
    bench results, the accuracy-latency front with a recommendation (within `budget_ms`, default the run's
    latency budget), notes."""
    records, bench, exports = stage_records(run), run.bench(), run.exports()
    results = bench.results if bench else []
    if batch_size is None:
        batch_size = min((r.batch_size for r in results), default=1)
    backends = [b for b in BACKENDS if any(r.backend == b for r in results)]  # the registry's order: headline first
    primary = backends[0] if backends else None
    teachers = deployable_teachers(records)
    teacher = (reference_teacher(bench) if bench else None) or (teachers[0] if teachers else None)
    rows = [
        _row(run, records, exports, stage, precision, bench, batch_size, backends)
        for stage in records
        for precision in _precisions(exports, stage)
    ]
    pareto, recommendation = which_student(run, records, rows, primary, batch_size, budget_ms)
    report = Report(
        header=_header(run, records, bench),
        batch_size=batch_size,
        primary_backend=primary,
        backends=backends,
        teacher=teacher,
        titles={name: m.title for name, m in records.items()},
        rows=rows,
        scales={name: m.logit_scale for name, m in records.items() if m.logit_scale is not None},
        bench=results,
        pareto=pareto,
        recommendation=recommendation,
        notes=[*warnings(records), *_notes(bench, run)],
    )
    _add_ratios(report)
    return report


def _export(exports: list[ExportRecord], stage: str, precision: str, backend: str | None) -> ExportRecord | None:
    """The stage's ONNX file at `precision` made for onnxruntime-style runtimes: its record on `backend` where
    that backend verified it, else its first record."""
    mine = [
        r for r in exports if (r.stage, r.precision, r.format, r.target) == (stage, precision, ONNX.name, "onnxruntime")
    ]
    return next((r for r in mine if r.backend == backend), mine[0] if mine else None)


def _precisions(exports: list[ExportRecord], stage: str) -> list[str]:
    """fp32 (the checkpoint's accuracy), then each verified reduced precision of the stage."""
    return ["fp32", *(p for p in PRECISIONS if p != "fp32" and _export(exports, stage, p, None))]


def _row(
    run: RunDir,
    records: dict[str, StageRecord],
    exports: list[ExportRecord],
    stage: str,
    precision: str,
    bench: BenchFile | None,
    batch_size: int,
    backends: list[str],
) -> ReportRow:
    """One model at one precision: its file, size, accuracy, deltas vs the control students, and its p50 per
    backend at its best setting (named)."""
    m, ckpt = records[stage], run.checkpoint(stage)
    onnx = _export(exports, stage, precision, backends[0] if backends else None)
    file, size = (onnx.path, onnx.bytes) if onnx else (ckpt.name, ckpt.stat().st_size if ckpt.is_file() else None)
    top1 = m.top1 if precision == "fp32" else onnx.top1
    controls = controls_of(records, stage)  # the same student's control students, by their teachers
    deltas = {key: top1 - records[controls[t]].top1 if t in controls else None for key, (t, *_) in DELTAS.items()}
    best = {b: bench.best(stage, b, precision, batch_size) for b in backends} if bench else {}
    return ReportRow(
        name=m.title + ("" if precision == "fp32" else f" {precision}"),
        stage=stage,
        role=m.role,
        method=m.method,
        arch=m.arch,
        precision=precision,
        file=file,
        bytes=size,
        top1=top1,
        top5=m.top5 if precision == "fp32" else None,
        **deltas,
        params=m.params,
        macs=m.macs,
        p50_ms={b: r.p50_ms for b, r in best.items() if r},
        p50_interval={b: median_interval(r.samples_ms) for b, r in best.items() if r and len(r.samples_ms) > 1},
        setting={b: r.setting.label() for b, r in best.items() if r},
    )


def _add_ratios(report: Report) -> None:
    """What compression bought, for the students: × faster and × smaller than the teacher at fp32."""
    ref, primary = report.teacher_row(), report.primary_backend
    for row in report.rows:
        student = ref is not None and row.role == "student"
        fast = student and primary in ref.p50_ms and primary in row.p50_ms
        row.speedup = ref.p50_ms[primary] / row.p50_ms[primary] if fast else None
        row.size_ratio = ref.bytes / row.bytes if student and ref.bytes and row.bytes else None


def _notes(bench: BenchFile | None, run: RunDir) -> list[str]:
    rejected = _rejected_notes(run)
    if bench is None:
        return [*rejected, "no latency yet: run `gtcompress bench` (then `gtcompress report` again)"]
    missing = [f"not benchmarked: {m}" for m in bench.missing]
    return [*rejected, *missing, *(f"skipped {s.what()}: {s.reason}" for s in bench.skipped)]


def _rejected_notes(run: RunDir) -> list[str]:
    """Why files were not kept on a backend, then each rejected graph's diagnosis: its worst layers (not an
    engine's: its graph's diagnosis shares its stem, not its file name)."""
    rejected = run.rejected()
    diagnoses = {r.path: run.diagnosis(r.path) for r in rejected}
    notes = [f"{p}: {d.summary()}" for p, d in diagnoses.items() if d is not None and d.file == Path(p).name]
    return [f"not kept on {r.backend}: {r.reason}" for r in rejected] + notes


# -- formatting --------------------------------------------------------------------------------------------------
def table_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """The accuracy and size table's columns and cells (the same strings in every output format)."""
    deltas = delta_columns(report)
    cols = ["model", "top-1 %", *(DELTAS[k][1] for k in deltas), "params", "MMACs", "file", "MB"]
    cells = [
        [
            r.name,
            fmt(r.top1, ".2f"),
            *(fmt(getattr(r, k), "+.2f") for k in deltas),
            f"{r.params / 1e6:.2f}M",
            fmt(r.macs and r.macs / 1e6, ".1f"),
            r.file,
            fmt(r.bytes and r.bytes / 1e6, ".2f"),
        ]
        for r in report.rows
    ]
    return cols, cells


def latency_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    """What compression bought: each model's p50 (ms) per backend at its best setting (its setting on the headline
    backend), and how much faster and smaller than the teacher it is."""
    b, primary = report.batch_size, report.primary_backend
    cols = ["model", *(f"{backend} (b{b})" for backend in report.backends), "setting", "× faster", "× smaller"]
    cells = [
        [
            r.name,
            *(fmt(r.p50_ms.get(backend), ".3f") for backend in report.backends),
            r.setting.get(primary, "–"),
            fmt(r.speedup, ".1f", "×"),
            fmt(r.size_ratio, ".1f", "×"),
        ]
        for r in report.rows
    ]
    return cols, cells


def bench_rows(report: Report) -> tuple[list[str], list[list[str]]]:
    return [*RESULT_COLUMNS, "iters"], [[*result_cells(r), str(r.iters)] for r in in_order(report.bench)]


def report_tables(report: Report) -> list[Table]:
    """The accuracy and size table, and the latency table, for a terminal of 100 columns (the file column is left
    to report.md/html); headers wrap, cells never are cut."""
    h, b = report.header, report.batch_size
    titles = [
        f"gtcompress report: {h.teacher} -> {h.student} on {h.data}",
        f"p50 at batch {b} on {h.machine}; × faster: the {report.teacher}'s fp32 p50 "
        f"({report.primary_backend or 'not benchmarked'}) over the row's",
    ]
    tables = []
    for title, (cols, cells) in zip(titles, (table_rows(report), latency_rows(report))):
        table = Table(title=title, box=box.SIMPLE_HEAVY, title_justify="left")
        keep = [i for i, col in enumerate(cols) if col != "file"]
        for i in keep:
            name = cols[i].replace(" (", "\n(")
            width = max(max((len(row[i]) for row in cells), default=1), *map(len, name.split("\n")))
            table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True, min_width=width)
        for row in cells:
            table.add_row(*(row[i] for i in keep))
        tables.append(table)
    return tables


def _header_lines(report: Report) -> list[tuple[str, str]]:
    h = report.header
    return [
        ("command", h.command),
        ("benchmark", h.bench_command or "not run"),
        ("data", h.data + (f" ({h.num_classes} classes)" if h.num_classes else "")),
        ("method", h.method),
        ("machine", h.machine),
        ("trained on", h.trained_on),
        ("run started", str(h.run_started)),
        ("report generated", h.generated),
    ]


def markdown(report: Report, plot_files: dict[str, str]) -> str:
    h = report.header
    parts = [f"# gtcompress report: {h.teacher} -> {h.student} ({h.run})", ""]
    parts += [
        f"- **{k}**: `{v}`" if k in ("command", "benchmark") else f"- **{k}**: {v}" for k, v in _header_lines(report)
    ]
    parts += [
        "",
        f"Accuracy and size. {delta_note(report)}",
        "",
        markdown_table(*table_rows(report)),
        "",
        f"Latency: p50 (ms) at batch {report.batch_size}, each model at its best setting on each backend (CPU "
        f"threads, CUDA graph or eager: every setting is under Every measurement; the setting column is the "
        f"{report.primary_backend or 'headline backend'}'s); × faster is the {report.teacher}'s fp32 p50 on "
        f"{report.primary_backend or 'no backend'} over the row's; × smaller compares file sizes.",
        "",
        markdown_table(*latency_rows(report)),
        "",
    ]
    if report.scales:
        parts += ["## The teachers' logit scale", "", SCALE_NOTE, "", markdown_table(*scale_rows(report)), ""]
    if report.pareto.points:
        parts += [
            "## What to ship",
            "",
            pareto_note(report.pareto),
            "",
            markdown_table(*pareto_rows(report.pareto)),
            recommendation_line(report.pareto, report.recommendation),
            "",
        ]
    if report.bench:
        parts += ["## Every measurement", "", markdown_table(*bench_rows(report)), ""]
    parts += [f"![{PLOTS[k]}]({v})\n" for k, v in plot_files.items()]
    if report.notes:
        parts += ["## Notes", "", *(f"- {n}" for n in report.notes), ""]
    return "\n".join(parts)


def _breakable(text: str) -> str:
    """Escaped, with a line-break chance after each / and _: a file or stage name wraps where it reads (a number
    has neither), so a table of long names fits the page."""
    return re.sub(r"([/_])", r"\1<wbr>", html.escape(text))


def html_page(report: Report, plots: dict[str, bytes]) -> str:
    e = html.escape
    h = report.header

    def table(cols: list[str], cells: list[list[str]], id_: str) -> str:
        """In a box that scrolls sideways rather than the page, should it still be too wide after wrapping."""
        head = "".join(f"<th>{e(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_breakable(c)}</td>" for c in row) + "</tr>" for row in cells)
        return f'<div class="table"><table id="{id_}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'

    meta = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in _header_lines(report))
    figures = "".join(
        f'<figure><img class="plot" id="plot-{k}" alt="{e(PLOTS[k])}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{e(PLOTS[k])}</figcaption></figure>'
        for k, png in plots.items()
    )
    notes = "".join(f"<li>{e(n)}</li>" for n in report.notes)
    scales = (
        f"<h2>The teachers' logit scale</h2><p>{e(SCALE_NOTE)}</p>{table(*scale_rows(report), 'scales')}"
        if report.scales
        else ""
    )
    bench = f"<h2>Every measurement</h2>{table(*bench_rows(report), 'bench')}" if report.bench else ""
    if report.pareto.points:
        ship = recommendation_line(report.pareto, report.recommendation)
        bench = (
            f"<h2>What to ship</h2><p>{e(pareto_note(report.pareto))}</p>"
            f"{table(*pareto_rows(report.pareto), 'pareto')}<p id='recommendation'>{e(ship)}</p>" + bench
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>gtcompress report: {e(h.run)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }} dt {{ font-weight: 600; }}
dd {{ margin: 0; font-family: ui-monospace, monospace; }} dd, p, li {{ overflow-wrap: anywhere; }}
div.table {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }} img.plot {{ max-width: 100%; }}
</style></head><body>
<h1>gtcompress report: {e(h.teacher or "?")} → {e(h.student or "?")}</h1>
<dl>{meta}</dl>
<p>Latency is p50 at batch {report.batch_size}, each model at its best setting on each backend;
× faster is the {e(str(report.teacher))}'s fp32 p50 on
{e(report.primary_backend or "no backend")} over the row's; × smaller compares file sizes. {e(delta_note(report))}</p>
{table(*table_rows(report), "summary")}
{table(*latency_rows(report), "latency")}
{scales}
{figures}
{bench}
{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}
</body></html>
"""


# -- plots -------------------------------------------------------------------------------------------------------
def write_report(run: RunDir, report: Report) -> list[Path]:
    """report.json, report.md (+ plots/*.png) and the self-contained report.html, each written atomically."""
    plots = make_plots(report, run.history())
    plot_files = {}
    for name, png in plots.items():
        path = run.path / "plots" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        write_bytes(path, png)
        plot_files[name] = f"plots/{name}.png"
    paths = [run.path / "report.md", run.report_path, run.path / "report.html"]
    write_text(paths[0], markdown(report, plot_files))
    run.write_report(report)
    write_text(paths[2], html_page(report, plots))
    return paths


def report(
    run: Path | None,
    batch_size: int | None,
    say: Callable[[str], None],
    console: Console,
    budget_ms: float | None = None,
) -> None:
    """Write report.{md,json,html} of the run and print its table, its recommendation and notes."""
    rundir = resolve_run(run)
    content = build_report(rundir, batch_size, budget_ms)
    paths = write_report(rundir, content)
    for table in report_tables(content):
        console.print(table)
    if content.scales:
        console.print(scale_table(content))
    lines = [recommendation_line(content.pareto, content.recommendation)] if content.pareto.points else []
    for line in [*lines, *(f"note: {note}" for note in content.notes)]:
        console.print(line, markup=False, highlight=False, soft_wrap=False)  # wrapped at the terminal's width
    say(f"wrote {', '.join(str(p) for p in paths)}")
