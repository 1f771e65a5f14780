"""Stage 2 and every baseline: one score-distillation loop whose target follows a ``TargetSchedule``.

DisBack (``backtrack``) = this loop with the reversed degradation path as schedule and the fake score
initialised from the path's last node. A baseline (``distill``) = the same loop with the teacher as the
constant target and the fake score initialised from the teacher. Nothing else differs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .checkpoint import ArtifactError, RunLog, TrainingState, check_finite, fingerprint, write_json
from .config import DistillConfig
from .runlock import locks_run_dir
from .degrade import draw_latents, fake_score_step
from .diffusion import sample_sigma
from .generator import EMA, frozen_copy, make_generator
from .losses import generator_loss
from .path import DegradationPath, TargetSchedule

# Forward network evaluations per sample: a fake-score step runs G and the fake score; a generator step
# runs G, the fake score and the target.
NFE_FAKE_STEP, NFE_GEN_STEP = 2, 3


@dataclass
class DistillResult:
    generator: torch.nn.Module    # the trained one-step generator (its EMA if config.ema > 0)
    fake_score: torch.nn.Module   # the fake score at the end of training
    log: list                     # one record per generator update (and step 0): losses, active node, metrics
    schedule: TargetSchedule
    config: DistillConfig
    run_dir: Path


def make_schedule(config: DistillConfig, path: DegradationPath | None) -> TargetSchedule:
    """The target schedule a config asks for: backtracking over ``path``, or the constant teacher."""
    if not config.backtrack:
        return TargetSchedule.constant()
    if path is None:
        raise ValueError("backtrack=True: needs a DegradationPath (record one with record_degradation)")
    return TargetSchedule.backtracking(path.num_nodes, config.iters_per_node, config.iters)


def _check_path(teacher, path: DegradationPath, config: DistillConfig) -> None:
    path.check_teacher(teacher)
    if float(path.config["sigma_init"]) != config.sigma_init:
        raise ArtifactError(f"sigma_init={config.sigma_init!r}: the path was recorded for a generator with "
                            f"sigma_init={path.config['sigma_init']}; they must match")


@locks_run_dir
def distill(teacher, config: DistillConfig, run_dir, path: DegradationPath | None = None,
            metric_fn: Callable[[torch.nn.Module], dict] | None = None, progress: bool = True,
            probe_fn: Callable[..., dict] | None = None) -> DistillResult:
    """Train a one-step generator from ``teacher`` by score distillation; resumes from ``run_dir`` if it holds a state.

    ``metric_fn(generator)`` is logged as ``metrics`` at step 0, every ``eval_every`` updates and at the end.
    ``probe_fn(generator=, fake=, target=, node=, step=, seed=)`` is logged as ``probe`` at the same steps: it sees the
    training internals (e.g. to measure the mismatch between the target's and the fake score). Neither may draw
    from the training RNG, so they never change the run.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = make_schedule(config, path)
    if config.backtrack:
        _check_path(teacher, path, config)
    write_json(run_dir / "config.json", {**config.to_dict(), "schedule": {
        "nodes": list(schedule.nodes), "switch_steps": list(schedule.switch_steps)}})
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)

    generator = make_generator(teacher, config.sigma_init).train()
    fake = copy.deepcopy(teacher).train().requires_grad_(True)
    if config.backtrack:  # s_phi starts at the last node, which already fits G0.
        path.load_node(path.num_nodes, fake)
    target = frozen_copy(teacher)
    ema = EMA(generator, config.ema) if config.ema > 0 else None
    opt_gen = torch.optim.Adam(generator.parameters(), lr=config.lr_gen)
    opt_fake = torch.optim.Adam(fake.parameters(), lr=config.lr_fake)
    modules = {"generator": generator, "fake": fake, **({"ema": ema.module} if ema else {})}
    optimizers = {"generator": opt_gen, "fake": opt_fake}

    state = TrainingState(run_dir, f"{config.hash()}-{fingerprint(teacher)[:16]}")
    meta = state.load(modules, optimizers, rng)
    start = meta["step"] if meta else 0
    nfe = meta["extra"]["nfe"] if meta else 0
    log = RunLog(run_dir / "log.jsonl", start)
    eval_gen = ema.module if ema else generator
    active = schedule.node_at(start - 1) if start else 0  # the node the target holds (0 = the teacher)
    if active:  # Resumed on an intermediate node: restore it as the target, logging no switch.
        path.load_node(active, target)

    def evaluate(step: int, node: int) -> dict:
        out = {"metrics": metric_fn(eval_gen)} if metric_fn else {}
        if probe_fn:
            out["probe"] = probe_fn(generator=eval_gen, fake=fake, target=target, node=node, step=step,
                                    seed=config.seed)
        return out

    if start == 0:
        first = schedule.node_at(0)
        if probe_fn and first:  # the probe at step 0 sees the first target; the loop then switches to it as usual
            path.load_node(first, target)
        log.write({"step": 0, "node": first, "nfe": 0, **evaluate(0, first)})
        if probe_fn and first:
            target.load_state_dict(teacher.state_dict())
    bar = tqdm(range(start, config.iters), desc=f"{config.method}{'+disback' if config.backtrack else ''}",
               disable=not progress, initial=start, total=config.iters)
    for step in bar:
        # Switch target.
        node = schedule.node_at(step)
        if node != active:
            if node == 0:
                target.load_state_dict(teacher.state_dict())
            else:
                path.load_node(node, target)
            active = node
            switched = fingerprint(target)[:16]  # logged: proves the target's weights really changed
        else:
            switched = None

        # Update fake score (on detached generator samples).
        for _ in range(config.fake_steps):
            loss_fake = fake_score_step(fake, opt_fake, generator, config.batch, config.p_mean, config.p_std,
                                        rng, step + 1, run_dir)
        nfe += config.fake_steps * NFE_FAKE_STEP * config.batch

        # Update generator.
        z, labels = draw_latents(config.batch, teacher.data_shape, teacher.label_dim, rng)
        x0 = generator(z, labels)
        sigma = sample_sigma(config.batch, config.p_mean, config.p_std, rng)
        n = torch.randn(x0.shape, generator=rng)
        fake.requires_grad_(False)
        loss_gen = generator_loss(config.method, x0, sigma, n, labels, target, fake, config.sid_alpha).mean()
        fake.requires_grad_(True)
        check_finite(loss_gen, step + 1, "generator loss", run_dir)
        opt_gen.zero_grad(set_to_none=True)
        loss_gen.backward()
        check_finite(torch.stack([p.grad.norm() for p in generator.parameters() if p.grad is not None]),
                     step + 1, "generator gradient", run_dir)
        opt_gen.step()
        if ema:
            ema.update(generator)
        nfe += NFE_GEN_STEP * config.batch

        # Log, evaluate, checkpoint.
        done = step + 1
        record = {"step": done, "node": active, "loss_gen": loss_gen.item(), "loss_fake": loss_fake, "nfe": nfe}
        if switched:
            record["target_fingerprint"] = switched
        if (config.eval_every and done % config.eval_every == 0) or done == config.iters:
            record.update(evaluate(done, active))
        log.write(record)
        bar.set_postfix(loss=f"{record['loss_gen']:.3g}", node=active, refresh=False)
        if config.ckpt_every and (done % config.ckpt_every == 0 or done == config.iters):
            state.save(done, modules, optimizers, rng, {"nfe": nfe})
    return DistillResult(eval_gen, fake, log.records, schedule, config, run_dir)


def backtrack(teacher, path: DegradationPath, config: DistillConfig, run_dir, **kwargs) -> DistillResult:
    """DisBack stage 2: ``distill`` along the reversed degradation path, ending on the teacher."""
    return distill(teacher, config.replace(backtrack=True), run_dir, path=path, **kwargs)
