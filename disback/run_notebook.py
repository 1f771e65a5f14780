"""Execute one notebook with one parameter file, as ``make reproduce`` does, in a single process.

``python -m disback.run_notebook NOTEBOOK.ipynb PARAMS.yaml OUT.ipynb --profile cpu [--log FILE]`` checks the
parameters (``disback.params``), runs the notebook with papermill on the ``disback`` kernel from ``notebooks/``,
scrubs the machine's paths (``disback.clean_notebook``) and only then moves the result to ``OUT`` (a failed or
interrupted run never leaves a finished-looking notebook). It replaces three processes per notebook (checker,
papermill's command line, cleaner): each paid the imports again, ~15 s a notebook on a 2-core machine.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

# jsonschema (under nbformat) builds an IRI grammar at import when rfc3987-syntax is installed (a JupyterLab
# dependency): ~2 s a process here. Notebook validation never checks IRI formats, so it is not loaded.
sys.modules.setdefault("rfc3987_syntax", None)

import papermill  # noqa: E402
import yaml  # noqa: E402

from .clean_notebook import clean_file  # noqa: E402
from .params import check_files  # noqa: E402

KERNEL = "disback"


def run(notebook, params_file, out, profile: str, log=None, cwd="notebooks", kernel: str = KERNEL) -> Path:
    """Execute ``notebook`` with ``params_file`` (plus ``profile``) into ``out``; raises ``SystemExit`` with the
    parameter problems, or papermill's error after the executed copy's failing cell has been kept next to ``out``."""
    problems = check_files(notebook, params_file)
    if problems:
        raise SystemExit("\n".join(problems))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if log:
        Path(log).parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    params = {**(yaml.safe_load(Path(params_file).read_text()) or {}), "profile": profile}
    handler = logging.FileHandler(log, mode="w") if log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("papermill")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        papermill.execute_notebook(str(notebook), str(tmp), parameters=params, kernel_name=kernel,
                                   progress_bar=False, cwd=cwd)
    finally:
        logger.removeHandler(handler)
        handler.close()
    clean_file(tmp)
    os.replace(tmp, out)
    return out


def _plain(lines) -> str:
    """Traceback lines without the terminal's colour codes."""
    return re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook")
    ap.add_argument("params")
    ap.add_argument("out")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--log", default=None, help="papermill's log (default: stderr)")
    ap.add_argument("--cwd", default="notebooks", help="the kernel's working folder")
    args = ap.parse_args(argv)
    try:
        run(args.notebook, args.params, args.out, args.profile, args.log, args.cwd)
    except papermill.PapermillExecutionError as e:
        print(f"{args.notebook} with {args.params} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
              f"{_plain(e.traceback[-3:] if e.traceback else [])}\n(the executed copy up to that cell: "
              f"{Path(args.out).with_name('.' + Path(args.out).stem + '.tmp.ipynb')})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
