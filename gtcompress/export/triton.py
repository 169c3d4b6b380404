"""A Triton model repository of the verified artefacts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..records import ExportRecord
from ..rundir import atomic_path, write_text


def triton_config(name: str, platform: str, meta: dict[str, Any], max_batch: int) -> str:
    """A Triton `config.pbtxt`: fp32 NCHW in, logits out (labelled), dynamic batching up to `max_batch`."""
    dims = ", ".join(str(d) for d in meta["input_shape"][1:])
    gpu = platform == "tensorrt_plan"
    instance = "instance_group [\n  {\n    kind: KIND_GPU\n    count: 1\n  }\n]\n" if gpu else ""
    return (
        f'name: "{name}"\nplatform: "{platform}"\nmax_batch_size: {max_batch}\n'
        f'input [\n  {{\n    name: "{meta["input_name"]}"\n    data_type: TYPE_FP32\n    dims: [ {dims} ]\n  }}\n]\n'
        f'output [\n  {{\n    name: "{meta["output_name"]}"\n    data_type: TYPE_FP32\n'
        f'    dims: [ {meta["num_classes"]} ]\n    label_filename: "labels.txt"\n  }}\n]\n'
        f"dynamic_batching {{\n  max_queue_delay_microseconds: 100\n}}\n{instance}"
    )


def triton_model_name(record: ExportRecord) -> str:
    return f"{record.stage}_{'onnx' if record.format == 'onnx' else 'trt'}_{record.precision}"


def write_triton_repository(
    root: Path, records: list[ExportRecord], base: Path, meta: dict[str, Any], max_batch: int
) -> list[str]:
    """One Triton model per verified artefact: `<root>/<name>/{config.pbtxt, labels.txt, 1/model.onnx|plan}`.

    The int8 ONNX graph made for TensorRT is left out: Triton serves the engine built from it. A file verified on
    several backends is one model.
    """
    names = []
    served = {r.path: r for r in records if not (r.format == "onnx" and r.target == "tensorrt")}
    for record in served.values():
        name = triton_model_name(record)
        onnx_model = record.format == "onnx"
        directory = root / name
        with atomic_path(directory / "1" / ("model.onnx" if onnx_model else "model.plan")) as tmp:
            shutil.copyfile(base / record.path, tmp)
        write_text(directory / "labels.txt", "".join(f"{c}\n" for c in meta["class_names"]))
        write_text(
            directory / "config.pbtxt",
            triton_config(name, "onnxruntime_onnx" if onnx_model else "tensorrt_plan", meta, max_batch),
        )
        names.append(name)
    return names
