"""TensorRT: its loader builds a serialized engine from an ONNX file with the TensorRT 10/11 Python API; its runner
runs one on torch CUDA tensors through its named I/O tensors, eager or replayed as CUDA graphs (one execution
context and captured graph per input shape, as trtexec --useCudaGraph does).

Precision comes from the ONNX graph (fp32, fp16 with fp32 I/O, or int8 Q/DQ): the network is strongly typed, as
TensorRT 11 requires (it removed the FP16/INT8 builder flags), and TF32 is switched off so an fp32 graph runs in
IEEE fp32. `tensorrt` is imported lazily (the optional extra `gtcompress[trt]`); where it or a CUDA GPU is
missing, `require_tensorrt` raises one UserError saying which and how to install it.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..files import write_bytes
from . import BACKENDS, Backend, BuildOptions, Setting

log = logging.getLogger(__name__)


def require_tensorrt() -> ModuleType:
    """The `tensorrt` module, or a UserError naming what is missing: TensorRT itself or a CUDA GPU."""
    try:
        import tensorrt as trt
    except ImportError:
        raise UserError("TensorRT is not installed", BACKENDS["tensorrt"].install) from None
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "TensorRT needs a CUDA GPU and torch sees none here",
            "run the TensorRT step on a machine with an NVIDIA GPU and a CUDA build of torch",
        )
    return trt


def make_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps errors (for the one-line message) and passes warnings to `logging`."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)

    return Logger()


def missing(device: str) -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return f"tensorrt is not installed ({BACKENDS['tensorrt'].install})"
    return None if torch.cuda.is_available() else "no CUDA device"


def open(source: Path, device: str, precision: str, setting: Setting) -> TensorRTBackend:
    return TensorRTBackend(Path(source), precision, setting)


def build(source: Path, dst: Path, precision: str, options: BuildOptions) -> dict[str, Any]:
    """The loader: an engine for the ONNX graph `source` (its precision is the graph's), tuned for the options'
    batches, with the timing cache kept in their cache folder; the record's extra fields."""
    cfg = EngineConfig(options.max_batch, options.workspace_gib, options.opt_batches)
    cache = options.cache_dir / "timing.cache" if options.cache_dir is not None else None
    version, cache_status = build_engine(Path(source), dst, cfg, timing_cache=cache)
    extra = {"max_batch": options.max_batch, "profiles": cfg.profiles(), "tensorrt": version}
    return {**extra, "timing_cache": cache_status, "gpu": torch.cuda.get_device_name()}


@dataclass
class _Bound:
    """One input shape's execution context, static device buffers and (with CUDA graphs) captured graph."""

    context: Any
    input: torch.Tensor
    output: torch.Tensor
    graph: torch.cuda.CUDAGraph | None = None


class TensorRTBackend(Backend):
    """A serialized TensorRT engine, run on torch CUDA tensors through its named I/O tensors.

    Each batch runs under the optimization profile whose range holds it (gtcompress builds one per tuned batch
    size); batches larger than the engine allows are run in slices of its maximum batch. Each input shape gets
    its own execution context and static buffers, so a captured graph's addresses and shapes never change.
    """

    name = "tensorrt"
    device = "cuda"

    def __init__(self, path: Path, precision: str, setting: Setting = Setting()):
        trt = require_tensorrt()
        self.trt, self.path, self.precision, self.setting = trt, Path(path), precision, setting
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise UserError(
                f"TensorRT cannot load {self.path.name} (built by another TensorRT version or for another GPU)",
                "rebuild it here with gtcompress export --trt",
            )
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise UserError(
                f"{self.path.name} has {len(inputs)} inputs and {len(outputs)} outputs",
                "use an engine of a classifier built by gtcompress export --trt",
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.profiles = [
            (int(lo[0]), int(hi[0]))
            for lo, _, hi in (
                self.engine.get_tensor_profile_shape(self.input_name, i)
                for i in range(self.engine.num_optimization_profiles)
            )
        ]
        self.max_batch = max(hi for _, hi in self.profiles)
        self.stream = torch.cuda.Stream()
        self.bound: dict[tuple[int, ...], _Bound] = {}

    def close(self) -> None:
        """Release the execution contexts, their buffers and graphs, and the engine."""
        self.bound.clear()
        self.engine = self.runtime = None

    def _dtype(self, name: str) -> torch.dtype:
        trt = self.trt
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16}
        dtypes.update({trt.int32: torch.int32, trt.int8: torch.int8})
        return dtypes[self.engine.get_tensor_dtype(name)]

    def infer(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self._infer(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])

    def _infer(self, x: np.ndarray) -> np.ndarray:
        bound = self.bound.get(x.shape) or self._bind(x.shape)
        with torch.cuda.stream(self.stream):
            bound.input.copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            if bound.graph is not None:
                bound.graph.replay()
            else:
                self._execute(bound.context)
            out = bound.output.float().cpu()
        return out.numpy()

    def _execute(self, context: Any) -> None:
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed: {'; '.join(self.logger.errors) or 'no message'}")

    def _bind(self, shape: tuple[int, ...]) -> _Bound:
        """A context for `shape` under the profile that holds its batch, its static buffers, one run to warm up,
        and with CUDA graphs the capture of the next."""
        context = self.engine.create_execution_context()
        with torch.cuda.stream(self.stream):
            context.set_optimization_profile_async(_profile_for(self.profiles, shape[0]), self.stream.cuda_stream)
            if not context.set_input_shape(self.input_name, tuple(shape)):
                raise UserError(
                    f"the engine does not accept input shape {tuple(shape)}", "rebuild it for this image size"
                )
            inp = torch.zeros(shape, dtype=self._dtype(self.input_name), device="cuda")
            out_shape = tuple(context.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=self._dtype(self.output_name), device="cuda")
            context.set_tensor_address(self.input_name, inp.data_ptr())
            context.set_tensor_address(self.output_name, out.data_ptr())
            self._execute(context)  # the first run after a shape change does its own setup: not capturable
        self.stream.synchronize()
        bound = _Bound(context, inp, out)
        if self.setting.cuda_graph:
            bound.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(bound.graph, stream=self.stream):
                self._execute(context)
        self.bound[tuple(shape)] = bound
        return bound


def _profile_for(profiles: list[tuple[int, int]], batch: int) -> int:
    """The index of the (min, max) batch range that holds `batch`."""
    return next(i for i, (low, high) in enumerate(profiles) if low <= batch <= high)


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
        write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
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
