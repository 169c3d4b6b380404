"""Publish: a run's model as a Hugging Face model folder that timm loads as it is, with its card; `--push` uploads it.

The folder is what `timm.models.save_for_hf` writes (config.json with the architecture, classes and preprocessing,
model.safetensors), beside the run's verified ONNX files (`onnx/`, with their `model.json`), its report.json and a
model card (README.md) generated from the run's files. It is written as a whole or not at all.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from timm.models import save_for_hf
from torch import nn

from . import __version__
from .backends import ONNX, builders
from .card import ONNX_DIR, Card, FolderFile, model_card
from .errors import UserError, first_line
from .export.precisions import PRECISIONS
from .files import atomic_dir, write_json, write_text
from .models import ModelSpec, load_model
from .records import ExportRecord, ExportSidecar, Report, StageRecord
from .report import build_report, write_report
from .rundir import RunDir, read_sidecar, resolve_run, write_sidecar
from .settings import PublishConfig
from .stages import distilled_students, stage_records

PUBLISH_FORMAT = "gtcompress-publish/1"  # config.json's `gtcompress.format`: the folder is ours to replace


def publish(cfg: PublishConfig, say: Callable[[str], None] = print) -> Path:
    """Write the folder (complete before any upload), then push it with `--push`; returns the folder."""
    run = resolve_run(cfg.run)
    records = stage_records(run)
    stage = _stage(records, cfg.stage)
    out = Path(cfg.out)
    _check_out(out, run, cfg.force)
    model, spec, _ = load_model(run.checkpoint(stage))
    if spec.small_stem:
        raise UserError(
            f"{stage} has the --small-stem CIFAR stem, which timm.create_model does not build",
            "publish a model trained without --small-stem",
        )
    report = _report(run, say)
    onnx = _verified_onnx(run, stage, say)
    sidecar = read_sidecar(run.path / next(r.path for r in onnx if r.precision == "fp32"))
    with atomic_dir(out) as folder:
        _save_model(model, spec, sidecar, folder, {"license": cfg.license}, {"run": run.path.name, "stage": stage})
        files = _copy_onnx(run, onnx, sidecar, folder)
        write_json(folder / "report.json", report.to_json())
        bound = _per_device(run, stage)
        card = Card(report, run.saved_config(), records, bound, stage, files, sidecar, cfg.license, out.name, cfg.push)
        write_text(folder / "README.md", model_card(card))
    say(f"wrote {out}: config.json, model.safetensors, {', '.join(f.path for f in files)}, report.json, README.md")
    if cfg.push:
        say(f"pushed to {push_folder(out, cfg.push, cfg.private)}")
    return out


def _per_device(run: RunDir, stage: str) -> list[str]:
    """The backends whose artefacts of the stage are bound to the device they were built on: not published."""
    built = {r.backend for r in run.exports() if r.stage == stage}
    return [s.name for s in builders() if s.loader.per_device and s.name in built]


def _save_model(
    model: nn.Module,
    spec: ModelSpec,
    sidecar: ExportSidecar,
    folder: Path,
    pretrained_cfg: dict[str, Any],
    provenance: dict[str, Any],
) -> None:
    """config.json and model.safetensors as timm's save_for_hf writes them, with the run's classes and its eval
    preprocessing (`pretrained_cfg`: input size, interpolation, crop_pct, mean, std)."""
    crop = sidecar.crop[0]
    data_config = {
        "input_size": (3, *sidecar.crop),
        "interpolation": sidecar.interpolation,
        "crop_pct": _crop_pct(crop, sidecar.resize or crop),
        "mean": spec.mean,
        "std": spec.std,
    }
    # the lineage of timm's own weights for this architecture (tag, paper, origin) does not describe these
    lineage = {k: None for k in ("tag", "origin_url", "paper_ids", "notes") if k in model.pretrained_cfg}
    model_config = {
        "label_names": list(spec.class_names),
        "pretrained_cfg": {**lineage, **pretrained_cfg},
        "gtcompress": {"format": PUBLISH_FORMAT, "version": __version__, **provenance},
    }
    save_for_hf(model, folder, model_config=model_config, data_config=data_config, safe_serialization=True)


def _stage(records: dict[str, StageRecord], name: str | None) -> str:
    """The stage to publish: the one named, else the run's one student distilled from the GT."""
    if name is not None:
        if name not in records:
            raise UserError(f"the run has no finished stage {name!r}", f"pass --stage {' | '.join(records)}")
        return name
    students = distilled_students(records)
    if len(students) != 1:
        what = "no finished student" if not students else f"{len(students)} students"
        raise UserError(f"the run has {what}", f"pass --stage {' | '.join(students or records)}")
    return students[0]


