"""A fictitious backend with an artefact format of its own, for tests/test_backends.py: its loader writes a model's
weights into an .npz file, its runner rebuilds the network from that file alone. It is registered in one entry, as
`gtcompress.backends.npz_runner`, by the test that uses it."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gtcompress.backends import Backend, BuildOptions, Setting
from gtcompress.models import create_model


def missing(device: str) -> str | None:
    return None


def build(source: torch.nn.Module, dst: Path, precision: str, options: BuildOptions) -> dict[str, Any]:
    """The weights as arrays, beside the timm architecture and class count that rebuild the network."""
    arrays = {k: v.detach().cpu().numpy() for k, v in source.state_dict().items()}
    with Path(dst).open("wb") as f:  # np.savez would add .npz to a temporary name that lacks it
        np.savez(f, __arch__=source.pretrained_cfg["architecture"], __classes__=source.num_classes, **arrays)
    return {"arrays": len(arrays)}


def open(source: Path, device: str, precision: str, setting: Setting) -> "NpzBackend":
    return NpzBackend(Path(source), precision, setting)


class NpzBackend(Backend):
    name, device = "npz", "cpu"

    def __init__(self, path: Path, precision: str, setting: Setting):
        with np.load(path) as weights:
            arrays = {k: torch.from_numpy(weights[k]) for k in weights.files if not k.startswith("__")}
            self.model = create_model(str(weights["__arch__"]), int(weights["__classes__"])).eval()
        self.model.load_state_dict(arrays)
        self.precision, self.setting = precision, setting

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.model(torch.from_numpy(x)).numpy()

    def close(self) -> None:
        self.model = None
