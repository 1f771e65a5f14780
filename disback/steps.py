"""The per-step functions both stages share: latents, the fake-score update, the generator update, and the cost
of each in network passes.

Stage 1 (``degrade.py``) is ``fake_score_step`` alone against the frozen G0; stage 2 and every baseline
(``distill.py``) alternate ``fake_score_step`` and ``generator_step``. Costs count forward network evaluations
(``nfe``) and, for the compute figure, forward-equivalent passes with a backward pass counted as two forwards
(``cost``): SiD back-propagates through both denoisers, the other losses through the generator alone.
Every random draw comes from ``rng`` on that generator's device: a CUDA ``rng`` keeps a step on the GPU.

DMD2's optional GAN term (``GANTerm``, off unless given) adds to each step: the fake-score step also trains a
discriminator head on the fake score's bottleneck (noisy real vs noisy generated images), the generator step adds the
non-saturating generator loss on the head's logits of its own noisy samples. Its draws come after all the others, so
without it a step draws, and computes, exactly what it did before it existed.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from . import parallel
from .checkpoint import check_finite, tensor_digest
from .diffusion import edm_sampler, sample_loss_sigma
from .generator import seeded_labels, seeded_noise
from .losses import discriminator_logits, fake_score_loss, gan_discriminator_loss, gan_generator_loss, generator_loss

BACKWARD = 2  # a backward pass costs about two forward passes
# Forward evaluations per sample. Fake-score step: G and the fake score. Generator step: G, the fake score, the target.
NFE_FAKE_STEP, NFE_GEN_STEP = 2, 3
COST_FAKE_STEP = 1 + (1 + BACKWARD)  # G forward; fake score forward + backward
GRAD_THROUGH_DENOISERS = {"sid": 2}  # losses whose gradient flows back through the fake score and the target
# The GAN term's extra passes per sample: the fake-score step runs the fake score (forward + backward) on noisy real
# and on noisy generated images; the generator step runs it once more on its noisy samples, back-propagating to them.
NFE_GAN_FAKE_STEP, NFE_GAN_GEN_STEP = 2, 1
COST_GAN_FAKE_STEP, COST_GAN_GEN_STEP = 2 * (1 + BACKWARD), 1 + BACKWARD


class RealData:
    """The real images (or vectors) of DMD2's GAN term: ``x`` ``[N, *data_shape]`` and optional ``labels`` ``[N]``
    (int64). A batch is drawn uniformly with replacement from the run's ``rng``, so a run stays reproducible."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        if not torch.is_tensor(x) or not x.is_floating_point() or x.ndim < 2 or len(x) == 0:
            raise ValueError(f"real_data: x must be a non-empty float tensor [N, ...]; got "
                             f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
        if labels is not None and (labels.shape != (len(x),) or labels.dtype != torch.int64):
            raise ValueError(f"real_data: labels must be int64 [{len(x)}]; got {labels.dtype} {tuple(labels.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"real_data: x must be finite; {int((~torch.isfinite(x)).sum())} of its {x.numel()} "
                             f"values are nan or inf")
        self.x, self.labels = x.float(), labels

    @property
    def digest(self) -> str:
        """Content hash: part of a GAN run's checkpoint key, so a resume uses the same images."""
        return tensor_digest(*([self.x] if self.labels is None else [self.x, self.labels]))

    def draw(self, batch: int, rng: torch.Generator, device=None):
        """``batch`` images ``[batch, *data_shape]`` and their labels (or ``None``), on ``device``."""
        idx = torch.randint(len(self.x), (batch,), generator=rng, device=rng.device)
        labels = None if self.labels is None else self.labels[idx.to(self.labels.device)].to(device)
        idx = idx.to(self.x.device)
        return self.x[idx].to(device), labels


@dataclass
class GANTerm:
    """DMD2's GAN term as the steps use it: the discriminator head, the real data and the two weights."""
    head: torch.nn.Module    # DiscriminatorHead on the fake score's bottleneck features
    real: RealData
    weight: float            # generator: weight of the non-saturating generator loss (DistillConfig.gan_weight)
    weight_fake: float       # fake score: weight of the discriminator loss (DistillConfig.gan_weight_fake)
    p_mean: float = -1.2     # lognormal noise levels: ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    sigma_dist: str = "lognormal"  # noise levels of the images both sides see (config.SIGMA_DISTS, resolved)
    stats: dict = field(default_factory=dict)  # the last step's GAN losses (global batch), for the run log


def _noisy_draw(batch: int, shape, gan: GANTerm, rng: torch.Generator, device):
    """Noise levels and unit noise for ``batch`` samples of per-sample ``shape``, global, on ``device``."""
    sigma = sample_loss_sigma(gan.sigma_dist, batch, gan.p_mean, gan.p_std, rng).to(device)
    n = torch.randn((batch, *shape), generator=rng, device=rng.device).to(device)
    return sigma, n


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


@contextlib.contextmanager
def evaluation_mode(*modules):
    """``modules`` in eval mode inside the block (dropout off), each back in its own mode after. Diff-Instruct's and
    SiD's training loops do this: the fake score learns from the generator's samples drawn in eval mode (as stage 1
    learns from the frozen G0's), and the generator's loss queries the fake score in eval mode; each network trains
    in train mode. It matters only for networks with dropout (the paper-scale EDM teachers: 0.05-0.25)."""
    was = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, was):
            m.train(mode)


