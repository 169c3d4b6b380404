"""The run directory: its file names, and its files read and written as typed records (config.yaml, metrics.json's
stages and exports, history.jsonl, bench.json, candidates.json, report.json, the export sidecars and int8
diagnoses), runs/latest.

Files are written atomically (files.py). A file that does not read as its record is damaged: one line naming the
file, what is wrong and the command that fixes it (metrics.json and history.jsonl: `gtcompress repair`, which
rebuilds them from what the run still holds)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from .config import RunConfig
from .errors import UserError, first_line
from .files import write_json, write_text
from .records import (
    SIDECAR_FORMAT,
    BenchFile,
    CandidateCheck,
    Epoch,
    ExportRecord,
    ExportSidecar,
    Int8Diagnosis,
    RejectedExport,
    Report,
    StageRecord,
)
from .typed import validate

RUNS_ROOT = Path("runs")


def read_sidecar(artefact: Path) -> ExportSidecar:
    """The export description beside `artefact`: the sidecar in its folder whose `files` name it."""
    fix = "re-run gtcompress export, which writes it"
    for path in sorted(artefact.parent.glob("*.json")):
        data = read_json(path, fix)
        if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT and artefact.name in data.get("files", {}):
            return _typed(ExportSidecar, data, path, fix)
    raise UserError(f"no gtcompress export description beside {artefact.name} (a <stage>.json naming it)", fix)


def write_sidecar(path: Path, sidecar: ExportSidecar) -> None:
    write_json(path, sidecar.model_dump(mode="json"))


def damaged(path: Path, what: str, fix: str) -> UserError:
    """The one line for a file that does not read as what it should hold: which file, what is wrong, what fixes it."""
    return UserError(f"{path} is damaged: {what}", fix)


def read_json(path: Path, fix: str = "restore it or re-run the stage that writes it") -> Any:
    try:
        return json.loads(path.read_bytes())
    except json.JSONDecodeError as e:  # a file cut off by a crash or a full disk ends like this
        raise damaged(path, f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})", fix) from None
    except UnicodeDecodeError:
        raise damaged(path, "not text (it holds bytes that are not UTF-8)", fix) from None


_KINDS = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number", float: "a number"}


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), "null")


def _object(data: Any, path: Path, fix: str) -> dict[str, Any]:
    """`data` where a file must hold a JSON object (a mapping); anything else is the file's damage."""
    if not isinstance(data, dict):
        raise damaged(path, f"it holds {_kind(data)} where an object is expected", fix)
    return data


def _typed(kind: Any, data: Any, path: Path, fix: str, where: str = "") -> Any:
    """`data` validated as `kind` (a record, or a list or dict of them); its first mismatch is the file's damage,
    located by its keys and list positions below `where`."""
    try:
        return TypeAdapter(kind).validate_python(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in (where, *first["loc"]) if p != "") or "(top level)"
        raise damaged(path, f"'{loc}' {first['msg'][0].lower()}{first['msg'][1:]}", fix) from None


