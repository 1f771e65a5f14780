"""Writing results: metrics JSON, tables as CSV + Markdown. Paths are relative to ``results/<profile>/``."""
from __future__ import annotations

import csv
from pathlib import Path

from .checkpoint import write_json


def save_metrics(path, obj: dict) -> Path:
    """Atomically write ``obj`` as sorted, indented JSON; returns the path."""
    write_json(path, obj)
    return Path(path)


def fmt_number(v) -> str:
    """A float to 4 significant digits (``0.1235``, ``1.235e+04``); anything else as ``str``."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of same-keyed dicts, columns in the first row's key order, floats by ``fmt_number``."""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt_number(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save_table(rows: list[dict], stem) -> list[Path]:
    """Write ``stem.csv`` and ``stem.md`` from a list of same-keyed dicts."""
    if not rows:
        raise ValueError("save_table: rows is empty")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    stem.with_suffix(".md").write_text(markdown_table(rows))
    return [stem.with_suffix(".csv"), stem.with_suffix(".md")]
