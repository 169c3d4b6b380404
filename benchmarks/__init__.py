"""The benchmark scripts, one module each: run one as `python -m benchmarks.<name>` from the repository root.

They are a package so that the grids share `grid.py` and the tests import them as they are, without path edits.
"""
