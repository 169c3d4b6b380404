"""Quantization-aware training with NNCF's fake quantizers (its torch backend): a model is given them, trained,
and then left without them.

The graph that ships is not NNCF's. Its torch export (nncf.strip, then torch.onnx) keeps each BatchNorm unfolded
after a fake-quantized convolution, and onnxruntime runs that graph with float convolutions between its Q/DQ
nodes: its optimized form has 53 Conv, 34 BatchNormalization and no QLinearConv on a MobileNetV3. So the
fine-tuned float weights are quantized again by the export's own int8 method and format. The weights carry over
nearly exactly: their quantizers are set to the portable format's grid, per output channel and 7-bit (NNCF's
[-63, 63] against onnxruntime's [-64, 64]), and a per-channel grid scales with its channel, so folding BatchNorm
into a convolution moves each weight and its grid together. The activations' ranges are calibrated again, on
training images.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterable

import torch
from torch import nn

from .errors import UserError


def fake_quantize(model: nn.Module, batches: Iterable[torch.Tensor], images: int) -> nn.Module:
    """`model` with NNCF's fake quantizers on its weights and activations, their ranges set on the first `images`
    images of `batches` (on the model's device); they are trained with it."""
    # NNCF compiles its quantization kernels on first use and gives up after 60 s by default, which a busy CPU
    # exceeds (seen in a clean CI run): wait for the compiler, unless the user set a limit
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")
    import nncf

    items, seen = [], 0
    for x in batches:
        items.append(x)
        seen += len(x)
        if seen >= images:
            break
    nncf.set_log_level(logging.ERROR)
    model.eval()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars
            quantized = nncf.quantize(model, nncf.Dataset(items), subset_size=seen)
    except nncf.InstallationError as e:  # its CUDA kernels are compiled on first use (its bias correction), with nvcc
        raise UserError(
            f"NNCF cannot fake-quantize on this device ({str(e).splitlines()[0]})",
            "install the CUDA toolkit (nvcc) for NNCF's CUDA kernels, or train with --device cpu",
        ) from None
    # NNCF's overflow fix (7-bit weights) is its ONNX backend's, not its torch one's: the grid is set here, the
    # portable format's (export.precisions), on the ranges NNCF calibrated
    for module in _weight_quantizers(quantized):
        module.num_bits = 7
    return quantized.train()


def _weight_quantizers(model: nn.Module) -> list[nn.Module]:
    """The quantizers of weights: per output channel, on a convolution's or matmul's second input (an activation's
    may be per channel too: a depthwise convolution's input)."""
    from nncf.torch.function_hook import get_hook_storage
    from nncf.torch.function_hook.hook_storage import decode_hook_name

    return [
        m
        for name, m in get_hook_storage(model).named_hooks()
        if getattr(m, "per_channel", False) and decode_hook_name(name)[::2] == ("pre_hooks", 1)
    ]


def float_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trained model's own tensors, without its fake quantizers'."""
    from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE

    return {k: v for k, v in model.state_dict().items() if not k.startswith(f"{ATR_HOOK_STORAGE}.")}
