"""Run by ``test_parallel.py`` under ``torchrun --nproc_per_node 2``: both stages on a tiny teacher, data-parallel.

    torchrun --standalone --nproc_per_node 2 tests/parallel_worker.py TEACHER_DIR OUT_DIR

Writes OUT_DIR/degrade (stage 1), OUT_DIR/distill (stage 2 along that path) and OUT_DIR/preempted (stage 2 stopped by
an exception at update ``STOP_AT`` on every rank, as a preempted job would be: its last checkpoint stays behind).
The test runs the same configs on one process and compares.
"""
import importlib
import sys
from pathlib import Path

import torch

from disback import DegradeConfig, DistillConfig, parallel, record_degradation
from disback.teachers import load_teacher

loop = importlib.import_module("disback.distill")  # the module (the package exports its function ``distill``)

# Global batch 8 = 2 processes x 4. Stage 2 uses every per-step draw: labels, several fake-score steps, DMD's
# regression pairs (indices into them), EMA, a backtracking schedule, checkpoints.
DEGRADE = DegradeConfig(iters=6, num_nodes=2, batch=8, ckpt_every=3)
DISTILL = DistillConfig(method="dmd2", backtrack=True, iters=4, iters_per_node=1, batch=8, fake_steps=2,
                        reg_weight=0.25, reg_pairs=8, ema=0.5, eval_every=0, ckpt_every=2)
PREEMPTED = DistillConfig(method="sid", iters=5, batch=8, eval_every=0, ckpt_every=2)
STOP_AT = 4  # the preempted run raises at this update; its checkpoint holds update 2


class Preempted(RuntimeError):
    pass


def stop_at(step_fn, stop: int):
    def step(*args, **kwargs):
        if args[6] == stop:  # generator_step(generator, optimizer, target, fake_score, config, rng, step, ...)
            raise Preempted(f"stopped at update {stop}")
        return step_fn(*args, **kwargs)
    return step


def main(teacher_dir, out) -> None:
    torch.set_num_threads(1)
    out = Path(out)
    teacher = load_teacher(teacher_dir)
    path = record_degradation(teacher, DEGRADE, out / "degrade", progress=False)
    loop.distill(teacher, DISTILL, out / "distill", path=path, progress=False)
    loop.generator_step = stop_at(loop.generator_step, STOP_AT)
    try:
        loop.distill(teacher, PREEMPTED, out / "preempted", progress=False)
    except Preempted:
        pass
    else:
        raise AssertionError("the preempted run was not stopped")
    parallel.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
