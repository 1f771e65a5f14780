"""Writing results: metrics JSON, tables as CSV + Markdown. Paths are relative to ``results/<profile>/``."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from .checkpoint import write_json


def results_dir(root, profile: str) -> Path:
    d = Path(root) / profile
    for sub in ("metrics", "tables", "figures"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    return d


def save_metrics(path, obj: dict) -> Path:
    write_json(path, obj)
    return Path(path)


def load_metrics(path) -> dict:
    return json.loads(Path(path).read_text())


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _columns(rows: list[dict]) -> list:
    """Every key of ``rows`` in first-seen order (rows may leave some columns empty)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def markdown_table(rows: list[dict]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save_table(rows: list[dict], stem) -> list[Path]:
    """Write ``stem.csv`` and ``stem.md`` from a list of dicts (a missing key is an empty cell)."""
    if not rows:
        raise ValueError("save_table: rows is empty")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_columns(rows))
        w.writeheader()
        w.writerows(rows)
    stem.with_suffix(".md").write_text(markdown_table(rows))
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]
