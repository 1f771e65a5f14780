"""Denoiser backbones. Each is ``F(x_in, c_noise, labels)``; ``EDMPrecond`` turns one into ``D(x, sigma, labels)``."""
from __future__ import annotations

from .edm import DhariwalUNet, SongUNet
from .edm_precond import EDMDenoiser, VPDenoiser, build_edm_denoiser
from .mlp import MLPBackbone


def build_backbone(arch: str, data_shape: tuple, width: int, depth: int, label_dim: int = 0):
    """The backbone named ``arch`` for data of per-sample shape ``data_shape``."""
    if arch == "mlp":
        if len(data_shape) != 1:
            raise ValueError(f"arch='mlp' needs vector data [N, D]; got per-sample shape {tuple(data_shape)}")
        return MLPBackbone(data_shape[0], hidden=width, depth=depth, label_dim=label_dim)
    if arch == "unet":
        if len(data_shape) != 3:
            raise ValueError(f"arch='unet' needs image data [N, C, H, W]; got per-sample shape {tuple(data_shape)}")
        from .unet import UNetBackbone

        return UNetBackbone(data_shape[0], width=width, depth=depth, label_dim=label_dim)
    raise ValueError(f"arch={arch!r}: must be one of ('mlp', 'unet')")
