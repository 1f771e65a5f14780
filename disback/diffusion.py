"""EDM noise math: preconditioning, sigma sampling, loss weights and the Heun sampler.

Notation follows Karras et al. 2022 (EDM): data ``x0``, noised ``x = x0 + sigma * n``, denoiser
``D(x, sigma, labels)`` (the posterior-mean estimate of ``x0``), score ``(D(x) - x) / sigma**2``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def expand_sigma(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or ``[N]`` sigma to ``[N, 1, ..., 1]`` matching ``x``."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class EDMPrecond(nn.Module):
    """EDM preconditioning around any backbone ``F(x_in, c_noise, labels)``: gives ``D(x, sigma, labels)``.

    D(x) = c_skip * x + c_out * F(c_in * x, c_noise), with the EDM coefficients (EDM Table 1).
    """

    def __init__(self, backbone: nn.Module, sigma_data: float, label_dim: int = 0):
        super().__init__()
        self.backbone = backbone
        self.sigma_data = float(sigma_data)  # std of the data; sets the coefficient scale
        self.label_dim = int(label_dim)  # number of classes, 0 = unconditional

    def forward(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        s = expand_sigma(sigma, x)
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (s ** 2 + sd2)
        c_out = s * self.sigma_data / (s ** 2 + sd2).sqrt()
        c_in = 1 / (s ** 2 + sd2).sqrt()
        c_noise = s.flatten().log() / 4
        return c_skip * x + c_out * self.backbone(c_in * x, c_noise, labels)


def score(denoiser, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
    """Score of the noised distribution implied by a denoiser: (D(x) - x) / sigma^2."""
    s = expand_sigma(sigma, x)
    return (denoiser(x, sigma, labels) - x) / s ** 2


def sample_sigma(n: int, p_mean: float, p_std: float, generator=None, device=None) -> torch.Tensor:
    """ln(sigma) ~ N(p_mean, p_std^2): the EDM training distribution. Returns ``[n]``."""
    return (torch.randn(n, generator=generator, device=device) * p_std + p_mean).exp()


def karras_curve(u: torch.Tensor, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """sigma on EDM's rho-curve at position ``u`` in [0, 1]: sigma_min at u = 0, sigma_max at u = 1."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (lo + u * (hi - lo)) ** rho


def sample_loss_sigma(dist: str, n: int, p_mean: float, p_std: float, generator=None) -> torch.Tensor:
    """Noise levels ``[n]`` of a distillation loss (the generator's, the fake score's, the GAN term's), as each
    method's paper and code draw them.

    "lognormal": ln(sigma) ~ N(p_mean, p_std^2) (EDM, Diff-Instruct, SiD's fake score). "karras": a uniform index
    in [20, 980] of a 1000-step Karras grid from 0.002 to 80 (DMD, DMD2's generator: min/max_step_percent
    0.02/0.98, both ends included as in DMD2's code). "karras_all": a uniform index over the whole grid [0, 999]
    (DMD2's fake score and its GAN term's noise). "sid": u ~ U[0, 0.8] on the same rho-curve (SiD's
    t ~ U[0, tmax / 1000] with tmax = 800, t = 0 at sigma_min, so sigma runs from 0.002 up to ~24).
    """
    device = None if generator is None else generator.device  # drawn where the generator lives (CPU or CUDA)
    if dist == "lognormal":
        return sample_sigma(n, p_mean, p_std, generator, device)
    if dist in ("karras", "karras_all"):
        lo, hi = (20, 980) if dist == "karras" else (0, KARRAS_GRID - 1)
        index = torch.randint(lo, hi + 1, (n,), generator=generator, device=device)
        return karras_curve(index.double() / (KARRAS_GRID - 1)).float()
    if dist == "sid":
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device) * 0.8
        return karras_curve(u).float()
    raise ValueError(f"dist={dist!r}: must be one of ('lognormal', 'karras', 'karras_all', 'sid')")


