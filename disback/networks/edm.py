"""EDM-compatible U-Nets: DDPM++ ("SongUNet") and ADM ("DhariwalUNet"), written for this repo.

Module and parameter names follow the layout of NVIDIA's released EDM networks (Karras et al. 2022,
``training/networks.py``), so their weights load strictly into these modules (``disback.edm_pickle``
converts the pickles). Each backbone is ``F(x_in, c_noise, class_labels)``: ``class_labels`` is a float
``[N, label_dim]`` (one-hot) tensor; ``networks.edm_precond`` wraps a backbone into ``D(x, sigma, labels)``.
Only the configurations of the released 64x64 teachers are built: positional noise embedding, standard
encoder and decoder (the NCSN++ variants are refused by name).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import silu


class Linear(nn.Module):
    """y = x W^T + b, weights cast to the input's dtype (fp16 on GPU)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ self.weight.to(x.dtype).t()
        return x if self.bias is None else x + self.bias.to(x.dtype)


class Conv2d(nn.Module):
    """Square convolution (``kernel`` 0 = none) with optional 2x up/downsampling by a separable FIR filter first."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter=(1, 1)):
        super().__init__()
        if up and down:
            raise ValueError("Conv2d: up and down cannot both be set")
        self.in_channels, self.out_channels, self.up, self.down = in_channels, out_channels, up, down
        fan_in = in_channels * kernel * kernel
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel) / math.sqrt(max(fan_in, 1))) \
            if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum() ** 2  # [1, 1, k, k], sums to 1
        self.register_buffer("resample_filter", f if up or down else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up or self.down:
            f = self.resample_filter.to(x.dtype)
            pad = (f.shape[-1] - 1) // 2
            if self.up:  # transposed conv with 4x the filter keeps the mean: nearest-like 2x upsampling
                x = nn.functional.conv_transpose2d(x, (4 * f).tile(self.in_channels, 1, 1, 1),
                                                   groups=self.in_channels, stride=2, padding=pad)
            else:
                x = nn.functional.conv2d(x, f.tile(self.in_channels, 1, 1, 1), groups=self.in_channels, stride=2,
                                         padding=pad)
        if self.weight is not None:
            x = nn.functional.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation with min(32, C / 4) groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class PositionalEmbedding(nn.Module):
    """Sinusoidal embedding ``[N, num_channels]`` = [cos(x f), sin(x f)], f geometric from 1 to 1/max_positions."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1 / self.max_positions) ** exponent
        x = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([x.cos(), x.sin()], dim=1)


