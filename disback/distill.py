"""Stage 2 and every baseline: one score-distillation loop whose target follows a ``TargetSchedule``.

DisBack (``backtrack``) = this loop with the reversed degradation path as schedule and the fake score
initialised from the path's last node. A baseline (``distill``) = the same loop with the teacher as the
constant target and the fake score initialised from the teacher. The control arm (``fake_from_path``) starts
the fake score at the path's last node as DisBack does but aims at the teacher from the first update: it
separates the effect of the path from the effect of the fake score's starting point. Nothing else differs.

DMD2's GAN term (``DistillConfig.gan_weight`` > 0, any arm) adds a discriminator head on the fake score's bottleneck,
trained with the fake score on real images the caller passes as ``real_data``; see ``steps.GANTerm``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import parallel
from .checkpoint import ArtifactError, RunLog, TrainingState, fingerprint, load_module, load_tensors, save_tensors, \
    write_json
from .config import DistillConfig, check_config
from .diffusion import heun_nfe
from .generator import EMA, check_label_range, check_teacher_module, frozen_copy, make_generator, trainable_copy
from .networks.discriminator import make_discriminator_head
from .path import DegradationPath, TargetSchedule
from .progress import bar as progress_bar
from .runlock import check_run_dir, locks_run_dir
from .steps import (BACKWARD, adam, COST_FAKE_STEP, COST_GAN_FAKE_STEP, COST_GAN_GEN_STEP, NFE_FAKE_STEP,
                    NFE_GAN_FAKE_STEP, NFE_GAN_GEN_STEP, NFE_GEN_STEP, GANTerm, RealData, cost_gen_step,
                    fake_score_step, generator_step, regression_pairs)

SNAPSHOTS = "snapshots"  # generator weights kept every ``snapshot_every`` updates: snapshots/gen_<step>.safetensors


@dataclass
class DistillResult:
    generator: torch.nn.Module    # the trained one-step generator (its EMA if config.ema > 0)
    fake_score: torch.nn.Module   # the fake score at the end of training
    log: list                     # one record per generator update (and step 0): losses, active node, metrics
    schedule: TargetSchedule
    config: DistillConfig
    run_dir: Path
    discriminator: torch.nn.Module | None = None  # DMD2's discriminator head (config.gan_weight > 0), else None


def make_schedule(config: DistillConfig, path: DegradationPath | None) -> TargetSchedule:
    """The target schedule a config asks for: backtracking over ``path``, or the constant teacher."""
    if not config.backtrack:
        return TargetSchedule.constant()
    if path is None:
        raise ValueError("backtrack=True: needs a DegradationPath (record one with record_degradation)")
    return TargetSchedule.backtracking(path.num_nodes, config.iters_per_node, config.iters)


def _check_path(teacher, path: DegradationPath | None, config: DistillConfig) -> None:
    if path is None:
        raise ValueError("fake_from_path=True: needs a DegradationPath (its last node starts the fake score)")
    path.check_teacher(teacher)
    if float(path.config["sigma_init"]) != config.sigma_init:
        raise ArtifactError(f"sigma_init={config.sigma_init!r}: the path was recorded for a generator with "
                            f"sigma_init={path.config['sigma_init']}; they must match")


class _Costs:
    """Running counts of forward network evaluations (``nfe``) and forward-equivalent passes (``cost``)."""

    def __init__(self, config: DistillConfig, nfe: int = 0, cost: int = 0):
        reg = 1 if config.reg_weight > 0 else 0  # the regression term runs G once more (forward + backward)
        gan = 1 if config.gan_weight > 0 else 0  # the GAN term's fake-score passes (steps.NFE_GAN_*)
        self.per_update_nfe = config.batch * (config.fake_steps * (NFE_FAKE_STEP + gan * NFE_GAN_FAKE_STEP)
                                              + NFE_GEN_STEP + gan * NFE_GAN_GEN_STEP + reg)
        self.per_update_cost = config.batch * (config.fake_steps * (COST_FAKE_STEP + gan * COST_GAN_FAKE_STEP)
                                               + cost_gen_step(config.method) + gan * COST_GAN_GEN_STEP
                                               + reg * (1 + BACKWARD))
        self.nfe, self.cost = nfe, cost

    def update(self) -> None:
        self.nfe += self.per_update_nfe
        self.cost += self.per_update_cost


def update_cost(config: DistillConfig) -> int:
    """Forward-equivalent passes (all samples) of one generator update of ``config``, its fake-score steps included."""
    return _Costs(config).per_update_cost


@locks_run_dir
def distill(teacher, config: DistillConfig, run_dir, path: DegradationPath | None = None,
            metric_fn: Callable[[torch.nn.Module], dict] | None = None, progress: bool = True,
            probe_fn: Callable[..., dict] | None = None, real_data=None) -> DistillResult:
    """Train a one-step generator from ``teacher`` by score distillation; resumes from ``run_dir`` if it holds a state.

    ``metric_fn(generator)`` is logged as ``metrics`` at step 0, every ``eval_every`` updates and at the end.
    ``probe_fn(generator=, fake=, target=, node=, step=, seed=)`` is logged as ``probe`` at the same steps: it sees the
    training internals (e.g. to measure the mismatch between the target's and the fake score). Neither may draw
    from the training RNG, so they never change the run.
    ``real_data`` (a ``RealData``, an images tensor ``[N, *data_shape]`` or a pair (images, labels)) feeds DMD2's GAN
    term and is required when ``config.gan_weight > 0`` (the cpu settings: ``Setting.train``, ``Setting.train_labels``).
    """
    check_teacher_module(teacher)
    check_config(config, DistillConfig)
    run_dir = check_run_dir(run_dir)
    if path is not None and not isinstance(path, DegradationPath):
        raise TypeError(f"path: must be a DegradationPath (DegradationPath.load(folder) reads one) or None; got "
                        f"{type(path).__name__}")
    for name, fn in (("metric_fn", metric_fn), ("probe_fn", probe_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name}: must be a callable or None; got {type(fn).__name__}")
    if path is not None and not (config.backtrack or config.fake_from_path):
        raise ValueError("path: given, but this config neither backtracks (backtrack=True, or disback.backtrack) nor "
                         "starts the fake score from it (fake_from_path=True, the control arm); a baseline takes no "
                         "path (pass path=None)")
    run_dir.mkdir(parents=True, exist_ok=True)
    schedule = make_schedule(config, path)
    if config.backtrack or config.fake_from_path:
        _check_path(teacher, path, config)
    real = as_real_data(real_data, teacher, config)
    if parallel.is_main():  # Parallel runs: see disback.parallel (global noise, averaged gradients, rank 0 writes).
        write_json(run_dir / "config.json", {**config.to_dict(), "schedule": {
            "nodes": list(schedule.nodes), "switch_steps": list(schedule.switch_steps)}})
    device = parallel.device(teacher)
    torch.manual_seed(parallel.rank_seed(config.seed))
    rng = torch.Generator().manual_seed(config.seed)

    # Networks: G from the teacher; the fake score from the teacher, or (DisBack, control) from the last node.
    generator = make_generator(teacher, config.sigma_init).to(device).train()
    fake = trainable_copy(teacher).to(device).train().requires_grad_(True)
    if config.backtrack or config.fake_from_path:
        path.load_node(path.num_nodes, fake)
    target = frozen_copy(teacher).to(device)
    ema = EMA(generator, config.ema) if config.ema > 0 else None
    gan = None
    if real is not None:  # DMD2's discriminator head, trained with the fake score by the same optimizer
        head = make_discriminator_head(fake).train()
        gan = GANTerm(head, real, config.gan_weight, config.gan_weight_fake, config.p_mean, config.p_std,
                      config.fake_score_sigma_dist)
    opt_gen = adam(generator.parameters(), config.lr_gen)
    opt_fake = adam([*fake.parameters(), *gan.head.parameters()] if gan else fake.parameters(), config.lr_fake)
    modules = {"generator": generator, "fake": fake, **({"ema": ema.module} if ema else {}),
               **({"discriminator": gan.head} if gan else {})}
    optimizers = {"generator": opt_gen, "fake": opt_fake}
    pairs = regression_pairs(teacher, config.reg_pairs, config.reg_sigma_max) if config.reg_weight > 0 else None
    if pairs is not None:
        pairs = {k: None if v is None else v.to(device) for k, v in pairs.items()}

    key = f"{config.hash()}-{fingerprint(teacher)[:16]}" + (f"-{real.digest[:16]}" if gan else "") \
        + (f"-path-{path.digest[:16]}" if config.backtrack or config.fake_from_path else "")  # + real images, path
    state = TrainingState(run_dir, key)
    meta = state.load(modules, optimizers, rng)
    parallel.barrier()  # every rank has read the state before the main process writes anything
    start = meta["step"] if meta else 0
    if meta:
        costs = _Costs(config, meta["extra"]["nfe"], meta["extra"].get("cost", 0))
    else:  # DMD's regression pairs are paid up front: one teacher ODE solve each
        pair_cost = config.reg_pairs * heun_nfe(18) if pairs is not None else 0
        costs = _Costs(config, pair_cost, pair_cost)
    log = RunLog(run_dir / "log.jsonl", start, write=parallel.is_main())
    eval_gen = ema.module if ema else generator
    active = schedule.node_at(start - 1) if start else 0  # the node the target holds (0 = the teacher)
    if active:  # Resumed on an intermediate node: restore it as the target, logging no switch.
        path.load_node(active, target)

    def evaluate(step: int, node: int) -> dict:
        if not parallel.is_main():  # evaluation, snapshots and metrics: main process only
            return {}
        if config.snapshot_every and step % config.snapshot_every == 0:
            save_tensors(run_dir / SNAPSHOTS / f"gen_{step:06d}.safetensors", eval_gen.state_dict())
        out = {"metrics": metric_fn(eval_gen)} if metric_fn else {}
        if probe_fn:
            out["probe"] = probe_fn(generator=eval_gen, fake=fake, target=target, node=node, step=step,
                                    seed=config.seed)
        return out

    if start == 0:
        first = schedule.node_at(0)
        if probe_fn and first:  # the probe at step 0 sees the first target; the loop then switches to it as usual
            path.load_node(first, target)
        log.write({"step": 0, "node": first, "nfe": costs.nfe, "cost": costs.cost, **evaluate(0, first)})
        if probe_fn and first:
            target.load_state_dict(teacher.state_dict())
    arm = "+disback" if config.backtrack else "+control" if config.fake_from_path else ""
    bar = progress_bar(range(start, config.iters), desc=f"{config.method}{arm} seed {config.seed}",
                       disable=not progress or not parallel.is_main(), initial=start, total=config.iters)
    for step in bar:
        done = step + 1
        parallel.seed_update(config.seed, done)  # dropout masks: a function of (seed, rank, update) alone
        switched = _switch_target(schedule.node_at(step), active, target, teacher, path)
        active = schedule.node_at(step)
        for _ in range(config.fake_steps):  # Update fake score (on detached generator samples).
            loss_fake = fake_score_step(fake, opt_fake, generator, config.batch, config.p_mean, config.p_std, rng,
                                        done, run_dir, config.bf16, gan, config.fake_score_sigma_dist)
        loss_gen = generator_step(generator, opt_gen, target, fake, config, rng, done, run_dir, pairs, gan)
        if ema:
            ema.update(generator)
        costs.update()

        # Log, evaluate, checkpoint.
        record = {"step": done, "node": active, "loss_gen": loss_gen, "loss_fake": loss_fake, "nfe": costs.nfe,
                  "cost": costs.cost, **({"target_fingerprint": switched} if switched else {}),
                  **(gan.stats if gan else {})}
        if (config.eval_every and done % config.eval_every == 0) or done == config.iters:
            record.update(evaluate(done, active))
        log.write(record)
        bar.set_postfix(loss=f"{loss_gen:.3g}", node=active, refresh=False)
        if config.ckpt_every and (done % config.ckpt_every == 0 or done == config.iters):
            parallel.check_in_sync(modules)
            if parallel.is_main():
                state.save(done, modules, optimizers, rng, {"nfe": costs.nfe, "cost": costs.cost})
    parallel.barrier()  # every rank returns once the main process has written everything
    return DistillResult(eval_gen, fake, log.records, schedule, config, run_dir, gan.head if gan else None)


def as_real_data(real_data, teacher, config: DistillConfig) -> RealData | None:
    """The GAN term's real data as ``RealData`` (``None`` when the term is off), checked against the teacher."""
    if config.gan_weight == 0:
        return None
    if real_data is None:
        raise ValueError(f"gan_weight={config.gan_weight!r}: DMD2's GAN term needs real images; pass distill(..., "
                         f"real_data=(images, labels)) (cpu settings: Setting.train, Setting.train_labels), or use "
                         f"gan_weight=0")
    if isinstance(real_data, tuple) and len(real_data) != 2:
        raise ValueError(f"real_data: a tuple must be (images, labels) (labels may be None); got {len(real_data)} "
                         f"items")
    real = real_data if isinstance(real_data, RealData) else RealData(*real_data) if isinstance(real_data, tuple) \
        else RealData(real_data)
    if tuple(real.x.shape[1:]) != tuple(teacher.data_shape):
        raise ValueError(f"real_data: per-sample shape {tuple(real.x.shape[1:])} differs from the teacher's "
                         f"{tuple(teacher.data_shape)}")
    if bool(teacher.label_dim) != (real.labels is not None):
        raise ValueError(f"real_data: labels {'missing' if real.labels is None else 'given'}, but the teacher has "
                         f"label_dim={teacher.label_dim}")
    if real.labels is not None:
        check_label_range("real_data: labels", real.labels, teacher.label_dim, "the teacher's classes")
    return real


def _switch_target(node: int, active: int, target, teacher, path) -> str | None:
    """Load ``node`` into ``target`` when it differs from the ``active`` one; returns the new weights' fingerprint
    (logged: it proves the target really changed), or ``None`` when nothing switched."""
    if node == active:
        return None
    if node == 0:
        target.load_state_dict(teacher.state_dict())
    else:
        path.load_node(node, target)
    return fingerprint(target)[:16]


def load_snapshot(run_dir, step: int, teacher, sigma_init: float) -> torch.nn.Module:
    """The generator a run kept at update ``step`` (``DistillConfig.snapshot_every``), ready to sample."""
    f = Path(run_dir) / SNAPSHOTS / f"gen_{step:06d}.safetensors"
    generator = make_generator(teacher, sigma_init)
    load_module(generator, load_tensors(f))
    return generator.eval().requires_grad_(False)


def backtrack(teacher, path: DegradationPath, config: DistillConfig, run_dir, **kwargs) -> DistillResult:
    """DisBack stage 2: ``distill`` along the reversed degradation path, ending on the teacher."""
    check_config(config, DistillConfig)
    return distill(teacher, config.replace(backtrack=True), run_dir, path=path, **kwargs)
