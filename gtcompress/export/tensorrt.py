"""TensorRT engines built from an ONNX file with the TensorRT 10/11 Python API (the runner is in backends/).

Precision comes from the ONNX graph (fp32, fp16 with fp32 I/O, or int8 Q/DQ): the network is strongly
typed, as TensorRT 11 requires (it removed the FP16/INT8 builder flags), and TF32 is switched off so an
fp32 graph runs in IEEE fp32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends.tensorrt_runner import make_logger, require_tensorrt
from ..errors import UserError
from ..rundir import atomic_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """The engine's optimization profiles over the batch dimension and its builder workspace.

    One profile per batch in `opt_batches`, tuned for that batch and covering the batches above the previous
    one (the last up to `max_batch`): batch-1 latency gets kernels chosen for batch 1, not for the maximum.
    """

    max_batch: int = 32
    workspace_gib: float = 2.0
    opt_batches: tuple[int, ...] = (1, 8, 32)

    def profiles(self) -> list[tuple[int, int, int]]:
        """(min, opt, max) batch of each optimization profile."""
        opts = sorted({min(b, self.max_batch) for b in self.opt_batches})
        lows = [1, *(b + 1 for b in opts[:-1])]
        highs = [*opts[:-1], self.max_batch]
        return list(zip(lows, opts, highs))


def build_engine(
    onnx_path: Path, engine_path: Path, cfg: EngineConfig, timing_cache: Path | None = None
) -> tuple[str, str]:
    """Build a serialized engine for `onnx_path` (dynamic batch 1..max_batch) into `engine_path`.

    The timing cache at `timing_cache` is read if present and rewritten with this build's timings,
    so later builds on the same GPU and TensorRT version skip tactic timing. Returns TensorRT's version
    and what became of the cache: "reused", "new" or "replaced" (another GPU or version).
    """
    trt = require_tensorrt()
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    # Ignored (always on) in TensorRT 11; in 10.x it makes the graph's dtypes the engine's precision.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors or ["unknown error"]
        raise UserError(
            f"TensorRT cannot parse {onnx_path.name}: {errors[0].splitlines()[0]}",
            "check that the ONNX opset is supported by this TensorRT version (--opset)",
        )
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise UserError(
            f"{onnx_path.name} has {network.num_inputs} inputs and {network.num_outputs} outputs",
            "export a classifier with one input and one output",
        )
    tensor = network.get_input(0)
    batch, *rest = tuple(tensor.shape)
    if batch != -1 or any(d < 0 for d in rest):
        raise UserError(
            f"{onnx_path.name} has input shape {tuple(tensor.shape)}, not (batch, C, H, W)",
            "re-export it with gtcompress export (dynamic batch, fixed image size)",
        )

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    config.clear_flag(trt.BuilderFlag.TF32)
    for low, opt, high in cfg.profiles():
        profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, (low, *rest), (opt, *rest), (high, *rest))
        config.add_optimization_profile(profile)
    cache_status = _use_timing_cache(config, timing_cache)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        reason = logger.errors[-1].splitlines()[0] if logger.errors else "see the TensorRT log"
        raise UserError(
            f"TensorRT could not build an engine from {onnx_path.name}: {reason}",
            "lower --max-batch or raise --workspace-gib",
        )
    with open(engine_path, "wb") as f:
        f.write(plan)
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp, open(tmp, "wb") as f:
            f.write(config.get_timing_cache().serialize())
    return trt.__version__, cache_status


def _use_timing_cache(config: Any, path: Path | None) -> str:
    """Start from the saved timing cache; one from another GPU or TensorRT version is replaced, not used."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        log.warning("TensorRT: ignoring the timing cache %s (another GPU or TensorRT version)", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
        return "replaced"
    return "reused" if data else "new"
