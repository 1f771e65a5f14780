"""Experimental settings: the data, the held-out reference and the metrics of each, behind one interface.

Notebooks take a ``setting`` parameter and call ``load_setting``; nothing else in them is setting-specific.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .data import ring_mixture
from .generator import generate
from .metrics import sample_metrics_2d, wasserstein2

SETTINGS = ("ring2d", "digits")


@dataclass
class Setting:
    name: str
    train: torch.Tensor                   # [N, D] or [N, C, H, W] training data for the teacher
    train_labels: torch.Tensor | None     # [N] int64 class labels, or None (unconditional)
    reference: torch.Tensor               # held-out real samples the metrics compare against
    reference_labels: torch.Tensor | None
    metric_fn: Callable                   # (samples, labels) -> {name: float}
    primary: str                          # the headline metric (lower is better)
    exact: object = None                  # an exact denoiser with .score, when one exists (2-D)
    distance_fn: Callable | None = None   # (samples_a, samples_b) -> the primary metric between two sample sets
    info: dict = field(default_factory=dict)  # what the setting is, for reports

    @property
    def data_shape(self) -> tuple:
        return tuple(self.train.shape[1:])

    @property
    def label_dim(self) -> int:
        return 0 if self.train_labels is None else int(self.train_labels.max()) + 1

    def evaluate(self, model, num_samples: int, seed_offset: int = 10 ** 6) -> dict:
        """Metrics of a one-step generator ``model`` on ``num_samples`` per-seed samples."""
        seeds = range(seed_offset, seed_offset + num_samples)
        samples, labels = generate(model, seeds, self.data_shape, self.label_dim)
        return self.metric_fn(samples, labels)


def load_setting(name: str, num_train: int = 20000, num_reference: int = 2000, seed: int = 0, **kw) -> Setting:
    """Build the setting ``name`` (one of ``SETTINGS``)."""
    if name == "ring2d":
        mix = ring_mixture(kw.pop("num_modes", 8), kw.pop("radius", 2.0), kw.pop("std", 0.2))
        if kw:
            raise ValueError(f"unknown option(s) {sorted(kw)} for setting 'ring2d'; allowed: num_modes, radius, std")
        train = mix.sample(num_train, torch.Generator().manual_seed(seed))
        ref = mix.sample(num_reference, torch.Generator().manual_seed(seed + 1))
        return Setting(name, train, None, ref, None, lambda x, _labels: sample_metrics_2d(x, ref, mix), "w2",
                       exact=mix, distance_fn=wasserstein2, info={"description": "8-mode ring mixture, weights 1:2:...:8", "std": mix.std})
    if name == "digits":
        from .digits import load_digits_setting  # images: built by disback.digits

        return load_digits_setting(num_reference=num_reference, seed=seed, **kw)
    raise ValueError(f"setting={name!r}: must be one of {SETTINGS}")