KARRAS_GRID = 1000  # points of DMD / DMD2's discretised Karras grid (their num_train_timesteps)


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2, unit loss scale at init."""
    return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def denoising_loss(denoiser, x0: torch.Tensor, sigma: torch.Tensor, labels=None, generator=None,
                   noise=None) -> torch.Tensor:
    """EDM denoising score matching, per sample: lambda(sigma) * ||D(x0 + sigma n) - x0||^2 / dim.

    ``n`` is ``noise`` when given (drawn by the caller), else drawn here from ``generator``."""
    n = noise if noise is not None else torch.randn(
        x0.shape, generator=generator, dtype=x0.dtype,
        device=None if generator is None else generator.device).to(x0.device)  # on the generator's device
    s = expand_sigma(sigma, x0)
    err = (denoiser(x0 + s * n, sigma, labels) - x0) ** 2
    return edm_loss_weight(sigma, denoiser.sigma_data) * err.flatten(1).mean(1)


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """EDM time steps (Eq. 5), decreasing from sigma_max to sigma_min, with a final 0 appended."""
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r}: must be an integer >= 1")
    i = torch.arange(num_steps, dtype=torch.float64)
    ramp = i / max(num_steps - 1, 1)
    t = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def edm_sampler(denoiser, noise: torch.Tensor, labels=None, num_steps: int = 18, sigma_min: float = 0.002,
                sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """Deterministic EDM Heun sampler (EDM Alg. 1) from unit ``noise``; uses 2*num_steps - 1 evaluations."""
    t = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    x = noise.to(torch.float64) * t[0]
    for i in range(num_steps):
        t_cur, t_next = t[i], t[i + 1]
        d_cur = (x - denoiser(x.float(), t_cur.float(), labels).double()) / t_cur
        x_next = x + (t_next - t_cur) * d_cur
        if i < num_steps - 1:  # Heun correction, skipped on the last step to sigma = 0.
            d_next = (x_next - denoiser(x_next.float(), t_next.float(), labels).double()) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()


@torch.no_grad()
def edm_stochastic_sampler(denoiser, noise: torch.Tensor, labels=None, num_steps: int = 256, sigma_min: float = 0.002,
                           sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 40.0, S_min: float = 0.05,
                           S_max: float = 50.0, S_noise: float = 1.003, generators=None) -> torch.Tensor:
    """Stochastic EDM sampler (EDM Alg. 2): Heun steps with noise re-injected ("churn") for sigma in [S_min, S_max].

    Defaults are EDM's ImageNet-64 settings (256 steps, 2*num_steps - 1 = 511 evaluations). ``generators``: one
    ``torch.Generator`` per sample, so sample i's churn noise does not depend on the batch (global RNG if None).
    """
    if generators is not None and len(generators) != len(noise):
        raise ValueError(f"generators: need one per sample ({len(noise)}); got {len(generators)}")
    t = karras_sigmas(num_steps, sigma_min, sigma_max, rho)
    x = noise.to(torch.float64) * t[0]
    for i in range(num_steps):
        t_cur, t_next = t[i], t[i + 1]
        # Increase the noise level to t_hat by adding fresh noise (Alg. 2, lines 5-7).
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            eps = torch.randn_like(x) if generators is None else torch.stack(
                [torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in generators]).to(x.device)
            x = x + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * eps
        # Euler step from t_hat to t_next, then the Heun correction (skipped on the last step to sigma = 0).
        d_cur = (x - denoiser(x.float(), t_hat.float(), labels).double()) / t_hat
        x_next = x + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_next = (x_next - denoiser(x_next.float(), t_next.float(), labels).double()) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.float()


# The teachers' own sampling at the paper's NFE (EDM Table 2 / generate.py settings): FFHQ-64 and AFHQv2-64 use the
# deterministic Heun sampler with 40 steps (NFE 79); ImageNet-64 the stochastic one with 256 steps (NFE 511).
EDM_TEACHER_SAMPLERS = {
    "ffhq64": ("heun", dict(num_steps=40)),
    "afhqv2_64": ("heun", dict(num_steps=40)),
    "imagenet64": ("stochastic", dict(num_steps=256, S_churn=40.0, S_min=0.05, S_max=50.0, S_noise=1.003)),
}


def sample_edm_teacher(denoiser, noise: torch.Tensor, setting: str, labels=None, generators=None) -> torch.Tensor:
    """Samples of an EDM teacher with the sampler and settings EDM reports for ``setting`` (EDM_TEACHER_SAMPLERS)."""
    if setting not in EDM_TEACHER_SAMPLERS:
        raise ValueError(f"setting={setting!r}: must be one of {tuple(EDM_TEACHER_SAMPLERS)}")
    kind, kwargs = EDM_TEACHER_SAMPLERS[setting]
    if kind == "heun":
        return edm_sampler(denoiser, noise, labels, **kwargs)
    return edm_stochastic_sampler(denoiser, noise, labels, generators=generators, **kwargs)


def heun_nfe(num_steps: int) -> int:
    """Network evaluations of ``edm_sampler`` with ``num_steps`` steps."""
    return 2 * num_steps - 1


def fourier_features(c_noise: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[N, dim]`` of the scalar noise level ``[N]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=c_noise.device) / half)
    args = c_noise.reshape(-1, 1).float() * 250.0 * freqs.reshape(1, -1)
    return torch.cat([args.cos(), args.sin()], dim=1)
