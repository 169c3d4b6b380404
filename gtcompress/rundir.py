"""The run directory: its file names, atomic writes, and its files read and written as typed records (config.yaml,
metrics.json's stages and exports, history.jsonl, bench.json, candidates.json), runs/latest."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import RunConfig
from .errors import UserError, first_line
from .records import BenchFile, CandidateCheck, ExportRecord, RejectedExport, Report, StageRecord
from .typed import validate

RUNS_ROOT = Path("runs")
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the mode open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of `path`; it replaces `path` (and what was there) only if the block succeeds.

    The old folder is renamed away just before the new one is renamed in, so `path` is never half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    old = tmp.with_suffix(".old")
    try:
        yield tmp
        for item in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700 and some writers 0600: give mkdir's and open()'s modes
            os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~_UMASK)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})", "restore it or re-run the stage that writes it")


def torch_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class RunDir:
    """Paths and bookkeeping files of one run (`runs/<name>/`)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.json")
    history_path = property(lambda self: self.path / "history.jsonl")
    bench_path = property(lambda self: self.path / "bench.json")
    export_dir = property(lambda self: self.path / "export")
    progress_dir = property(lambda self: self.path / "checkpoints")
    candidates_path = property(lambda self: self.path / "candidates.json")  # the latency pre-check (with a budget)
    report_path = property(lambda self: self.path / "report.json")  # what `gtcompress report` wrote last

    def saved_config(self) -> RunConfig:
        """config.yaml as the run's configuration. A run saved before generous.scale existed trained its GT with
        the k^2-scaled term: it reads (and resumes) with it."""
        try:
            tree = yaml.safe_load(self.config.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{self.config} is not valid YAML ({first_line(e)})", "restore it from the run") from None
        if isinstance(tree.get("generous"), dict):
            tree["generous"].setdefault("scale", "k_squared")
        return validate(RunConfig, tree, f"{self.config} is not a gtcompress run configuration", "restore it")

    def checkpoint(self, stage: str) -> Path:
        """The finished stage's model checkpoint."""
        return self.path / f"{stage}.pt"

    def progress(self, stage: str) -> Path:
        """The in-progress training state of a stage, rewritten after every epoch."""
        return self.progress_dir / f"{stage}.last.pt"

    def metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_path) if self.metrics_path.exists() else {}

    def stage_records(self) -> dict[str, StageRecord]:
        """Every finished stage's record in metrics.json, in training order, as written (see stages.stage_records
        for them with their identities)."""
        metrics = self.metrics()
        return {k: StageRecord.model_validate(m) for k, m in metrics.items() if isinstance(m, dict) and "top1" in m}

    def write_stage(self, name: str, record: StageRecord) -> None:
        """Record a finished stage (replacing an earlier record of it)."""
        metrics = self.metrics()
        metrics[name] = record.as_json()
        write_json(self.metrics_path, metrics)

    def exports(self) -> list[ExportRecord]:
        """Every verified artefact of the run."""
        return [ExportRecord.model_validate(r) for r in self.metrics().get("export", [])]

    def rejected(self) -> list[RejectedExport]:
        """Every artefact that failed verification on a backend (and was not kept there)."""
        return [RejectedExport.model_validate(r) for r in self.metrics().get("export_rejected", [])]

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
        path = self.bench_path
        return BenchFile.model_validate(read_json(path)) if path.is_file() else None

    def write_bench(self, bench: BenchFile) -> None:
        write_json(self.bench_path, bench.model_dump(mode="json"))

    def candidate_check(self) -> CandidateCheck | None:
        """The latency pre-check, when the run was given a budget."""
        path = self.candidates_path
        return CandidateCheck.model_validate(read_json(path)) if path.is_file() else None

    def write_candidate_check(self, check: CandidateCheck) -> None:
        write_json(self.candidates_path, check.model_dump(mode="json"))

    def report(self) -> Report:
        """report.json: the report's own output (publish copies it beside the model and its card reads it)."""
        path = self.report_path
        return validate(Report, read_json(path), f"{path} is not a gtcompress report", "run gtcompress report again")

    def write_report(self, report: Report) -> None:
        write_json(self.report_path, report.to_json())

    def history(self) -> list[dict[str, Any]]:
        if not self.history_path.exists():
            return []
        return [json.loads(line) for line in self.history_path.read_text().splitlines() if line.strip()]

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
        raise UserError(f"no gtcompress run at {where}", "run `gtcompress distill` first or pass a run directory")
    return RunDir(path.resolve())
