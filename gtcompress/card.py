"""The model card of a published folder (its README.md): Hub metadata and what the run measured, from its files.

Every number is read from the run's report.json, metrics.json and config.yaml; none is written by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .backends import BACKENDS
from .config import RunConfig
from .export.precisions import PRECISIONS
from .records import ExportRecord, ExportSidecar, Report, ReportRow, StageRecord, fastest
from .stages import distilled_students
from .tables import markdown_table

ONNX_DIR = "onnx"  # the folder's ONNX files and their model.json
TAGS = ("image-classification", "timm", "knowledge-distillation", "generous-teacher", "gtcompress", "onnx")
METHOD_NAMES = {
    "kd": "KD (Hinton et al., 2015)",
    "dkd": "decoupled KD (Zhao et al., 2022)",
    "lskd": "logit-standardised KD (Sun et al., 2024)",
    "dist": "DIST (Huang et al., 2022)",
}


@dataclass(frozen=True)
class FolderFile:
    """A verified ONNX file copied into the folder: its name there, and its export record in the run."""

    path: str  # in the folder: onnx/model[.precision].onnx
    record: ExportRecord  # as the run verified it (its path is the run's)


@dataclass(frozen=True)
class Card:
    """What the card is made of: the run's files as read, and where the folder is loaded from."""

    report: Report
    config: RunConfig  # the run's config.yaml
    metrics: dict[str, StageRecord]  # the run's stage records (metrics.json with each stage's identity)
    per_device: list[str]  # the backends whose artefacts of the stage are bound to their device: not included
    stage: str
    files: list[FolderFile]
    sidecar: ExportSidecar
    license: str
    folder: str  # the folder's name
    repo_id: str | None  # the Hub repo it is pushed to

    @property
    def load_name(self) -> str:
        """What timm.create_model loads it by."""
        return f"hf-hub:{self.repo_id}" if self.repo_id else f"local-dir:{self.folder}"

    def rows(self) -> list[ReportRow]:
        """The report's rows of the published model whose files are in the folder (fp32 first)."""
        in_folder = {f.record.path for f in self.files}
        return [r for r in self.report.rows if r.stage == self.stage and r.file in in_folder]

    @property
    def split(self) -> str:
        """The split its top-1 was measured on."""
        return (self.config.environment or {}).get("eval_split", "test")


def model_card(card: Card) -> str:
    """README.md in the Hub's format: YAML metadata, then the method, the results, how to load it and its limits."""
    front = yaml.safe_dump(_front_matter(card), sort_keys=False, allow_unicode=True)
    parts = [f"---\n{front}---", f"# {_heading(card)}", _method(card), "## Results", *_results(card)]
    parts += ["## How to use", *_usage(card), "## Limits", "\n".join(f"- {line}" for line in _limits(card))]
    return "\n\n".join(parts) + "\n"


def _heading(card: Card) -> str:
    m = card.metrics[card.stage]
    return f"{m.arch}: {m.title} on {_dataset_id(card.config.data.name)}, by gtcompress"


def _dataset_id(name: str) -> str:
    """The data set as the card names it: without gtcompress's reader prefix, and a local folder by its last part
    only (a card is public; a full path is not the data set's name)."""
    prefix = next((p for p in ("imagefolder:", "hfds/", "torch/", "wds/", "tfds/") if name.startswith(p)), "")
    rest = name[len(prefix) :]
    return Path(rest).name if prefix == "imagefolder:" or Path(rest).is_dir() else rest


def _front_matter(card: Card) -> dict[str, Any]:
    """library, license, tags, data set, and the model-index block with the measured top-1 of each file."""
    data = _dataset_id(card.config.data.name)
    results = [
        {"type": "accuracy", "name": f"top-1 accuracy ({_form(r.precision)})", "value": round(r.top1, 2)}
        for r in card.rows()
    ]
    source = card.metrics[card.stage].source or ""
    return {
        "library_name": "timm",
        "license": card.license,
        "pipeline_tag": "image-classification",
        "tags": list(TAGS),
        "datasets": [data],
        **({"base_model": source.split(":", 1)[1]} if source.startswith("hf-hub:") else {}),
        "model-index": [
            {
                "name": (card.repo_id or card.folder).split("/")[-1],
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {"name": data, "type": data, "split": card.split},
                        "metrics": results,
                    }
                ],
            }
        ],
    }