class RunDir:
    """Paths and bookkeeping files of one run (`runs/<name>/`)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.json")
    history_path = property(lambda self: self.path / "history.jsonl")
    bench_path = property(lambda self: self.path / "bench.json")
    export_dir = property(lambda self: self.path / "export")

    def sidecar_path(self, stage: str) -> Path:
        """`export/<stage>.json`: the description of the stage's exported files."""
        return self.export_dir / f"{stage}.json"

    def diagnosis_path(self, graph: str | Path) -> Path:
        """`export/<stage>.int8.diagnosis.json` beside an int8 graph (`export/<stage>.int8.onnx`, relative to the
        run): where its layers lose (export.diagnose)."""
        return self.path / Path(graph).with_suffix(".diagnosis.json")

    def diagnosis(self, graph: str | Path) -> Int8Diagnosis | None:
        """The diagnosis of the int8 graph `graph` (relative to the run), where it was made."""
        fix = "delete it (only the report reads it), or re-run gtcompress export, which writes it again"
        return self._record(Int8Diagnosis, self.diagnosis_path(graph), fix)

    def write_diagnosis(self, graph: str | Path, diagnosis: Int8Diagnosis) -> None:
        write_json(self.diagnosis_path(graph), diagnosis.model_dump(mode="json"))

    progress_dir = property(lambda self: self.path / "checkpoints")
    candidates_path = property(lambda self: self.path / "candidates.json")  # the latency pre-check (with a budget)
    report_path = property(lambda self: self.path / "report.json")  # what `gtcompress report` wrote last

    def saved_config(self) -> RunConfig:
        """config.yaml as the run's configuration. A run saved before generous.scale existed trained its GT with
        the k^2-scaled term: it reads (and resumes) with it."""
        fix = "restore it from a copy: no other file of the run records its configuration"
        try:
            tree = yaml.safe_load(self.config.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise damaged(self.config, f"not valid YAML ({first_line(e)})", fix) from None
        if not isinstance(tree, dict):
            raise damaged(self.config, f"it holds {_kind(tree)} where a mapping is expected", fix)
        if isinstance(tree.get("generous"), dict):
            tree["generous"].setdefault("scale", "k_squared")
        return validate(RunConfig, tree, f"{self.config} is damaged", fix)

    def checkpoint(self, stage: str) -> Path:
        """The finished stage's model checkpoint."""
        return self.path / f"{stage}.pt"

    def progress(self, stage: str) -> Path:
        """The in-progress training state of a stage, rewritten after every epoch."""
        return self.progress_dir / f"{stage}.last.pt"

    @property
    def repair_fix(self) -> str:
        """The hint of a damaged metrics.json or history.jsonl: the command that rebuilds them."""
        return f"rebuild it from the run's checkpoints: gtcompress repair {self.path}"

    def metrics(self) -> dict[str, Any]:
        """metrics.json as JSON: an object of stage records and the export lists (empty before a stage finished)."""
        if not self.metrics_path.exists():
            return {}
        return _object(read_json(self.metrics_path, self.repair_fix), self.metrics_path, self.repair_fix)

    def stage_records(self) -> dict[str, StageRecord]:
        """Every finished stage's record in metrics.json, in training order, as written (see stages.stage_records
        for them with their identities)."""
        metrics = self.metrics()
        stages = {k: m for k, m in metrics.items() if isinstance(m, dict) and "top1" in m}
        return _typed(dict[str, StageRecord], stages, self.metrics_path, self.repair_fix)

    def write_stage(self, name: str, record: StageRecord) -> None:
        """Record a finished stage (replacing an earlier record of it)."""
        metrics = self.metrics()
        metrics[name] = record.as_json()
        write_json(self.metrics_path, metrics)

    def exports(self) -> list[ExportRecord]:
        """Every verified artefact of the run."""
        return self._export_list(list[ExportRecord], "export")

    def rejected(self) -> list[RejectedExport]:
        """Every artefact that failed verification on a backend (and was not kept there)."""
        return self._export_list(list[RejectedExport], "export_rejected")

    def _export_list(self, kind: Any, key: str) -> list[Any]:
        fix = f"drop it with gtcompress repair {self.path}; then gtcompress export verifies the files again"
        return _typed(kind, self.metrics().get(key, []), self.metrics_path, fix, key)

    def keep_export(self, record: ExportRecord) -> None:
        """Record a verified artefact, replacing its earlier record on that backend and any rejection there."""
        key = (record.path, record.backend)
        kept = [r for r in self.exports() if (r.path, r.backend) != key]
        self._write_exports([*kept, record], [r for r in self.rejected() if (r.path, r.backend) != key])

    def reject_export(self, record: RejectedExport) -> None:
        """Record an artefact that failed verification on a backend (an earlier verified file stays as it was)."""
        key = (record.path, record.backend)
        self._write_exports(self.exports(), [*(r for r in self.rejected() if (r.path, r.backend) != key), record])

    def _write_exports(self, kept: list[ExportRecord], rejected: list[RejectedExport]) -> None:
        metrics = self.metrics()
        metrics["export"] = [r.model_dump(mode="json") for r in kept]
        metrics["export_rejected"] = [r.model_dump(mode="json") for r in rejected]
        write_json(self.metrics_path, metrics)

    def bench(self) -> BenchFile | None:
        return self._record(BenchFile, self.bench_path, f"measure again: gtcompress bench {self.path}")

    def write_bench(self, bench: BenchFile) -> None:
        write_json(self.bench_path, bench.model_dump(mode="json"))

    def candidate_check(self) -> CandidateCheck | None:
        """The latency pre-check, when the run was given a budget."""
        fix = "delete it: it only records the check before training (give gtcompress report --latency-budget MS)"
        return self._record(CandidateCheck, self.candidates_path, fix)

    def write_candidate_check(self, check: CandidateCheck) -> None:
        write_json(self.candidates_path, check.model_dump(mode="json"))

    def report(self) -> Report:
        """report.json: the report's own output (publish copies it beside the model and its card reads it)."""
        report = self._record(Report, self.report_path, f"write it again: gtcompress report {self.path}")
        if report is None:
            raise UserError(f"{self.path} has no report.json", f"write it: gtcompress report {self.path}")
        return report

    def _record(self, kind: Any, path: Path, fix: str) -> Any:
        """The typed record a JSON file of the run holds, or None where there is no such file."""
        return _typed(kind, _object(read_json(path, fix), path, fix), path, fix) if path.is_file() else None

    def write_report(self, report: Report) -> None:
        write_json(self.report_path, report.to_json())

    def history(self) -> list[dict[str, Any]]:
        """history.jsonl's epoch records, each checked against records.Epoch (read by key by the plots and by a
        resumed run, which rewrites them)."""
        records, unreadable = self.readable_history()
        if unreadable:
            lines = ", ".join(map(str, unreadable[:5])) + (", ..." if len(unreadable) > 5 else "")
            what = f"line {lines} is" if len(unreadable) == 1 else f"lines {lines} are"
            fix = f"drop the unreadable lines: gtcompress repair {self.path}"
            raise damaged(self.history_path, f"{what} not an epoch's JSON record", fix)
        return records

    def readable_history(self) -> tuple[list[dict[str, Any]], list[int]]:
        """history.jsonl's readable epoch records, and the numbers of its lines that are not one (junk, or a line
        cut off by a crash)."""
        if not self.history_path.exists():
            return [], []
        records, unreadable = [], []
        for number, line in enumerate(self.history_path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:  # a JSON error, bytes that are not UTF-8 and a record of the wrong shape are all ValueErrors
                record = json.loads(line)
                Epoch.model_validate(record)
                records.append(record)
            except ValueError:
                unreadable.append(number)
        return records, unreadable

    def write_history(self, records: list[dict[str, Any]]) -> None:
        write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in records))


def new_run_path(root: Path = RUNS_ROOT) -> Path:
    """`runs/<timestamp>`, suffixed if that name is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def mark_latest(run: Path) -> None:
    """Point `<parent>/latest` at `run` (an atomic symlink swap)."""
    link = run.parent / "latest"
    tmp = run.parent / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name)
    os.replace(tmp, link)


def resolve_run(path: Path | None) -> RunDir:
    """The run at `path`, or `runs/latest`; a clear error where there is none."""
    path = Path(path) if path is not None else RUNS_ROOT / "latest"
    if not (path / "config.yaml").is_file():
        where = "runs/latest" if path == RUNS_ROOT / "latest" else str(path)
        raise UserError(
            f"no gtcompress run at {where}",
            "run `gtcompress distill` first, or name the run: --out RUN with --resume, RUN for the other commands",
        )
    return RunDir(path.resolve())
