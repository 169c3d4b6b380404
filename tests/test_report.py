"""Report: the joined table, its numbers in every output, the embedded plots, a real browser rendering it."""

import base64
import html
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BENCH_BATCHES, BENCH_THREADS, COMPARE_STAGES, copy_run, invoke, many_rows_history, many_rows_report
from PIL import Image

from gtcompress.errors import UserError
from gtcompress.plots import make_plots
from gtcompress.report import PLOTS, html_page, table_rows
from gtcompress.rundir import RunDir
from gtcompress.stages import TITLES
from gtcompress.tables import markdown_table


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def bench(run: Path) -> dict:
    return json.loads((run / "bench.json").read_text())


@pytest.fixture(scope="module")
def report(workflow_run) -> dict:
    return json.loads((workflow_run / "report.json").read_text())


def test_the_run_writes_the_three_report_files_and_the_plots(workflow_run):
    for name in ("report.md", "report.json", "report.html"):
        assert (workflow_run / name).stat().st_size > 0
    assert sorted(p.stem for p in (workflow_run / "plots").glob("*.png")) == sorted(PLOTS)


def test_one_row_per_stage_and_exported_precision(workflow_run, report):
    rows = {(r["stage"], r["precision"]) for r in report["rows"]}
    assert rows == {*((stage, "fp32") for stage in COMPARE_STAGES), ("student", "int8")}
    m = metrics(workflow_run)
    by = {(r["stage"], r["precision"]): r for r in report["rows"]}
    for stage in COMPARE_STAGES:
        assert by[stage, "fp32"]["top1"] == m[stage]["top1"] and by[stage, "fp32"]["params"] == m[stage]["params"]
    int8 = next(r for r in m["export"] if (r["path"], r["backend"]) == ("export/student.int8.onnx", "onnxruntime"))
    assert by["student", "int8"]["top1"] == int8["top1"] and by["student", "int8"]["bytes"] == int8["bytes"]
    baseline = m["student_from_standard"]["top1"]
    assert by["student", "fp32"]["delta_vs_st_student"] == pytest.approx(m["student"]["top1"] - baseline)
    assert by["student_ce", "fp32"]["delta_vs_st_student"] == pytest.approx(m["student_ce"]["top1"] - baseline)
    assert by["generous_teacher", "fp32"]["delta_vs_st_student"] is None
    born_again = m["student_from_born_again"]["top1"]
    assert by["student", "fp32"]["delta_vs_born_again_student"] == pytest.approx(m["student"]["top1"] - born_again)
    assert by["born_again_teacher", "fp32"]["delta_vs_born_again_student"] is None
    assert all(r["delta_vs_continued_student"] is None for r in report["rows"])
    cols, cells = table_rows(RunDir(workflow_run).report())
    student = next(c for c in cells if c[0] == TITLES["student"])
    assert student[cols.index("Δ vs ←born-again")] == f"{m['student']['top1'] - born_again:+.2f}"
    assert "Δ vs ←continued" not in cols


def test_latency_columns_come_from_bench_json_at_the_smallest_batch(workflow_run, report):
    assert report["batch_size"] == min(BENCH_BATCHES) and report["primary_backend"] == "onnxruntime"
    results = bench(workflow_run)["results"]
    for row in report["rows"]:
        for backend, p50 in row["p50_ms"].items():
            settings = [
                r
                for r in results
                if (r["stage"], r["backend"], r["precision"], r["batch_size"])
                == (row["stage"], backend, row["precision"], report["batch_size"])
            ]
            best = min(settings, key=lambda r: r["p50_ms"])
            assert p50 == best["p50_ms"], "each model at its best setting"
            threads = best["threads"]
            assert row["setting"][backend] == (f"{threads} thread" + "s" * (threads != 1) if threads else "eager")
    assert {r["threads"] for r in results if r["backend"] == "onnxruntime"} == set(BENCH_THREADS)
    teacher = next(r for r in report["rows"] if r["stage"] == "generous_teacher")
    student = next(r for r in report["rows"] if r["stage"] == "student" and r["precision"] == "fp32")
    assert student["speedup"] == pytest.approx(teacher["p50_ms"]["onnxruntime"] / student["p50_ms"]["onnxruntime"])
    assert student["size_ratio"] == pytest.approx(teacher["bytes"] / student["bytes"])