def _is_publish_folder(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text())["gtcompress"]["format"] == PUBLISH_FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _check_out(out: Path, run: RunDir, force: bool) -> None:
    """Refuse to replace anything but an earlier publish folder (or, with --force, anything but the run)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file", "pass a folder to --out")
    if run.path.is_relative_to(out.resolve()):
        raise UserError(f"--out {out} holds the run {run.path}", "pass another --out")
    if out.is_dir() and any(out.iterdir()) and not force and not _is_publish_folder(out):
        raise UserError(
            f"--out {out} is not empty and not a gtcompress publish folder", "pass another --out, or --force"
        )


def _report(run: RunDir, say: Callable[[str], None]) -> Report:
    """The run's report.json, written first by the report code where it is missing or older than what it reads."""
    path = run.report_path
    inputs = [run.metrics_path, run.history_path, run.candidates_path, run.bench_path]
    newest = max(p.stat().st_mtime for p in inputs if p.exists())
    if not path.is_file() or path.stat().st_mtime < newest:
        say("report.json is missing or older than the run's results: writing the report first")
        write_report(run, build_report(run))
    return run.report()


def _verified_onnx(run: RunDir, stage: str, say: Callable[[str], None]) -> list[ExportRecord]:
    """The stage's ONNX files that `gtcompress export` verified and kept, unchanged since (size, newer than .pt);
    one record each (its first backend's)."""
    trained_at = run.checkpoint(stage).stat().st_mtime
    kept: dict[str, ExportRecord] = {}
    for record in run.exports():
        if record.stage != stage or record.format != ONNX.name or record.path in kept:
            continue
        path = run.path / record.path
        if path.is_file() and path.stat().st_size == record.bytes and path.stat().st_mtime >= trained_at:
            kept[record.path] = record
        else:
            say(f"left out {record.path}: missing, changed or older than {stage}.pt since it was verified")
    if not any(r.precision == "fp32" for r in kept.values()):
        raise UserError(
            f"{run.path} has no verified ONNX export of {stage}", f"run `gtcompress export {run.path} --stage {stage}`"
        )
    return list(kept.values())


def _crop_pct(crop: int, resize: int) -> float:
    """timm's crop_pct for which its eval transform resizes to `resize`: it takes floor(crop / crop_pct)."""
    pct = crop / resize
    return pct if math.floor(crop / pct) == resize else math.nextafter(pct, 0.0)


def _copy_onnx(run: RunDir, records: list[ExportRecord], sidecar: ExportSidecar, folder: Path) -> list[FolderFile]:
    """The verified files as onnx/model[.precision].onnx beside their model.json."""
    (folder / ONNX_DIR).mkdir()
    copied = []
    for record in records:
        name = PRECISIONS[record.precision].onnx_file("model", record.target)
        shutil.copyfile(run.path / record.path, folder / ONNX_DIR / name)
        copied.append(FolderFile(f"{ONNX_DIR}/{name}", record))
    files = {Path(f.path).name: f.record.precision for f in copied}
    write_sidecar(
        folder / ONNX_DIR / "model.json", sidecar.model_copy(update={"checkpoint": "model.safetensors", "files": files})
    )
    return copied


def push_folder(folder: Path, repo_id: str, private: bool) -> str:
    """Upload the folder to a Hub model repo (created where missing); hub failures as one line. Returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.whoami()  # no token, a bad one, or no network fail here, before anything is created remotely
        repo = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        api.upload_folder(repo_id=repo, folder_path=folder, commit_message=f"gtcompress publish {__version__}")
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not push to {repo_id}: {first_line(e)}",
            f"{folder} is complete; connect and log in (hf auth login, or HF_TOKEN), then run this again",
        ) from None
    return f"https://huggingface.co/{repo}"
