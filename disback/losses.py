"""Losses: fake-score matching, and the generator updates of the score-distillation family.

Every generator loss takes the generator's samples ``x0`` (with gradient), the noise level ``sigma``
and noise ``n``, the target denoiser and the fake-score denoiser, and returns a per-sample loss whose
gradient w.r.t. ``x0`` is the method's update direction. Scores enter through denoisers:
s(x_t) = (D(x_t) - x_t) / sigma^2, so s_fake - s_target = (D_fake - D_target) / sigma^2.

DMD2's optional GAN term (Yin et al. 2024, Sec. 4.3) is the non-saturating GAN loss of Goodfellow et al. 2014 on the
logits of a discriminator head (``networks.discriminator``) over noisy real and noisy generated images.
"""
from __future__ import annotations

import torch
from torch import nn

from .diffusion import denoising_loss, expand_sigma
from .networks.discriminator import bottleneck_features


def fake_score_loss(fake_score, x0: torch.Tensor, sigma: torch.Tensor, labels=None, generator=None,
                    noise=None) -> torch.Tensor:
    """Denoising score matching of the fake score on detached generator samples (DisBack Eq. for s_phi)."""
    return denoising_loss(fake_score, x0.detach(), sigma, labels, generator, noise).mean()


def _surrogate(x0: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Per-sample loss whose gradient w.r.t. ``x0`` is exactly ``grad`` (held constant)."""
    return (grad.detach() * x0).flatten(1).sum(1)


def diff_instruct(x0, sigma, n, labels, target, fake_score, **_) -> torch.Tensor:
    """Diff-Instruct / VSD: grad = w(sigma) (s_fake - s_target)(x_t), with w(sigma) = sigma^2."""
    x_t = x0 + expand_sigma(sigma, x0) * n
    with torch.no_grad():
        grad = fake_score(x_t, sigma, labels) - target(x_t, sigma, labels)
    return _surrogate(x0, grad)


def dmd(x0, sigma, n, labels, target, fake_score, **_) -> torch.Tensor:
    """DMD: the same direction normalised per sample by mean |x0 - D_target(x_t)| (Yin et al. 2024)."""
    x_t = x0 + expand_sigma(sigma, x0) * n
    with torch.no_grad():
        d_target = target(x_t, sigma, labels)
        grad = fake_score(x_t, sigma, labels) - d_target
        scale = (x0 - d_target).abs().flatten(1).mean(1).clamp_min(1e-8)
    return _surrogate(x0, grad / expand_sigma(scale, x0))


def sid(x0, sigma, n, labels, target, fake_score, alpha: float = 1.2, **_) -> torch.Tensor:
    """SiD (Zhou et al. 2024): (f_tgt - f_fake)^T (f_tgt - x0) - alpha ||f_tgt - f_fake||^2, normalised per sample
    by mean |x0 - f_tgt|; gradients flow through x_t into both (frozen) denoisers."""
    x_t = x0 + expand_sigma(sigma, x0) * n
    d_target = target(x_t, sigma, labels)
    d_fake = fake_score(x_t, sigma, labels)
    diff = (d_target - d_fake).flatten(1)
    loss = (diff * (d_target - x0).flatten(1)).sum(1) - alpha * (diff ** 2).sum(1)
    scale = (x0 - d_target).detach().abs().flatten(1).mean(1).clamp_min(1e-8)
    return loss / scale


# dmd2 is the DMD loss; what makes it DMD2-style is the two time-scale rule (DistillConfig.fake_steps).
GENERATOR_LOSSES = {"diff_instruct": diff_instruct, "dmd": dmd, "dmd2": dmd, "sid": sid}


def generator_loss(method: str, x0, sigma, n, labels, target, fake_score, sid_alpha: float = 1.2) -> torch.Tensor:
    """Per-sample generator loss of ``method`` (one of ``GENERATOR_LOSSES``)."""
    if method not in GENERATOR_LOSSES:
        raise ValueError(f"method={method!r}: must be one of {tuple(GENERATOR_LOSSES)}")
    return GENERATOR_LOSSES[method](x0, sigma, n, labels, target, fake_score, alpha=sid_alpha)


def discriminator_logits(fake_score, head, x0: torch.Tensor, sigma: torch.Tensor, n: torch.Tensor,
                         labels=None) -> torch.Tensor:
    """Logits ``[N]`` (real > 0) of the head on the fake score's bottleneck features of x_t = x0 + sigma n."""
    x_t = x0 + expand_sigma(sigma, x0) * n
    return head(bottleneck_features(fake_score, x_t, sigma, labels))


def gan_discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Per-sample discriminator loss -log sigmoid(l_real) - log(1 - sigmoid(l_fake)); log 2 each side at logit 0."""
    return nn.functional.softplus(-logits_real) + nn.functional.softplus(logits_fake)


def gan_generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Per-sample non-saturating generator loss -log sigmoid(l_fake) on the generator's own samples."""
    return nn.functional.softplus(-logits_fake)