class UNetBlock(nn.Module):
    """Residual block of both U-Nets: norm-SiLU-conv (optional resampling), embedding as shift or scale+shift,
    norm-SiLU-dropout-conv, skip, then optional multi-head self-attention; outputs scaled by ``skip_scale``."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5, resample_filter=(1, 1),
                 resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, float(skip_scale), adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = silu(self.norm1(h + params))
        h = self.conv1(nn.functional.dropout(h, p=self.dropout, training=self.training))
        h = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            # Channels are laid out (head, channel, q/k/v): [N * heads, C / heads, 3, H * W].
            q, k, v = self.qkv(self.norm2(h)).reshape(h.shape[0] * self.num_heads, h.shape[1] // self.num_heads, 3,
                                                      -1).unbind(2)
            logits = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(k.shape[1]))
            w = logits.softmax(dim=2).to(q.dtype)  # [N * heads, HW (query), HW (key)]
            a = torch.einsum("nqk,nck->ncq", w, v)
            h = (self.proj(a.reshape(*h.shape)) + h) * self.skip_scale
        return h


def _check_variant(name: str, value, allowed: tuple):
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: only {allowed} is implemented (the released 64x64 EDM teachers)")


def _unet_layout(img_resolution: int, in_channels: int, first_channels: int, model_channels: int, channel_mult,
                 num_blocks: int, attn_resolutions, block: dict, last_only: bool):
    """Encoder and decoder ``ModuleDict``s of both EDM U-Nets, with EDM's module names; returns (enc, dec, channels).

    Encoder: an input conv, then per resolution a downsampling block (below the top) and ``num_blocks`` blocks.
    Decoder: two middle blocks at the bottom, an upsampling block above it, and ``num_blocks + 1`` blocks that each
    take one skip. Attention at ``attn_resolutions``: on every decoder block, or (``last_only``, DDPM++) the last.
    """
    enc, cout = nn.ModuleDict(), in_channels
    for level, mult in enumerate(channel_mult):
        res = img_resolution >> level
        if level == 0:
            cin, cout = cout, first_channels
            enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
        else:
            enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **block)
        for idx in range(num_blocks):
            cin, cout = cout, model_channels * mult
            enc[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **block)
    skips = [m.out_channels for m in enc.values()]
    dec = nn.ModuleDict()
    for level, mult in reversed(list(enumerate(channel_mult))):
        res = img_resolution >> level
        if level == len(channel_mult) - 1:
            dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **block)
            dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **block)
        else:
            dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **block)
        for idx in range(num_blocks + 1):
            cin, cout = cout + skips.pop(), model_channels * mult
            attn = res in attn_resolutions and (idx == num_blocks or not last_only)
            dec[f"{res}x{res}_block{idx}"] = UNetBlock(cin, cout, attention=attn, **block)
    return enc, dec, cout


class SongUNet(nn.Module):
    """DDPM++ U-Net as in EDM: ``channel_mult`` resolutions of ``num_blocks`` blocks, attention at 16x16."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 128, channel_mult=(1, 2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.10, label_dropout: float = 0.0,
                 embedding_type: str = "positional", channel_mult_noise: int = 1, encoder_type: str = "standard",
                 decoder_type: str = "standard", resample_filter=(1, 1)):
        super().__init__()
        _check_variant("embedding_type", embedding_type, ("positional",))
        _check_variant("encoder_type", encoder_type, ("standard",))
        _check_variant("decoder_type", decoder_type, ("standard",))
        self.label_dropout = label_dropout
        emb_channels, noise_channels = model_channels * channel_mult_emb, model_channels * channel_mult_noise
        block = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6,
                     resample_filter=resample_filter, resample_proj=True, adaptive_scale=False)

        # Mapping: noise level (and class, augmentation) -> embedding.
        self.map_noise = PositionalEmbedding(noise_channels, endpoint=True)
        self.map_label = Linear(label_dim, noise_channels) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        # Encoder and decoder (EDM's layout and names); the decoder ends in an auxiliary norm + conv at the top.
        self.enc, self.dec, cout = _unet_layout(img_resolution, in_channels, model_channels, model_channels,
                                                channel_mult, num_blocks, attn_resolutions, block, last_only=True)
        res = img_resolution
        self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
        self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(*emb.shape)  # [cos, sin] -> [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                labels = labels * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = silu(self.map_layer1(silu(self.map_layer0(emb))))
        return _unet_pass(self.enc, self.dec, x, emb)


def _unet_pass(enc: nn.ModuleDict, dec: nn.ModuleDict, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Encoder then decoder of either U-Net; returns the last decoder output (SongUNet: its aux conv)."""
    skips = []
    for block in enc.values():
        x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
        skips.append(x)
    out = None
    for name, block in dec.items():
        if name.endswith("_aux_norm"):
            out = block(x)
        elif name.endswith("_aux_conv"):
            out = block(silu(out))
        else:
            if "_block" in name:  # decoder blocks take the matching encoder output
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
    return x if out is None else out


class DhariwalUNet(nn.Module):
    """ADM U-Net as in EDM: adaptive scale/shift blocks, attention at 32, 16 and 8, class embedding added late."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, label_dim: int = 0,
                 augment_dim: int = 0, model_channels: int = 192, channel_mult=(1, 2, 3, 4), channel_mult_emb: int = 4,
                 num_blocks: int = 3, attn_resolutions=(32, 16, 8), dropout: float = 0.10, label_dropout: float = 0.0):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout)

        # Mapping.
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)
        self.map_label = Linear(label_dim, emb_channels, bias=False) if label_dim else None

        # Encoder and decoder (EDM's layout and names).
        self.enc, self.dec, cout = _unet_layout(img_resolution, in_channels, model_channels * channel_mult[0],
                                                model_channels, channel_mult, num_blocks, attn_resolutions, block,
                                                last_only=False)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                labels = labels * (torch.rand([x.shape[0], 1], device=x.device) >= self.label_dropout).to(labels.dtype)
            emb = emb + self.map_label(labels)
        x = _unet_pass(self.enc, self.dec, x, silu(emb))
        return self.out_conv(silu(self.out_norm(x)))


BACKBONES = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}
