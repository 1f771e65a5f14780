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


def _columns(rows: list[dict]) -> list:
    """Every key of ``rows`` in first-seen order (rows may leave some columns empty)."""
    return list(dict.fromkeys(k for r in rows for k in r))


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table of dicts, columns in first-seen key order, floats by ``fmt_number``."""
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt_number(r.get(c, "")) for c in cols) + " |" for r in rows]
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
