"""Pre-processing shared by the deploy scripts (numpy + Pillow only): timm's eval transform, replayed.

`gtcompress export` writes `<model>.json` beside every artefact; it names the input size, the resize
and centre crop, the normalisation and the class names that the exported graph expects.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

INTERPOLATION = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def load_meta(artefact: Path) -> dict:
    """The `<stage>.json` written by `gtcompress export` beside `artefact`: the one whose `files` name it."""
    for path in sorted(artefact.parent.glob("*.json")):
        meta = json.loads(path.read_text())
        if isinstance(meta, dict) and artefact.name in meta.get("files", {}):
            return meta
    raise SystemExit(f"error: no <stage>.json naming {artefact.name} beside it (gtcompress export writes one)")


def preprocess(path: Path, meta: dict) -> np.ndarray:
    """One image as float32 CHW: RGB, short side resized, centre-cropped, scaled to [0, 1], normalised."""
    img = Image.open(path).convert("RGB")
    width, height = img.size
    short, long = (width, height) if width <= height else (height, width)
    size = meta["resize"]
    new_long = int(size * long / short)  # torchvision's Resize(int): the short side becomes `size`
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    img = img.resize((new_w, new_h), INTERPOLATION[meta["interpolation"]])
    crop_h, crop_w = meta["crop"]
    top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
    img = img.crop((left, top, left + crop_w, top + crop_h))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - np.asarray(meta["mean"], dtype=np.float32)) / np.asarray(meta["std"], dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def report(paths: list[Path], logits: np.ndarray, meta: dict, top_k: int, as_json: bool) -> None:
    """Print each image's top-k classes (or a JSON list of them)."""
    probs = softmax(logits.astype(np.float64))
    results = []
    for path, p in zip(paths, probs, strict=True):
        order = np.argsort(-p)[:top_k]
        results.append(
            {
                "image": str(path),
                "class_index": int(order[0]),
                "class_name": meta["class_names"][order[0]],
                "probability": float(p[order[0]]),
                "top_k": [{"class_name": meta["class_names"][i], "probability": float(p[i])} for i in order],
            }
        )
    if as_json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        others = ", ".join(f"{t['class_name']} {t['probability']:.1%}" for t in r["top_k"][1:])
        print(f"{r['image']}: {r['class_name']} ({r['probability']:.1%})" + (f"  [{others}]" if others else ""))
