"""A Triton model repository of the verified artefacts."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..backends import BACKENDS
from ..files import atomic_path, write_text
from ..records import ExportRecord, ExportSidecar

# What Triton calls each platform's model file, the tag of its models' names here, and whether it runs on a GPU.
PLATFORM_FILES = {"onnxruntime_onnx": ("model.onnx", "onnx", False), "tensorrt_plan": ("model.plan", "trt", True)}


def triton_config(name: str, platform: str, meta: ExportSidecar, max_batch: int) -> str:
    """A Triton `config.pbtxt`: fp32 NCHW in, logits out (labelled), dynamic batching up to `max_batch`."""
    dims = ", ".join(str(d) for d in meta.input_shape[1:])
    gpu = PLATFORM_FILES[platform][2]
    instance = "instance_group [\n  {\n    kind: KIND_GPU\n    count: 1\n  }\n]\n" if gpu else ""
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        f'input [\n  {{\n    name: "{meta.input_name}"\n    data_type: TYPE_FP32\n    dims: [ {dims} ]\n  }}\n]\n'
        f'output [\n  {{\n    name: "{meta.output_name}"\n    data_type: TYPE_FP32\n'
        f'    dims: [ {meta.num_classes} ]\n    label_filename: "labels.txt"\n  }}\n]\n'
        f"dynamic_batching {{\n  max_queue_delay_microseconds: 100\n}}\n{instance}"
    )


def platform(record: ExportRecord) -> str | None:
    """The Triton platform that serves a record's artefact: the registry's first backend that runs its kind and
    names one (None: Triton does not serve it)."""
    return next((s.triton for s in BACKENDS.values() if s.artefact == record.format and s.triton), None)


def triton_model_name(record: ExportRecord) -> str:
    return f"{record.stage}_{PLATFORM_FILES[platform(record)][1]}_{record.precision}"


def write_triton_repository(
    root: Path, records: list[ExportRecord], base: Path, meta: ExportSidecar, max_batch: int
) -> list[str]:
    """One Triton model per verified artefact Triton serves: `<root>/<name>/{config.pbtxt, labels.txt, 1/model.*}`.

    An ONNX graph made for another runtime's build (the int8 graph TensorRT's engine comes from) is left out:
    Triton serves what was built from it. A file verified on several backends is one model.
    """
    names = []
    served = {r.path: r for r in records if platform(r) and r.target == BACKENDS[r.backend].onnx_target}
    for record in served.values():
        name = triton_model_name(record)
        directory = root / name
        with atomic_path(directory / "1" / PLATFORM_FILES[platform(record)][0]) as tmp:
            shutil.copyfile(base / record.path, tmp)
        write_text(directory / "labels.txt", "".join(f"{c}\n" for c in meta.class_names))
        write_text(directory / "config.pbtxt", triton_config(name, platform(record), meta, max_batch))
        names.append(name)
    return names