def _form(precision: str) -> str:
    """How a report row at `precision` runs: fp32 is the PyTorch model (and the fp32 ONNX file), others ONNX files."""
    return "PyTorch fp32" if precision == "fp32" else f"ONNX {precision}"


def _trained(m: StageRecord) -> str:
    done = f"{m.epochs} epochs" if m.epochs else "not trained here"
    return f"{done}, top-1 {m.top1:.2f}%"


def _start(card: Card) -> str:
    """Where a published model other than the ST (whose source the paragraph names) took its initial weights."""
    source = card.metrics[card.stage].source or ""
    return f", starting from {source}" if card.stage != "standard_teacher" and ":" in source else ""


def _method(card: Card) -> str:
    """One paragraph: the teacher, the Generous Teacher's settings, the distillation method and the epochs."""
    metrics, student, data = card.metrics, card.config.student, _dataset_id(card.config.data.name)
    said = []
    by_role = {m.role: m for m in metrics.values()}
    if st := by_role.get("standard"):
        source = {"scratch": "random weights", "pretrained": "timm's pretrained weights", "checkpoint": "a checkpoint"}
        said.append(
            f"A Standard Teacher, {st.arch} starting from {source.get(st.source, st.source)}, was trained "
            f"with cross-entropy on {data} ({_trained(st)})."
        )
    if gt := by_role.get("generous"):
        init = {"checkpoint": "loaded from a checkpoint"}.get(gt.source) or (
            "from scratch" if gt.init == "scratch" else "fine-tuned from the Standard Teacher"
        )
        said.append(
            f"A Generous Teacher (Ding et al., *Image and Vision Computing* 150, 2024), {gt.arch} {init}, "
            f"learned beside cross-entropy the Standard Teacher's distribution over the non-target classes "
            f"(β {gt.beta}, k {gt.k}, scale {gt.scale}; {_trained(gt)})."
        )
    if students := [metrics[s].arch for s in distilled_students(metrics)]:
        params = ", ".join(f"{k} {v}" for k, v in student.method_config.model_dump().items())
        said.append(
            f"The student{'s' * (len(students) > 1)} {', '.join(students)} {'were' if len(students) > 1 else 'was'} "
            f"distilled from it with {METHOD_NAMES.get(student.method, student.method)} ({params})."
        )
    m = metrics[card.stage]
    said.append(
        f"This folder holds the {m.title}: {m.arch}, {m.params / 1e6:.2f}M parameters, "
        f"{m.macs / 1e6:.1f} MMACs per {card.sidecar.img_size}-px image, {_trained(m)}{_start(card)}; made "
        f"with gtcompress {__version__}."
    )
    return " ".join(said)


def _results(card: Card) -> list[str]:
    """The report's numbers for the published files (and the reference teacher): top-1, size, p50 per backend and
    batch, and what that buys against the teacher; where they were measured."""
    report, h = card.report, card.report.header
    teacher = report.teacher_row()
    rows = card.rows() + ([teacher] if teacher and card.stage != report.teacher else [])
    order = {b: i for i, b in enumerate(BACKENDS)}
    measured = {(b.backend, b.batch_size) for b in report.bench if b.stage == card.stage}
    columns = sorted(measured, key=lambda c: (order.get(c[0], len(order)), c[1]))
    in_folder = {f.record.path: f.path for f in card.files}
    headers = ["model", "file", "top-1 %", "MB", *(f"{b} p50 ms b{n}" for b, n in columns), "× faster", "× smaller"]
    cells = []
    for r in rows:
        best = [fastest(report.bench, r.stage, b, r.precision, n) for b, n in columns]
        file = in_folder.get(r.file, "not in this folder")
        cells.append(
            [
                r.name if r.stage != card.stage else f"{r.arch} {_form(r.precision)}",
                f"model.safetensors, {file}" if r.stage == card.stage and r.precision == "fp32" else file,
                f"{r.top1:.2f}",
                f"{r.bytes / 1e6:.2f}" if r.bytes else "–",
                *(f"{x.p50_ms:.3f}" if x is not None else "–" for x in best),
                f"{r.speedup:.1f}×" if r.speedup else "–",
                f"{r.size_ratio:.1f}×" if r.size_ratio else "–",
            ]
        )
    test_images = next(f.record.test_images for f in card.files if f.record.precision == "fp32")
    teacher_title = report.titles.get(report.teacher, report.teacher) if report.teacher else None
    where = (
        f"Latency is the p50 of end-to-end calls (a float32 batch in host memory to logits) timed by `gtcompress "
        f"bench` on {h.machine}, each model at its best setting (CPU threads, CUDA graph); × faster and "
        f"× smaller compare with the {teacher_title} at fp32 on {report.primary_backend} at batch "
        f"{report.batch_size}."
        if report.bench
        else "Latency was not measured (`gtcompress bench` was not run)."
    )
    intro = f"Top-1 on the {card.split} split of {_dataset_id(h.data)} ({test_images} images), from the run's report. "
    return [intro + where, markdown_table(headers, cells)]


