"""Command line for one training stage, on one process or data-parallel under ``torchrun``.

    python -m disback.train degrade TEACHER RUN_DIR [--config FILE] [--set key=value ...]
    python -m disback.train distill TEACHER RUN_DIR [--path RUN_DIR/path] [--config FILE] [--set key=value ...]
    torchrun --standalone --nproc_per_node 8 -m disback.train distill TEACHER RUN_DIR ...

``TEACHER`` is a folder written by ``teachers.save_teacher`` (``teacher.json``) or by ``python -m disback
convert-teacher`` (``edm_teacher.json``). ``--config`` is a JSON or YAML mapping of ``DegradeConfig`` /
``DistillConfig`` fields (a run's own ``config.json`` works); ``--set`` overrides single fields. ``batch`` is the
global batch: it must be divisible by the number of processes. Rerunning the same command resumes from the run
folder's checkpoint at any such number. Metrics are not computed here: keep generator snapshots
(``--set snapshot_every=N``) and evaluate them afterwards with ``distill.load_snapshot``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

from . import parallel
from .checkpoint import fingerprint
from .config import DegradeConfig, DistillConfig
from .teachers import load_teacher


def _number(value):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: take such a string as the float it spells."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def read_config(cls, file, overrides) -> DegradeConfig | DistillConfig:
    """``cls`` from a JSON/YAML ``file`` (its ``schedule`` entry, written by ``distill``, is dropped) and
    ``key=value`` overrides, values parsed as YAML scalars."""
    fields = {}
    if file:
        fields = yaml.safe_load(Path(file).read_text()) or {}
        if not isinstance(fields, dict):
            raise ValueError(f"--config {file}: must hold a mapping of {cls.__name__} fields")
        fields.pop("schedule", None)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: must be key=value")
        fields[key] = yaml.safe_load(value)
    return cls.from_dict({k: _number(v) for k, v in fields.items()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disback.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("degrade", "distill"))
    parser.add_argument("teacher", help="teacher folder (teacher.json or edm_teacher.json)")
    parser.add_argument("run_dir", help="run folder: checkpoints, log.jsonl, config.json (and path/ for degrade)")
    parser.add_argument("--path", help="degradation path folder (distill with backtrack or fake_from_path)")
    parser.add_argument("--config", help="JSON or YAML file of config fields")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config fields")
    parser.add_argument("--device", default="auto", help="auto (this rank's GPU if any, else cpu), cpu or cuda")
    args = parser.parse_args(argv)
    w = parallel.world()
    try:
        return _run(args, w)
    finally:
        parallel.shutdown()


def _run(args, w: parallel.World) -> int:
    from .degrade import record_degradation
    from .distill import distill
    from .path import DegradationPath

    teacher = load_teacher(args.teacher)
    want = args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    teacher = teacher.to(f"cuda:{w.local_rank}" if want == "cuda" else want)
    show = w.is_main
    if args.stage == "degrade":
        config = read_config(DegradeConfig, args.config, args.set)
        path = record_degradation(teacher, config, args.run_dir, progress=show)
        summary = f"{path.num_nodes + 1} nodes in {path.root}"
    else:
        config = read_config(DistillConfig, args.config, args.set)
        path = DegradationPath.load(args.path) if args.path else None
        result = distill(teacher, config, args.run_dir, path=path, progress=show)
        summary = f"generator {fingerprint(result.generator)[:16]} in {result.run_dir}"
    if show:
        print(f"{args.stage}: {config.iters} steps of global batch {config.batch} on {w.size} process(es); {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
