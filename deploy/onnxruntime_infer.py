"""Classify image files with an ONNX model exported by `gtcompress export` (numpy + onnxruntime + Pillow).

    python deploy/onnxruntime_infer.py runs/latest/export/student.int8.onnx cat.png dog.jpg [--top-k 3] [--json]

Pre-processing, normalisation and class names come from `<model>.json` beside the ONNX file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort
from preprocess import load_meta, preprocess, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="an .onnx file written by gtcompress export")
    parser.add_argument("images", type=Path, nargs="+", help="image files (any format Pillow reads)")
    parser.add_argument("--top-k", type=int, default=1, help="classes shown per image")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    meta = load_meta(args.model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    batch = np.stack([preprocess(path, meta) for path in args.images])
    logits = session.run([meta["output_name"]], {meta["input_name"]: batch})[0]
    report(args.images, logits, meta, args.top_k, args.json)


if __name__ == "__main__":
    main()
