"""Stage 1, Degradation Recording: fine-tune a copy of the teacher toward the frozen initial generator.

The loop is the fake-score step alone (``steps.fake_score_step``, the one stage 2 uses too), run against
G0's samples; nodes are saved at the steps given by ``path.node_steps``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from . import parallel
from .checkpoint import ArtifactError, RunLog, TrainingState, fingerprint, write_json
from .config import DegradeConfig, check_config
from .generator import check_teacher_module, frozen_copy, make_generator, trainable_copy
from .path import MANIFEST, DegradationPath, PathWriter, node_steps
from .progress import bar as progress_bar
from .runlock import check_run_dir, locks_run_dir
from .steps import adam, fake_score_step


@locks_run_dir
def record_degradation(teacher, config: DegradeConfig, run_dir, progress: bool = True) -> DegradationPath:
    """Record the degradation path of ``teacher`` toward its one-step generator G0 into ``run_dir/path``."""
    check_teacher_module(teacher)
    check_config(config, DegradeConfig)
    run_dir = check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main = parallel.is_main()  # Parallel runs: see disback.parallel; only the main process writes files.
    if main:
        write_json(run_dir / "config.json", config.to_dict())
    device = parallel.device(teacher)
    torch.manual_seed(parallel.rank_seed(config.seed))
    rng = torch.Generator().manual_seed(config.seed)
    generator0 = frozen_copy(make_generator(teacher, config.sigma_init)).to(device)  # G0: frozen throughout stage 1
    degraded = trainable_copy(teacher).to(device).train().requires_grad_(True)      # s'_theta, starts as the teacher
    opt = adam(degraded.parameters(), config.lr)
    teacher_fp = fingerprint(teacher)
    state = TrainingState(run_dir, f"{config.hash()}-{teacher_fp[:16]}")
    meta = state.load({"degraded": degraded}, {"degraded": opt}, rng)
    if meta is None and config.ckpt_every:  # Save step 0 before the path folder exists: a kill from here on resumes.
        if any((run_dir / "path").glob("*")):
            raise ArtifactError(f"{run_dir / 'path'} already holds a path but {run_dir} has no training state; "
                                f"record into an empty folder")
        parallel.barrier()  # every rank has looked at the folder before the main process writes to it
        if main:
            state.save(0, {"degraded": degraded}, {"degraded": opt}, rng)
        meta = {"step": 0}
    start = meta["step"] if meta else 0
    saves = node_steps(config.iters, config.num_nodes, config.spacing)
    writer = PathWriter(run_dir / "path", config.to_dict(), teacher_fp, resume_step=start if meta else None,
                        write=main)
    log = RunLog(run_dir / "log.jsonl", start, write=main)
    if not writer.manifest["nodes"]:
        writer.add(degraded, 0)  # node 0 is the teacher itself
    bar = progress_bar(range(start, config.iters), desc="degradation", disable=not progress or not main,
                       initial=start, total=config.iters)
    for step in bar:
        parallel.seed_update(config.seed, step + 1)  # dropout masks: a function of (seed, rank, update) alone
        loss = fake_score_step(degraded, opt, generator0, config.batch, config.p_mean, config.p_std, rng,
                               step + 1, run_dir, config.bf16)
        record = {"step": step + 1, "loss_fake": loss}
        if step + 1 in saves:  # Save node.
            writer.add(degraded, step + 1)
            record["node"] = len(writer.manifest["nodes"]) - 1
        log.write(record)
        bar.set_postfix(loss=f"{loss:.4f}", nodes=len(writer.manifest["nodes"]), refresh=False)
        if config.ckpt_every and ((step + 1) % config.ckpt_every == 0 or step + 1 == config.iters):
            parallel.check_in_sync({"degraded": degraded})
            if main:
                state.save(step + 1, {"degraded": degraded}, {"degraded": opt}, rng)
    parallel.barrier()  # the main process has written the whole path
    if not (run_dir / "path" / MANIFEST).is_file():
        raise RuntimeError(f"{run_dir / 'path'}: no manifest written")
    return DegradationPath.load(run_dir / "path")
