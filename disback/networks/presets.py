"""The architectures of the EDM teachers the paper distils, as constructor arguments of ``EDMDenoiser``.

``EDM_TEACHERS`` holds what NVIDIA's released pickles were built with (EDM's ``train.py`` options in its README:
FFHQ-64 and AFHQv2-64 ``--arch=ddpmpp --cres=1,2,2,2`` with dropout 0.05 / 0.25 and augmentation 0.15, whose
augment_dim is 9; ImageNet-64 ``--arch=adm --dropout=0.10 --augment=0``). A converted teacher's own JSON is the
authority for its weights; these presets build the same networks with random weights (throughput, FLOP counts)
and tiny versions of them for tests and the notebooks' smoke scale.
"""
from __future__ import annotations

import torch

from .edm_precond import EDMDenoiser

_DDPMPP = dict(model_type="SongUNet", model_channels=128, channel_mult=[1, 2, 2, 2], num_blocks=4,
               attn_resolutions=[16], embedding_type="positional", encoder_type="standard", decoder_type="standard",
               channel_mult_noise=1, resample_filter=[1, 1], augment_dim=9)
EDM_TEACHERS = {  # setting -> EDMDenoiser keyword arguments of the released teacher
    "ffhq64": dict(img_resolution=64, img_channels=3, label_dim=0, dropout=0.05, **_DDPMPP),    # edm-ffhq-64x64-uncond-vp
    "afhqv2_64": dict(img_resolution=64, img_channels=3, label_dim=0, dropout=0.25, **_DDPMPP),  # edm-afhqv2-64x64-uncond-vp
    "imagenet64": dict(img_resolution=64, img_channels=3, label_dim=1000, model_type="DhariwalUNet",  # edm-imagenet-64x64-cond-adm
                       model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8],
                       dropout=0.10),
}
# The same layouts shrunk for seconds-long CPU runs: two resolutions, one block each, 16 base channels.
TINY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, dropout=0.0)
SIZES = ("full", "tiny")


def edm_teacher_kwargs(setting: str, size: str = "full", resolution: int = 16) -> dict:
    """``EDMDenoiser`` arguments of ``setting``'s teacher at ``size`` ("full", or "tiny" at ``resolution`` pixels)."""
    if setting not in EDM_TEACHERS:
        raise ValueError(f"setting={setting!r}: must be one of {tuple(EDM_TEACHERS)}")
    if size not in SIZES:
        raise ValueError(f"size={size!r}: must be one of {SIZES}")
    kwargs = dict(EDM_TEACHERS[setting])
    if size == "tiny":
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 4 or resolution % 2:
            raise ValueError(f"resolution={resolution!r}: the tiny networks need an even image size >= 4 (one "
                             f"downsampling level)")
        kwargs.update(TINY, img_resolution=resolution, attn_resolutions=[resolution // 2])
    return kwargs


def random_edm_teacher(setting: str, size: str = "full", resolution: int = 16, seed: int = 0,
                       device="cpu") -> EDMDenoiser:
    """A teacher of ``setting``'s architecture with random weights (seeded), in eval mode without gradients."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]), device:  # the CPU stream is restored; a CUDA one is reseeded
        torch.manual_seed(seed)
        net = EDMDenoiser(**edm_teacher_kwargs(setting, size, resolution))
    return net.eval().requires_grad_(False)


def forward_flops(setting: str, size: str = "full", resolution: int = 16) -> int:
    """Floating-point operations of one denoiser forward pass on one sample, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        net = EDMDenoiser(**edm_teacher_kwargs(setting, size, resolution)).eval()
        x = torch.zeros(1, *net.data_shape)
        labels = torch.zeros(1, net.label_dim) if net.label_dim else None  # one-hot form (no index check)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x, torch.ones(1, device="meta"), labels)
    return int(counter.get_total_flops())
