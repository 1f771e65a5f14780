"""The one-step generator: a copy of the teacher used as a single denoising step from pure noise."""
from __future__ import annotations

import copy
from functools import lru_cache

import torch
from torch import nn

from .config import check_count


class OneStepGenerator(nn.Module):
    """G(z, labels) = D(input_scale * z, sigma_init, labels), with D initialised from the teacher.

    ``input_scale`` is ``sigma_init`` (noise at exactly that level) unless the denoiser defines
    ``one_step_input_scale(sigma)`` (Stable Diffusion: unit noise as the UNet's latent, DMD2's convention).
    """

    def __init__(self, denoiser: nn.Module, sigma_init: float, input_scale: float | None = None):
        super().__init__()
        self.denoiser = denoiser
        self.sigma_init = float(sigma_init)
        self.input_scale = float(sigma_init if input_scale is None else input_scale)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.denoiser(self.input_scale * z, self.sigma_init, labels)


def check_teacher_module(teacher) -> None:
    """Refuse a teacher that is not a trainable network (``None``, an exact ``GaussianMixture``, a file path)."""
    if not isinstance(teacher, nn.Module) or next(teacher.parameters(), None) is None:
        raise TypeError(f"teacher: must be a denoiser network (torch.nn.Module with weights, e.g. from train_teacher "
                        f"or load_teacher); got {type(teacher).__name__}")


def trainable_copy(teacher: nn.Module) -> nn.Module:
    """A deep copy of the teacher to train (fake score, generator, degrading copy). A teacher with classifier-free
    guidance (``guidance_scale``) gives an unguided copy: these model the generator's distribution, not a target."""
    m = copy.deepcopy(teacher)
    if getattr(m, "guidance_scale", 1.0) != 1.0:
        m.guidance_scale = 1.0
    return m


def make_generator(teacher: nn.Module, sigma_init: float) -> OneStepGenerator:
    """A trainable one-step generator initialised from (a trainable copy of) the teacher."""
    scale = getattr(teacher, "one_step_input_scale", None)
    g = OneStepGenerator(trainable_copy(teacher), sigma_init, scale(sigma_init) if scale else None)
    g.requires_grad_(True)
    return g


def frozen_copy(module: nn.Module) -> nn.Module:
    """A deep copy with gradients off, in eval mode."""
    m = copy.deepcopy(module).eval()
    m.requires_grad_(False)
    return m


def seeded_noise(seeds, shape, device=None) -> torch.Tensor:
    """``[len(seeds), *shape]`` unit noise where row i depends only on seeds[i] (not on the batch)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def seeded_labels(seeds, label_dim: int) -> torch.Tensor | None:
    """Class labels drawn per seed (uniform), or ``None`` for an unconditional model."""
    if label_dim == 0:
        return None
    return torch.tensor([int(torch.randint(label_dim, (1,), generator=torch.Generator().manual_seed(int(s) + 7919)))
                         for s in seeds])


CACHED_NOISE_NUMEL = 10 ** 7  # evaluation noise up to this size is drawn once per process and reused


@lru_cache(maxsize=8)
def _cached_latents(seeds: tuple, data_shape: tuple, label_dim: int):
    return seeded_noise(seeds, data_shape), seeded_labels(seeds, label_dim)


def seeded_latents(seeds, data_shape, label_dim: int = 0):
    """``(seeded_noise, seeded_labels)`` of ``seeds``; small sets (every evaluation of a run uses the same seeds)
    are kept in a per-process cache, so they are drawn once rather than at each evaluation. Bitwise the same."""
    seeds, data_shape = tuple(int(s) for s in seeds), tuple(int(d) for d in data_shape)
    numel = len(seeds) * int(torch.Size(data_shape).numel())
    z, labels = (_cached_latents if numel <= CACHED_NOISE_NUMEL else _cached_latents.__wrapped__)(
        seeds, data_shape, int(label_dim))
    return z.clone(), None if labels is None else labels.clone()


def module_device(module: nn.Module) -> torch.device:
    """Where a module's weights are (the CPU for a module without any)."""
    return next(module.parameters(), torch.empty(0)).device


@torch.no_grad()
def generate(generator: nn.Module, seeds, data_shape, label_dim: int = 0, labels=None, batch: int = 4096,
             device="cpu"):
    """Samples G(z_i) for each seed i; labels drawn per seed unless given. Returns (samples, labels).

    The noise is drawn per seed on the CPU (sample i depends on seeds[i] alone, on any device) and goes to G's
    device ``batch`` seeds at a time; the samples come back on ``device`` (default the CPU, so that 50k samples
    never sit on a GPU at once), the labels where they were drawn or given."""
    if not isinstance(seeds, (int, str, bytes)) and not hasattr(seeds, "__len__"):
        seeds = tuple(seeds)  # an iterator: read once here (seeded_latents reads it as a tuple too)
    _check_generate(generator, seeds, data_shape, label_dim, labels, batch)
    z, seeded = seeded_latents(seeds, data_shape, label_dim if labels is None else 0)
    labels = seeded if labels is None else labels
    where = module_device(generator)
    was_training = generator.training
    generator.eval()
    out = torch.cat([generator(z[i:i + batch].to(where), None if labels is None else labels[i:i + batch].to(where))
                     .to(device) for i in range(0, len(z), batch)])
    generator.train(was_training)
    return out, labels


def check_label_range(name: str, labels: torch.Tensor, classes: int, whose: str) -> None:
    """Refuse class labels outside ``[0, classes)`` (they would index past a network's label embedding)."""
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"{name}: must be in [0, {classes}) ({whose}); got values in [{int(labels.min())}, "
                         f"{int(labels.max())}]")


def _check_generate(generator, seeds, data_shape, label_dim, labels, batch) -> None:
    """Refuse arguments ``generate`` would otherwise fail on deep inside the network (or silently misuse)."""
    if isinstance(seeds, (int, str, bytes)) or len(seeds) == 0:
        raise ValueError(f"seeds: must be a non-empty sequence of integer seeds (e.g. range(n)); got {seeds!r}")
    check_count("batch", batch)
    denoiser = getattr(generator, "denoiser", generator)
    expected = getattr(denoiser, "data_shape", None)
    if expected is not None and tuple(int(d) for d in data_shape) != tuple(expected):
        raise ValueError(f"data_shape={tuple(data_shape)}: the generator's network takes samples of shape "
                         f"{tuple(expected)}")
    classes = getattr(denoiser, "label_dim", None)
    if labels is not None:
        if not torch.is_tensor(labels) or labels.shape != (len(seeds),) or labels.is_floating_point():
            raise ValueError(f"labels: must be an integer tensor [{len(seeds)}] (one per seed); got "
                             f"{tuple(labels.shape) if torch.is_tensor(labels) else type(labels).__name__}")
        if classes:
            check_label_range("labels", labels, classes, "the network's classes")
    elif classes is not None and label_dim and label_dim != classes:
        raise ValueError(f"label_dim={label_dim!r}: the generator's network has label_dim={classes} (0 = "
                         f"unconditional)")


class EMA:
    """Exponential moving average of a module's weights, kept in a frozen copy (``decay=0``: the copy tracks exactly)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.module = frozen_copy(module)

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for e, p in zip(self.module.parameters(), module.parameters()):
            e.lerp_(p, 1 - self.decay)
