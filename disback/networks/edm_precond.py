"""The preconditioning wrappers of NVIDIA's EDM pickles, as denoisers ``D(x, sigma, labels)`` for our loops.

``EDMDenoiser`` is EDM's ``EDMPrecond`` (the released ``edm-*`` teachers: FFHQ-64 and AFHQv2-64 with the DDPM++
"SongUNet", ImageNet-64 with the ADM "DhariwalUNet"); ``VPDenoiser`` is its ``VPPrecond`` (the ``baseline-*-vp``
pickles). Both hold the backbone as ``.model`` so state-dict keys match the pickles, take the pickles'
constructor arguments unchanged, and expose what the repo's loops read: ``data_shape``, ``label_dim``,
``sigma_data``. Labels are class indices ``[N]`` (int64, as everywhere in this repo) or one-hot ``[N, label_dim]``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..diffusion import expand_sigma
from .edm import BACKBONES


class _Preconditioned(nn.Module):
    """Shared part: the backbone, label encoding and the fp16 rule of EDM (fp16 only on CUDA with use_fp16)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str,
                 out_channels: int, model_kwargs: dict):
        super().__init__()
        if model_type not in BACKBONES:
            raise ValueError(f"model_type={model_type!r}: must be one of {tuple(BACKBONES)}")
        self.img_resolution, self.img_channels = int(img_resolution), int(img_channels)
        self.label_dim, self.use_fp16, self.model_type = int(label_dim), bool(use_fp16), model_type
        self.data_shape = (self.img_channels, self.img_resolution, self.img_resolution)  # per-sample shape
        self.model = BACKBONES[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                           out_channels=out_channels, label_dim=label_dim, **model_kwargs)

    def class_labels(self, labels, x: torch.Tensor):
        """``None`` (unconditional), or float ``[N, label_dim]``: one-hot from indices, zeros when ``labels`` is None."""
        if self.label_dim == 0:
            return None
        if labels is None:
            return torch.zeros(1, self.label_dim, device=x.device)
        if labels.ndim == 1 and not labels.is_floating_point():
            if labels.min() < 0 or labels.max() >= self.label_dim:
                raise ValueError(f"labels: class indices must lie in [0, {self.label_dim}); got "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
            return nn.functional.one_hot(labels, self.label_dim).float()
        return labels.float().reshape(-1, self.label_dim)

    def backbone(self, x_in: torch.Tensor, c_noise: torch.Tensor, labels, x: torch.Tensor) -> torch.Tensor:
        """F(c_in x, c_noise) in the working dtype, returned as float32."""
        dtype = torch.float16 if self.use_fp16 and x.is_cuda else torch.float32
        return self.model(x_in.to(dtype), c_noise.flatten(), class_labels=self.class_labels(labels, x)).float()


class EDMDenoiser(_Preconditioned):
    """EDM preconditioning (EDM Table 1): D = c_skip x + c_out F(c_in x, ln(sigma) / 4)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = float("inf"), sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = float(sigma_min), float(sigma_max), float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at ``sigma``."""
        sd2 = self.sigma_data ** 2
        return (sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt(),
                1 / (sigma ** 2 + sd2).sqrt(), sigma.log() / 4)

    def forward(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        x = x.float()
        c_skip, c_out, c_in, c_noise = self.coefficients(expand_sigma(sigma, x))
        return c_skip * x + c_out * self.backbone(c_in * x, c_noise, labels, x)


class VPDenoiser(_Preconditioned):
    """VP preconditioning (EDM Table 1, Song et al. 2021): D = x - sigma F(x / sqrt(1 + sigma^2), (M - 1) t(sigma)).

    ``sigma_data`` is not part of VP's formula; it is 0.5 (EDM's data scale) for the loops' loss weights.
    """

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, img_channels, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = float(beta_d), float(beta_min), int(M), float(epsilon_t)
        self.sigma_min, self.sigma_max = float(self.sigma(epsilon_t)), float(self.sigma(1.0))
        self.sigma_data = 0.5

    def sigma(self, t):
        """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return ((0.5 * self.beta_d * t ** 2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: torch.Tensor) -> torch.Tensor:
        """t(sigma), the inverse of ``sigma``."""
        return ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) at ``sigma``."""
        return (torch.ones_like(sigma), -sigma, 1 / (sigma ** 2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma))

    def forward(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        x = x.float()
        c_skip, c_out, c_in, c_noise = self.coefficients(expand_sigma(sigma, x))
        return c_skip * x + c_out * self.backbone(c_in * x, c_noise, labels, x)


PRECONDITIONERS = {"EDMPrecond": EDMDenoiser, "VPPrecond": VPDenoiser}


def build_edm_denoiser(class_name: str, kwargs: dict) -> _Preconditioned:
    """The denoiser EDM's ``class_name`` (``EDMPrecond`` or ``VPPrecond``) builds from its constructor ``kwargs``."""
    if class_name not in PRECONDITIONERS:
        raise ValueError(f"preconditioning class {class_name!r}: must be one of {tuple(PRECONDITIONERS)}")
    try:
        return PRECONDITIONERS[class_name](**kwargs)
    except TypeError as e:
        raise ValueError(f"{class_name}({', '.join(f'{k}=...' for k in kwargs)}): arguments do not fit: {e}") from None