def test_html_and_markdown_hold_the_numbers_of_metrics_and_bench(workflow_run, report):
    page = (workflow_run / "report.html").read_text()
    md = (workflow_run / "report.md").read_text()
    m = metrics(workflow_run)
    for stage in COMPARE_STAGES:
        assert f"{m[stage]['top1']:.2f}" in page and f"{m[stage]['top1']:.2f}" in md
    for r in bench(workflow_run)["results"]:
        assert f"{r['p50_ms']:.3f}" in page and f"{r['p99_ms']:.3f}" in page and f"{r['p50_ms']:.3f}" in md
    delta = m["student"]["top1"] - m["student_from_standard"]["top1"]
    assert f"{delta:+.2f}" in page
    for text in (report["header"]["command"], "digits", report["header"]["generated"], report["header"]["machine"]):
        assert text in md and html.escape(text) in page


def test_each_teachers_logit_scale_stands_beside_its_accuracy(workflow_run, report):
    m = metrics(workflow_run)
    teachers = [s for s in COMPARE_STAGES if m[s]["role"] != "student"]
    assert list(report["scales"]) == teachers
    md = (workflow_run / "report.md").read_text().split("## The teachers' logit scale")[1].split("##")[0]
    for stage in teachers:
        s = m[stage]["logit_scale"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {m[stage]['title']} |"))
        for cell in (f"{m[stage]['top1']:.2f}", f"{s['std_median']:.2f}", f"{s['entropy']:.3f}"):
            assert f"| {cell} |" in row, (stage, cell)
    assert 'id="scales"' in (workflow_run / "report.html").read_text()


def test_html_is_self_contained_with_every_plot_a_decodable_png(workflow_run):
    page = (workflow_run / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    images = re.findall(r'<img class="plot" id="plot-([a-z_]+)"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert sorted(name for name, _ in images) == sorted(PLOTS)
    for _, data in images:
        width, height = Image.open(io.BytesIO(base64.b64decode(data))).size
        assert width > 300 and height > 200


def test_a_stage_of_a_new_role_reaches_the_report_without_other_edits(workflow_run, tmp_path):
    """The report reads each stage's recorded identity: a role it has never heard of is shown as it is."""
    import shutil

    run = copy_run(workflow_run, tmp_path / "run")
    m = metrics(run)
    m["assistant_teacher"] = {**m["standard_teacher"], "title": "teacher assistant", "role": "assistant"}
    (run / "metrics.json").write_text(json.dumps(m))
    shutil.copy(run / "standard_teacher.pt", run / "assistant_teacher.pt")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads((run / "report.json").read_text())["rows"] if r["stage"] == "assistant_teacher"]
    assert (row["name"], row["role"], row["top1"]) == ("teacher assistant", "assistant", m["standard_teacher"]["top1"])
    assert "teacher assistant" in (run / "report.md").read_text() and "teacher assistant" in result.stdout


def test_report_without_bench_says_how_to_get_latency(pipeline_run, tmp_path):
    run = copy_run(pipeline_run, tmp_path / "run")
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    content = json.loads((run / "report.json").read_text())
    assert any("gtcompress bench" in n for n in content["notes"])
    assert all(r["p50_ms"] == {} and r["speedup"] is None for r in content["rows"])
    assert "training_curves" in (run / "report.html").read_text()
    assert "gtcompress report" in result.stdout


def test_report_cli_picks_the_batch_size_of_the_latency_columns(workflow_run, tmp_path):
    run = copy_run(workflow_run, tmp_path / "run")
    result = invoke("report", run, "--batch-size", max(BENCH_BATCHES))
    assert result.exit_code == 0, result.output
    content = json.loads((run / "report.json").read_text())
    assert content["batch_size"] == max(BENCH_BATCHES)
    student = next(r for r in content["rows"] if (r["stage"], r["precision"]) == ("student", "fp32"))
    measured = {
        b: min(
            r["p50_ms"]
            for r in bench(run)["results"]
            if (r["stage"], r["backend"], r["precision"], r["batch_size"]) == ("student", "onnxruntime", "fp32", b)
        )
        for b in BENCH_BATCHES
    }
    assert student["p50_ms"]["onnxruntime"] == measured[max(BENCH_BATCHES)] != measured[min(BENCH_BATCHES)]
    assert f"(b{max(BENCH_BATCHES)})" in (run / "report.md").read_text()


# -- a real browser --------------------------------------------------------------------------------------------
def chromium() -> str:
    """The browser `make test` installs where it can (its `browser` step); else skip with the reason."""
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    return found or pytest.skip("no chromium on PATH: `make browser` installs it (as root, with apt-get)")


PROBE = """<script>
window.addEventListener('load', () => {
  const plots = [...document.querySelectorAll('img.plot')];
  document.body.setAttribute('data-rendered', plots.filter(i => i.complete && i.naturalWidth > 0).length);
  document.body.setAttribute('data-rows', document.querySelectorAll('#summary tbody tr').length);
});
</script></body>"""


def rendered(html_text: str, probe: str, tmp_path: Path) -> str:
    """The DOM headless chromium leaves of `html_text` in a 1280-px window, `probe` run at load."""
    page = tmp_path / "report.html"
    page.write_text(html_text.replace("</body>", probe))
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_headless_browser_renders_the_table_and_every_plot(workflow_run, report, tmp_path):
    dom = rendered((workflow_run / "report.html").read_text(), PROBE, tmp_path)
    rendered_plots = re.search(r'data-rendered="(\d+)"', dom)
    rows = re.search(r'data-rows="(\d+)"', dom)
    assert rendered_plots and rows, dom[:2000]
    assert int(rendered_plots.group(1)) == len(PLOTS)
    assert int(rows.group(1)) == len(report["rows"])


# What overflows a 1280-px window: the page itself, a table wider than its box (columns out of sight), a plot
# shrunk below 3/4 of its size (its legend's text unreadable); each as "what width in room", or "none".
LAYOUT = """<script>
window.addEventListener('load', () => {
  const page = document.documentElement, out = [];
  if (page.scrollWidth > page.clientWidth) out.push(`page ${page.scrollWidth} in ${page.clientWidth}`);
  for (const t of document.querySelectorAll('table')) {
    const room = t.parentElement.clientWidth;
    if (t.offsetWidth > room) out.push(`${t.id} ${t.offsetWidth} in ${room}`);
  }
  for (const i of document.querySelectorAll('img.plot'))
    if (!i.complete || i.width < 0.75 * i.naturalWidth) out.push(`${i.id} ${i.width} of ${i.naturalWidth}`);
  document.body.setAttribute('data-overflow', out.join('; ') || 'none');
});
</script></body>"""


def test_a_report_of_many_rows_fits_a_1280_px_window(tmp_path):
    report = many_rows_report()
    dom = rendered(html_page(report, make_plots(report, many_rows_history())), LAYOUT, tmp_path)
    overflow = re.search(r'data-overflow="([^"]*)"', dom)
    assert overflow, dom[:2000]
    assert overflow.group(1) == "none"


def test_report_json_reads_back_typed_without_the_samples_and_a_broken_one_is_one_line(workflow_run, tmp_path):
    typed = RunDir(workflow_run).report()
    assert typed.to_json() == json.loads((workflow_run / "report.json").read_text())
    assert typed.bench and not any(b.samples_ms for b in typed.bench), "the samples stay in bench.json"
    (tmp_path / "report.json").write_text(json.dumps({**typed.to_json(), "rows": [{"stage": "student"}]}))
    with pytest.raises(UserError, match=r"report.json is damaged: 'rows.0.name' field required") as e:
        RunDir(tmp_path).report()
    assert "\n" not in str(e.value) and e.value.hint == f"write it again: gtcompress report {tmp_path}"


def test_markdown_table_right_aligns_numbers():
    text = markdown_table(["name", "top-1"], [["a", "81.00 ± 1.00"], ["b", "+0.50 [-1.00, +2.00]"]])
    lines = text.splitlines()
    assert lines[0] == "| name | top-1 |" and lines[1] == "| --- | ---: |" and len(lines) == 4
    missing = markdown_table(["name", "p50", "note"], [["a", "0.30", "–"], ["b", "–", "–"], ["c", "1.2×", "x"]])
    assert missing.splitlines()[1] == "| --- | ---: | --- |", "a value not measured leaves a number column numeric"


def test_the_report_explains_only_the_columns_its_table_has(workflow_run):
    md = (workflow_run / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| model |"))
    assert "Δ vs ←born-again" in header and "Δ vs ←continued" not in header, "a scratch GT's run: no continued arm"
    assert "Δ vs ←born-again minus" in md and "Δ vs ←continued minus" not in md


def test_the_tables_fit_100_columns_in_the_terminal_and_in_report_md(workflow_run):
    from rich.console import Console

    from gtcompress.report import report_tables

    console = Console(width=100, record=True, file=open(os.devnull, "w"))
    for table in report_tables(RunDir(workflow_run).report()):
        console.print(table)
    lines = console.export_text().splitlines()
    assert max(map(len, lines)) <= 100 and not any("…" in line for line in lines), "nothing cut either"
    md = (workflow_run / "report.md").read_text().split("## What to ship")[0]
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert max(map(len, table_lines)) <= 100, max(table_lines, key=len)


def test_html_of_a_report_without_logit_scales_has_no_scale_table():
    """A run recorded before teachers had their logit scale recorded: the page leaves that table out, as report.md."""
    page = html_page(many_rows_report(), {})
    assert 'id="summary"' in page and 'id="scales"' not in page
