"""The package stays readable: no function over 60 lines and no module over 450 in gtcompress/."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gtcompress"
MODULES = sorted(PACKAGE.rglob("*.py"))
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 450


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_length(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}() has {length} lines"


def test_the_readmes_development_layout_names_every_module():
    """The README's map of the package is the tree: every module is named in it (a runner by its pattern)."""
    readme = (ROOT / "README.md").read_text()
    layout = " ".join(
        readme[readme.index("The package reads like the pipeline") : readme.index("Where things go")].split()
    )
    modules = [m for m in MODULES if not m.stem.startswith("__") and not m.stem.endswith("_runner")]
    assert not [m.name for m in modules if not re.search(rf"\b{m.stem}\b", layout)]
    assert "one runner module per runtime" in layout


def test_the_check_sees_the_whole_package():
    assert {"cli.py", "pipeline.py", "stages.py", "exporter.py"} <= {p.name for p in MODULES}


# Helpers that read meaning back out of a name (a stage's from its suffix, a precision from a file name), gone
# since stages and artefacts carry their identity as fields.
NAME_PARSERS = ("parse_artefact_name", "sibling(", "_base(", "is_stage(", 'startswith("student', "split('.')[0]")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_stage_or_precision_is_parsed_from_a_name(path):
    source = path.read_text()
    assert not [p for p in NAME_PARSERS if p in source]


# What a runner of a kind of artefact takes (the model loaded from a checkpoint, or an exported file's path) is the
# backend registry's typed `Kind`: outside backends/, no code branches on a kind's name.
KIND_BY_NAME = re.compile(
    "|".join(
        (
            r"""\.(artefact|kind|format)(\.name)?\s*[!=]=\s*["']""",  # spec.artefact == "x", record.format != "x"
            r"""\bkind(\.name)?\s*[!=]=\s*["'](checkpoint|onnx|engine)["']""",
            r"""[!=]=\s*["'](checkpoint|engine)["']""",  # not "onnx": a loader is built from the model or "onnx"
            r"""["'](checkpoint|onnx|engine)["']\s*[!=]=""",
        )
    )
)
OUTSIDE_BACKENDS = [m for m in MODULES if m.relative_to(PACKAGE).parts[0] != "backends"]


@pytest.mark.parametrize("path", OUTSIDE_BACKENDS, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_artefact_kind_is_compared_with_its_name_outside_the_backends(path):
    lines = path.read_text().splitlines()
    assert not [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(lines, 1) if KIND_BY_NAME.search(line)]


# The run's files, each named once: in rundir.py, whose RunDir reads and writes them (prose may name them).
RUN_FILES = ('"config.yaml"', '"metrics.json"', '"history.jsonl"', '"bench.json"', '"candidates.json"', "'bench.json'")


@pytest.mark.parametrize("path", MODULES + BENCHMARKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_run_files_are_named_only_by_the_run_directory(path):
    if path.name == "rundir.py":
        assert all(name in path.read_text() for name in RUN_FILES[:-1])
        return
    assert not [name for name in RUN_FILES if name in path.read_text()]


OURS = ("gtcompress", "benchmarks")


def _imported_names(path: Path) -> list[tuple[int, str, str]]:
    """Every `from gtcompress... import name` (and benchmarks...) in a file, in-function ones included."""
    return [
        (node.lineno, node.module, alias.name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in OURS
        for alias in node.names
    ]


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_name_the_benchmarks_import_from_the_package_exists(path):
    """A benchmark imports most of the package inside the function that needs it; a rename must not leave it
    importing what is gone (the scripts run for hours before they reach that line)."""
    missing = []
    for line, module, name in _imported_names(path):
        found = importlib.import_module(module)
        if not hasattr(found, name) and importlib.util.find_spec(f"{module}.{name}") is None:
            missing.append(f"{path.name}:{line} {module}.{name}")
    assert not missing


# The package's floors, lowest first: a module imports only from its own floor or below. The pipeline's order,
# with what everything shares beneath it (backends below config, whose budget names them).
LAYERS = (
    ("__init__", "errors", "files", "terminal", "environment", "typed", "losses"),
    ("backends", "backends.torch_runner", "backends.onnxruntime_runner", "backends.openvino_runner",
     "backends.tensorrt_runner"),
    ("config",),
    ("records",),
    ("rundir",),
    ("distributed", "stream", "timmdata"),
    ("data",),
    ("models", "qat"),
    ("objectives", "logit_scale"),
    ("stages",),
    ("train",),
    ("evaluate",),
    ("export", "export.diagnose", "export.graph", "export.precisions", "export.sidecar", "export.triton"),
    ("settings", "export.source"),
    ("export.exporter",),
    ("timing",),
    ("candidates",),
    ("resolve",),
    ("pipeline",),
    ("bench",),
    ("recommend", "tables", "plots"),
    ("report",),
    ("card",),
    ("publish", "repair"),
    ("workflow",),
    ("options",),
    ("cli", "__main__"),
)  # fmt: skip
FLOOR = {module: i for i, floor in enumerate(LAYERS) for module in floor}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _imports(path: Path) -> set[str]:
    """The gtcompress modules a module imports (a name imported from a package counts as that package)."""
    package = _module(path).split(".")[: -1 if path.name != "__init__.py" else None]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module or "").split(".")]).strip(".") or "__init__"
            found.add(target if target in FLOOR else target.rsplit(".", 1)[0])
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_floor_above_its_own(path):
    module = _module(path)
    assert module in FLOOR, f"{module} is on no floor: place it in LAYERS"
    above = sorted(m for m in _imports(path) if FLOOR[m] > FLOOR[module])
    assert not above, f"{module} imports {above} from above its floor"


def test_backends_import_neither_models_nor_export():
    for path in (PACKAGE / "backends").glob("*.py"):
        assert not {m for m in _imports(path) if m == "models" or m.startswith("export")}, path.name
