"""Validate a papermill parameter file against a notebook's ``parameters`` cell, before any compute.

``python -m disback.params NOTEBOOK.ipynb PARAMS.yaml`` exits 0 silently, or prints one line per problem
(unknown key, wrong type, bad config field) and exits 2.
"""
from __future__ import annotations

import ast
import sys

import papermill
import yaml

from .config import DegradeConfig, DistillConfig, TeacherConfig

CONFIG_PARAMS = {"teacher": TeacherConfig, "degrade": DegradeConfig, "distill": DistillConfig}


def _kind(value):
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def check(notebook: str, params: dict) -> list[str]:
    """Problems of ``params`` for ``notebook`` (empty when fine)."""
    declared = papermill.inspect_notebook(notebook)
    problems = []
    for key, value in params.items():
        if key not in declared:
            problems.append(f"{key}: unknown parameter; {notebook} takes {sorted(declared)}")
            continue
        default = ast.literal_eval(declared[key]["default"])
        if _kind(value) != _kind(default):
            problems.append(f"{key}={value!r}: must be a {_kind(default)} like the default {default!r}")
        elif key in CONFIG_PARAMS:
            try:
                CONFIG_PARAMS[key].from_dict(value)
            except ValueError as e:
                problems.append(f"{key}: {e}")
    return problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m disback.params NOTEBOOK.ipynb PARAMS.yaml", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        params = yaml.safe_load(f) or {}
    problems = check(argv[0], params)
    for p in problems:
        print(f"{argv[1]}: {p}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