def _usage(card: Card) -> list[str]:
    """Loading with timm, and running an ONNX file with onnxruntime (timm's preprocessing from config.json)."""
    onnx = next(f.path for p in reversed(PRECISIONS) for f in card.files if f.record.precision == p)  # the smallest
    where = (
        f'from huggingface_hub import snapshot_download\n\nfolder = snapshot_download("{card.repo_id}")'
        if card.repo_id
        else f'folder = "{card.folder}"  # this folder'
    )
    timm_code = f"""```python
import timm
import torch
from PIL import Image

model = timm.create_model("{card.load_name}", pretrained=True).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, model=model))
with torch.no_grad():
    probabilities = model(transform(Image.open("image.png").convert("RGB"))[None]).softmax(-1)
print(model.pretrained_cfg["label_names"][probabilities.argmax()])
```"""
    onnx_code = f"""```python
import json

import onnxruntime as ort
import timm
from PIL import Image

{where}
config = json.load(open(f"{{folder}}/config.json"))
transform = timm.data.create_transform(**timm.data.resolve_data_config({{}}, pretrained_cfg=config["pretrained_cfg"]))
session = ort.InferenceSession(f"{{folder}}/{onnx}")
logits = session.run(None, {{"input": transform(Image.open("image.png").convert("RGB"))[None].numpy()}})[0]
print(config["label_names"][logits.argmax()])
```"""
    s = card.sidecar
    return [
        "With timm (the classifier and preprocessing come from config.json):",
        timm_code,
        f"With onnxruntime (`{ONNX_DIR}/`: {', '.join(Path(f.path).name for f in card.files)}):",
        onnx_code,
        f"Without torch: `{ONNX_DIR}/model.json` describes the input: resize the short side to {s.resize} px "
        f"({s.interpolation}), centre-crop to {s.crop[0]}×{s.crop[1]}, scale to [0, 1], subtract `mean`, "
        f"divide by `std`; NCHW float32 in `{s.input_name}`, logits out of `{s.output_name}`.",
    ]


def _limits(card: Card) -> list[str]:
    """What the numbers cover and what was not measured, from the run's files."""
    r, h = card.report, card.report.header
    lines = [
        f"Trained and evaluated on {_dataset_id(h.data)} only ({len(card.sidecar.class_names)} classes, "
        f"{card.sidecar.img_size}-px images); top-1 is from one run (seed {card.config.seed}) on the "
        f"{card.split} split, without a confidence interval, and says nothing about other data."
    ]
    missing = [b for b in BACKENDS if b not in r.backends]
    unmeasured = [f"latency on {', '.join(missing)}"] if r.bench and missing else []
    unmeasured += [] if r.bench else ["latency (no `gtcompress bench`)"]
    published = {f.record.precision for f in card.files}
    unmeasured += [f"a {p} file (not exported)" for p in PRECISIONS if p not in published]
    lines.append(f"Not measured: {'; '.join([*unmeasured, 'robustness to other data, calibration, fairness'])}.")
    if card.stage in distilled_students(card.metrics):
        delta = next((x.delta_vs_st_student for x in card.rows() if x.delta_vs_st_student is not None), None)
        lines.append(
            f"Against the student distilled from the Standard Teacher (same seed and schedule) its top-1 differs by "
            f"{delta:+.2f} points, in one run."
            if delta is not None
            else "The run has no controls (`--compare`): it does not show whether the Generous Teacher helped."
        )
    if card.per_device:
        lines.append(
            f"The {' and '.join(card.per_device)} artefacts are not included (each is bound to the device model and "
            "runtime version it was built with: rebuild them with `gtcompress export --backend NAME`)."
        )
    if card.license == "other":
        lines.append("No license was chosen when publishing (`--license`): the data set's and the teacher's apply.")
    return lines + [f"From the run's report: {note}" for note in r.notes]
