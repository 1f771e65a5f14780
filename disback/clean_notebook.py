"""Make an executed notebook safe to commit and diff: no path of the machine it ran on.

``python -m disback.clean_notebook NOTEBOOK`` rewrites the file in place: absolute paths of the repository, the
virtual environment and the home folder in outputs and papermill's metadata become relative placeholders
(``<repo>``, ``<venv>``, ``~``), and empty stream outputs are dropped. The Makefile runs it on every notebook
that ``make reproduce`` executes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _replacements() -> list[tuple[str, str]]:
    pairs = [(str(Path(sys.prefix).resolve()), "<venv>"), (sys.prefix, "<venv>"), (str(REPO), "<repo>"),
             (str(Path.home()), "~")]
    return sorted({(a, b) for a, b in pairs if a and a != "/"}, key=lambda p: -len(p[0]))


def scrub(text: str) -> str:
    """``text`` with the machine's absolute paths replaced by placeholders."""
    for path, placeholder in _replacements():
        text = text.replace(path, placeholder)
    return text


def _scrub(obj):
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    return obj


def clean(nb: dict) -> dict:
    """The notebook with paths scrubbed from outputs and metadata and empty stream outputs removed."""
    for cell in nb.get("cells", []):
        if "outputs" in cell:
            cell["outputs"] = [_scrub(o) for o in cell["outputs"]
                               if not (o.get("output_type") == "stream" and not "".join(o.get("text", "")).strip())]
    nb["metadata"] = _scrub(nb.get("metadata", {}))
    return nb


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook")
    args = ap.parse_args(argv)
    clean_file(args.notebook)


def clean_file(notebook) -> Path:
    """Rewrite the notebook file in place with ``clean`` (atomically: a reader never sees half a file)."""
    path = Path(notebook)
    if not path.is_file():
        raise SystemExit(f"{path}: no such notebook")
    nb = clean(json.loads(path.read_text()))
    tmp = path.with_name(f".{path.name}.clean{os.getpid()}")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    main()