def fake_score_step(fake_score, optimizer, generator, batch: int, p_mean: float, p_std: float,
                    rng: torch.Generator, step: int, state_dir=None, bf16: bool = False,
                    gan: GANTerm | None = None, sigma_dist: str = "lognormal") -> float:
    """One score-matching update of ``fake_score`` on detached samples of ``generator``; returns the loss. With
    ``gan``, the discriminator loss (weight ``gan.weight_fake``) trains the head and the fake score with it; the
    returned loss stays the score-matching one and the GAN loss goes to ``gan.stats``. ``sigma_dist``: the noise
    levels of the score matching (``config.SIGMA_DISTS``, resolved; ``p_mean``/``p_std`` shape "lognormal").

    ``batch`` is global: every process draws the whole batch's noise and keeps its rows (``disback.parallel``)."""
    z, labels = draw_latents(batch, fake_score.data_shape, fake_score.label_dim, rng, _device(fake_score))
    z, labels = parallel.shard(z, labels)
    with parallel.autocast(bf16, z.device.type), torch.no_grad(), evaluation_mode(generator):
        x0 = generator(z, labels)
    sigma = sample_loss_sigma(sigma_dist, batch, p_mean, p_std, rng).to(x0.device)
    n = torch.randn((batch, *x0.shape[1:]), generator=rng, dtype=x0.dtype, device=rng.device).to(x0.device)
    sigma, n = parallel.shard(sigma, n)
    with parallel.autocast(bf16, z.device.type):
        loss = fake_score_loss(fake_score, x0, sigma, labels, noise=n)
    loss_all = parallel.mean(loss.detach())  # the global batch's loss, the same on every process
    check_finite(loss_all, step, "fake-score loss", state_dir)
    if gan is not None:  # DMD2's discriminator: noisy real vs noisy generated images, each at its own noise level.
        sigma_g, n_g = parallel.shard(*_noisy_draw(batch, x0.shape[1:], gan, rng, x0.device))
        x_r, labels_r = gan.real.draw(batch, rng, x0.device)
        sigma_r, n_r = _noisy_draw(batch, x0.shape[1:], gan, rng, x0.device)
        x_r, labels_r, sigma_r, n_r = parallel.shard(x_r, labels_r, sigma_r, n_r)
        with parallel.autocast(bf16, z.device.type):
            loss_d = gan_discriminator_loss(
                discriminator_logits(fake_score, gan.head, x_r, sigma_r, n_r, labels_r),
                discriminator_logits(fake_score, gan.head, x0.detach(), sigma_g, n_g, labels)).mean()
        loss_d_all = parallel.mean(loss_d.detach())
        check_finite(loss_d_all, step, "discriminator loss", state_dir)
        gan.stats["loss_disc"] = loss_d_all.item()
        loss = loss + gan.weight_fake * loss_d
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    parallel.sync_grads(fake_score)
    if gan is not None:
        parallel.sync_grads(gan.head)
    optimizer.step()
    return loss_all.item()


def generator_step(generator, optimizer, target, fake_score, config, rng: torch.Generator, step: int,
                   state_dir=None, pairs=None, gan: GANTerm | None = None) -> float:
    """One score-distillation update of ``generator`` toward ``target`` (Diff-Instruct / DMD / SiD), plus DMD's
    regression on ``pairs`` when ``config.reg_weight > 0`` and DMD2's GAN generator loss (weight ``gan.weight``) with
    ``gan``; returns the whole loss (the GAN part also goes to ``gan.stats``). ``config.batch`` is global."""
    z, labels = draw_latents(config.batch, fake_score.data_shape, fake_score.label_dim, rng, _device(fake_score))
    z, labels = parallel.shard(z, labels)
    with parallel.autocast(config.bf16, z.device.type):
        x0 = generator(z, labels)
    sigma = sample_loss_sigma(config.generator_sigma_dist, config.batch, config.p_mean, config.p_std,
                                   rng).to(x0.device)
    n = torch.randn((config.batch, *x0.shape[1:]), generator=rng, device=rng.device).to(x0.device)
    idx = torch.randint(len(pairs["z"]), (config.batch,), generator=rng, device=rng.device).to(pairs["z"].device) \
        if config.reg_weight > 0 else None
    sigma, n, idx = parallel.shard(sigma, n, idx)
    if gan is not None:
        sigma_g, n_g = parallel.shard(*_noisy_draw(config.batch, x0.shape[1:], gan, rng, x0.device))
    # The gradient reaches x0 through the fake score (SiD, the GAN term): keep it out of the fake score's weights.
    # The other losses evaluate both scores without a graph, so nothing is toggled for them.
    freeze = bool(GRAD_THROUGH_DENOISERS.get(config.method, 0)) or gan is not None
    with parallel.autocast(config.bf16, z.device.type), evaluation_mode(fake_score, *([gan.head] if gan else [])):
        if freeze:
            fake_score.requires_grad_(False)
        loss = generator_loss(config.method, x0, sigma, n, labels, target, fake_score, config.sid_alpha).mean()
        if gan is not None:  # DMD2's non-saturating generator loss; the head and the fake score stay fixed.
            gan.head.requires_grad_(False)
            loss_g = gan_generator_loss(discriminator_logits(fake_score, gan.head, x0, sigma_g, n_g, labels)).mean()
            gan.head.requires_grad_(True)
            gan.stats["loss_gan"] = parallel.mean(loss_g.detach()).item()
            loss = loss + gan.weight * loss_g
        if freeze:
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
