"""The per-step functions both stages share: latents, the fake-score update, the generator update, and the cost
of each in network passes.

Stage 1 (``degrade.py``) is ``fake_score_step`` alone against the frozen G0; stage 2 and every baseline
(``distill.py``) alternate ``fake_score_step`` and ``generator_step``. Costs count forward network evaluations
(``nfe``) and, for the compute figure, forward-equivalent passes with a backward pass counted as two forwards
(``cost``): SiD back-propagates through both denoisers, the other losses through the generator alone.
Every random draw comes from ``rng`` on that generator's device: a CUDA ``rng`` keeps a step on the GPU.
"""
from __future__ import annotations

import torch

from . import parallel
from .checkpoint import check_finite
from .diffusion import edm_sampler, sample_generator_sigma, sample_sigma
from .generator import seeded_labels, seeded_noise
from .losses import fake_score_loss, generator_loss

BACKWARD = 2  # a backward pass costs about two forward passes
# Forward evaluations per sample. Fake-score step: G and the fake score. Generator step: G, the fake score, the target.
NFE_FAKE_STEP, NFE_GEN_STEP = 2, 3
COST_FAKE_STEP = 1 + (1 + BACKWARD)  # G forward; fake score forward + backward
GRAD_THROUGH_DENOISERS = {"sid": 2}  # losses whose gradient flows back through the fake score and the target


def adam(params, lr: float) -> torch.optim.Adam:
    """Adam as every loop here uses it: the multi-tensor (``foreach``) implementation, a few fused calls per step
    instead of a dozen per parameter tensor (the nets are small, so per-call overhead counts). On CPU its updates
    are bitwise those of the default single-tensor path (tests/test_math.py checks it)."""
    return torch.optim.Adam(params, lr=lr, foreach=True)


def cost_gen_step(method: str) -> int:
    """Forward-equivalent passes per sample of one generator update of ``method``."""
    through = GRAD_THROUGH_DENOISERS.get(method, 0)
    return (1 + BACKWARD) + 2 + through * BACKWARD


def draw_latents(batch: int, data_shape, label_dim: int, rng: torch.Generator, device=None):
    """Unit generator noise ``[batch, *data_shape]`` and uniform labels (or ``None``), drawn on ``rng``'s device and
    moved to ``device`` (default: stay there)."""
    device = device or rng.device
    z = torch.randn((batch, *data_shape), generator=rng, device=rng.device).to(device)
    labels = torch.randint(label_dim, (batch,), generator=rng, device=rng.device).to(device) if label_dim else None
    return z, labels


def _device(module) -> torch.device:
    return next(module.parameters()).device


def fake_score_step(fake_score, optimizer, generator, batch: int, p_mean: float, p_std: float,
                    rng: torch.Generator, step: int, state_dir=None, bf16: bool = False) -> float:
    """One score-matching update of ``fake_score`` on detached samples of ``generator``; returns the loss.

    ``batch`` is global: every process draws the whole batch's noise and keeps its rows (``disback.parallel``)."""
    z, labels = draw_latents(batch, fake_score.data_shape, fake_score.label_dim, rng, _device(fake_score))
    z, labels = parallel.shard(z, labels)
    with parallel.autocast(bf16, z.device.type), torch.no_grad():
        x0 = generator(z, labels)
    sigma = sample_sigma(batch, p_mean, p_std, rng, device=rng.device).to(x0.device)
    n = torch.randn((batch, *x0.shape[1:]), generator=rng, dtype=x0.dtype, device=rng.device).to(x0.device)
    sigma, n = parallel.shard(sigma, n)
    with parallel.autocast(bf16, z.device.type):
        loss = fake_score_loss(fake_score, x0, sigma, labels, noise=n)
    loss_all = parallel.mean(loss.detach())  # the global batch's loss, the same on every process
    check_finite(loss_all, step, "fake-score loss", state_dir)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parallel.sync_grads(fake_score)
    optimizer.step()
    return loss_all.item()


def generator_step(generator, optimizer, target, fake_score, config, rng: torch.Generator, step: int,
                   state_dir=None, pairs=None) -> float:
    """One score-distillation update of ``generator`` toward ``target`` (Diff-Instruct / DMD / SiD), plus DMD's
    regression on ``pairs`` when ``config.reg_weight > 0``; returns the loss. ``config.batch`` is global."""
    z, labels = draw_latents(config.batch, fake_score.data_shape, fake_score.label_dim, rng, _device(fake_score))
    z, labels = parallel.shard(z, labels)
    with parallel.autocast(config.bf16, z.device.type):
        x0 = generator(z, labels)
    sigma = sample_generator_sigma(config.generator_sigma_dist, config.batch, config.p_mean, config.p_std,
                                   rng).to(x0.device)
    n = torch.randn((config.batch, *x0.shape[1:]), generator=rng, device=rng.device).to(x0.device)
    idx = torch.randint(len(pairs["z"]), (config.batch,), generator=rng, device=rng.device).to(pairs["z"].device) \
        if config.reg_weight > 0 else None
    sigma, n, idx = parallel.shard(sigma, n, idx)
    through = GRAD_THROUGH_DENOISERS.get(config.method, 0)  # the others evaluate both scores without a graph
    with parallel.autocast(config.bf16, z.device.type):
        if through:  # the gradient reaches x0 through the fake score: keep it out of the fake score's weights
            fake_score.requires_grad_(False)
        loss = generator_loss(config.method, x0, sigma, n, labels, target, fake_score, config.sid_alpha).mean()
        if through:
            fake_score.requires_grad_(True)
        if config.reg_weight > 0:  # DMD's regression toward the teacher's ODE output for the same noise.
            labels_p = None if pairs["labels"] is None else pairs["labels"][idx]
            err = (generator(pairs["z"][idx], labels_p) - pairs["x"][idx]) ** 2
            loss = loss + config.reg_weight * err.flatten(1).mean(1).mean()
    loss_all = parallel.mean(loss.detach())  # the global batch's loss, the same on every process
    check_finite(loss_all, step, "generator loss", state_dir)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parallel.sync_grads(generator)
    check_finite(torch.nn.utils.get_total_norm([p.grad for p in generator.parameters() if p.grad is not None]),
                 step, "generator gradient", state_dir)  # one multi-tensor norm: finite iff every gradient is
    optimizer.step()
    return loss_all.item()


def regression_pairs(teacher, num: int, sigma_max: float, steps: int = 18, seed_offset: int = 5 * 10 ** 6) -> dict:
    """DMD's paired set: per-seed noise ``z`` and the teacher's Heun ODE output from ``sigma_max * z``, on the
    teacher's device."""
    seeds, device = range(seed_offset, seed_offset + num), _device(teacher)
    z, labels = seeded_noise(seeds, teacher.data_shape, device), seeded_labels(seeds, teacher.label_dim)
    labels = None if labels is None else labels.to(device)
    return {"z": z, "labels": labels, "x": edm_sampler(teacher, z, labels, num_steps=steps, sigma_max=sigma_max)}
