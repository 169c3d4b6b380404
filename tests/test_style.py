"""The package stays readable: no function over 60 lines and no module over 450 in gtcompress/."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gtcompress"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 60, 450


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_and_function_length(path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_MODULE_LINES, f"{path.name} has {len(source.splitlines())} lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.name}:{node.lineno} {node.name}() has {length} lines"


def test_the_check_sees_the_whole_package():
    assert {"cli.py", "pipeline.py", "stages.py", "exporter.py"} <= {p.name for p in MODULES}


# Helpers that read meaning back out of a name (a stage's from its suffix, a precision from a file name), gone
# since stages and artefacts carry their identity as fields.
NAME_PARSERS = ("parse_artefact_name", "sibling(", "_base(", "is_stage(", 'startswith("student', "split('.')[0]")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_stage_or_precision_is_parsed_from_a_name(path):
    source = path.read_text()
    assert not [p for p in NAME_PARSERS if p in source]


# The run's files, each named once: in rundir.py, whose RunDir reads and writes them (prose may name them).
RUN_FILES = ('"config.yaml"', '"metrics.json"', '"history.jsonl"', '"bench.json"', '"candidates.json"', "'bench.json'")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_run_files_are_named_only_by_the_run_directory(path):
    if path.name == "rundir.py":
        assert all(name in path.read_text() for name in RUN_FILES[:-1])
        return
    assert not [name for name in RUN_FILES if name in path.read_text()]
