"""Validate a papermill parameter file against a notebook's ``parameters`` cell, before any compute.

``python -m disback.params NOTEBOOK.ipynb PARAMS.yaml`` exits 0 silently, or prints one line per problem
(unknown key, wrong type, bad config field) to stderr and exits 2.

The type a parameter takes is its annotation when the cell has one (``num_eval: int = 500``), else the type
of its literal default (``num_eval = 500``): int, float, str, bool, list or dict. An int is accepted where a
float is expected, never the reverse; a ``None`` or non-literal default accepts anything. The dicts
``teacher_config``, ``degrade_config`` and ``distill_config`` must also build their config dataclass (``from_dict``).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import nbformat
import papermill
import yaml

from .config import DegradeConfig, DistillConfig, TeacherConfig

CONFIG_PARAMS = {"teacher_config": TeacherConfig, "degrade_config": DegradeConfig, "distill_config": DistillConfig}
TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict}


def expected_type(spec: dict) -> type | None:
    """The type a parameter takes, from papermill's description of it; ``None`` accepts anything."""
    annotation = (spec.get("inferred_type_name") or "None").split("[")[0].lower()
    if annotation != "none":
        return TYPES.get(annotation)
    try:
        default = ast.literal_eval(spec["default"])
    except (ValueError, SyntaxError):
        return None
    return list if isinstance(default, tuple) else TYPES.get(type(default).__name__)


def type_ok(value, kind: type | None) -> bool:
    if kind is None:
        return True
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def _yaml_hint(values) -> str:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: say so when a string looks like a number."""
    for v in values:
        try:
            if isinstance(v, str) and not isinstance(yaml.safe_load(v), (int, float)):
                float(v)
                return f" (YAML reads {v} as a string; write it with a dot, e.g. {float(v)!r})"
        except (ValueError, yaml.YAMLError):
            continue
    return ""


def unparsed_parameters(notebook, declared: dict) -> list[str]:
    """Names assigned in the parameters cell that papermill could not parse (it would silently ignore them)."""
    cell = next(c for c in nbformat.read(str(notebook), as_version=4).cells
                if "parameters" in c.get("metadata", {}).get("tags", []))
    names = [t.id for node in ast.parse(cell.source).body if isinstance(node, (ast.Assign, ast.AnnAssign))
             for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]
    return [f"{notebook}: papermill cannot parse the parameters-cell line of {n!r} (an '=' or a quote in its "
            f"comment?), so a value given for it would be ignored; fix the notebook" for n in names if n not in declared]


def check(notebook, params: dict) -> list[str]:
    """Problems of ``params`` for ``notebook`` (empty when fine)."""
    declared = papermill.inspect_notebook(str(notebook))
    if not declared:
        return [f"{notebook} has no cell tagged 'parameters'; it takes no parameters"]
    problems = unparsed_parameters(notebook, declared)
    for key, value in params.items():
        if key not in declared:
            problems.append(f"{key}: unknown parameter; {notebook} takes {sorted(declared)}")
            continue
        kind = expected_type(declared[key])
        if not type_ok(value, kind):
            problems.append(f"{key}={value!r}: must be of type {kind.__name__} like the default "
                            f"{declared[key]['default']}{_yaml_hint([value])}")
        elif key in CONFIG_PARAMS and isinstance(value, dict):
            try:
                CONFIG_PARAMS[key].from_dict(value)
            except (ValueError, TypeError) as e:
                problems.append(f"{key}: {e}{_yaml_hint(value.values())}")
    return problems


def check_files(notebook, params_file) -> list[str]:
    """Problems of the YAML file ``params_file`` for ``notebook``, including unreadable files."""
    for f, what in ((notebook, "notebook"), (params_file, "parameter file")):
        if not Path(f).is_file():
            return [f"{f}: no such {what}"]
    try:
        params = yaml.safe_load(Path(params_file).read_text())
    except yaml.YAMLError as e:
        return [f"{params_file}: not valid YAML: {' '.join(str(e).split())}"]
    if params is None:
        return []
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        return [f"{params_file}: must be a mapping of parameter names to values; got {type(params).__name__}"]
    return [f"{params_file}: {p}" for p in check(notebook, params)]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m disback.params NOTEBOOK.ipynb PARAMS.yaml", file=sys.stderr)
        return 2
    problems = check_files(*argv)
    for p in problems:
        print(p, file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
