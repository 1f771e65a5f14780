"""DMD2's discriminator (Yin et al. 2024, Sec. 4.3): a small classification head on the fake score's bottleneck.

The fake score network is shared: its bottleneck features of a noisy image, read with a forward hook so no existing
forward changes by a bit, feed ``DiscriminatorHead``, which returns one real-vs-generated logit per sample.
``bottleneck`` names the bottleneck of each denoiser of this repo (the digits UNet's middle blocks, the MLP's last
hidden layer, the EDM U-Nets' last encoder block).
"""
from __future__ import annotations

import torch
from torch import nn

from .edm import DhariwalUNet, SongUNet
from .mlp import MLPBackbone
from .unet import UNetBackbone, _norm


def _backbone(denoiser: nn.Module) -> nn.Module:
    """The backbone inside a denoiser (``EDMPrecond.backbone``, the EDM wrappers' ``.model``)."""
    for name in ("backbone", "model"):
        inner = getattr(denoiser, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return denoiser


def bottleneck(denoiser: nn.Module) -> nn.Module:
    """The module whose output is the bottleneck of ``denoiser``: features ``[N, C, h, w]`` or a vector ``[N, C]``."""
    net = _backbone(denoiser)
    if isinstance(net, UNetBackbone):
        return net.mid[-1]
    if isinstance(net, MLPBackbone):
        return net.out[0]  # SiLU of the last hidden state, the input of the output layer
    if isinstance(net, (SongUNet, DhariwalUNet)):
        return list(net.enc.values())[-1]  # lowest resolution, end of the encoder
    raise ValueError(f"bottleneck: no known bottleneck in {type(net).__name__}; known: UNetBackbone, MLPBackbone, "
                     f"SongUNet, DhariwalUNet")


def bottleneck_features(denoiser: nn.Module, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
    """``denoiser``'s bottleneck features of the noisy ``x`` at ``sigma`` (one forward pass, read by a hook)."""
    captured = []
    handle = bottleneck(denoiser).register_forward_hook(lambda _m, _inp, out: captured.append(out))
    try:
        denoiser(x, sigma, labels)
    finally:
        handle.remove()
    return captured[-1].float()


class DiscriminatorHead(nn.Module):
    """Bottleneck features -> one logit per sample: a strided conv, GroupNorm-SiLU, spatial mean and a linear layer
    for feature maps ``[N, C, h, w]``; an MLP with one SiLU hidden layer for vectors ``[N, C]``."""

    def __init__(self, feature_shape: tuple):
        super().__init__()
        self.feature_shape = tuple(feature_shape)
        c = self.feature_shape[0]
        if len(self.feature_shape) == 3:
            self.body = nn.Sequential(nn.Conv2d(c, c, 3, stride=2, padding=1), _norm(c), nn.SiLU())
        elif len(self.feature_shape) == 1:
            self.body = nn.Sequential(nn.Linear(c, c), nn.SiLU())
        else:
            raise ValueError(f"feature_shape={self.feature_shape}: must be (C, h, w) or (C,)")
        self.logit = nn.Linear(c, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(f"features: expected [N, {', '.join(map(str, self.feature_shape))}], "
                             f"got {tuple(features.shape)}")
        h = self.body(features)
        if h.ndim == 4:
            h = h.mean((2, 3))
        return self.logit(h).squeeze(1)  # [N]


@torch.no_grad()
def make_discriminator_head(denoiser: nn.Module) -> DiscriminatorHead:
    """A new head sized to ``denoiser``'s bottleneck (probed with one zero input in eval mode: no random draw).

    Its initial weights come from torch's global RNG."""
    was_training = denoiser.training
    denoiser.eval()
    try:
        shape, label_dim = tuple(denoiser.data_shape), int(getattr(denoiser, "label_dim", 0))
        param = next(denoiser.parameters())
        x = torch.zeros((1, *shape), device=param.device)
        labels = torch.zeros(1, dtype=torch.long, device=param.device) if label_dim else None
        feats = bottleneck_features(denoiser, x, torch.ones(1, device=param.device), labels)
    finally:
        denoiser.train(was_training)
    return DiscriminatorHead(feats.shape[1:]).to(param.device)
