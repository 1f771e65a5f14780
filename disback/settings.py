"""Experimental settings: the data (or teacher), the reference and the metrics of each, behind one interface.

Notebooks take a ``setting`` parameter and call ``load_setting``; nothing else in them is setting-specific.
A setting is a builder registered under its name with ``register_setting``: ring2d is registered here; every other
setting lives in its own module that registers itself when imported. ``SETTING_MODULES`` names the module of each
known setting, imported only when that setting is asked for, so this module imports none of them (and none of
them imports anything back but ``Setting`` and ``register_setting``).
"""
from __future__ import annotations


from dataclasses import dataclass, field
from importlib import import_module
from typing import Callable

import torch

from .config import check_count
from .data import ring_mixture
from .generator import generate
from .metrics import sample_metrics_2d, wasserstein2

SETTING_MODULES = {"ring2d": __name__, "digits": "disback.digits", "ffhq64": "disback.edm_settings",
                   "afhqv2_64": "disback.edm_settings", "imagenet64": "disback.edm_settings"}
_BUILDERS: dict[str, Callable[..., "Setting"]] = {}  # name -> builder(num_train=, num_reference=, seed=, **options)
_CACHE_OPTIONS: dict[str, str] = {}  # name -> the builder's option that takes a cache folder (``load_setting(cache_dir=)``)


@dataclass
class Setting:
    name: str
    train: torch.Tensor | None            # [N, D] or [N, C, H, W] training data for the teacher (None: data-free)
    train_labels: torch.Tensor | None     # [N] int64 class labels, or None (unconditional)
    reference: object                     # held-out real samples the metrics compare against (or their statistics)
    reference_labels: torch.Tensor | None
    metric_fn: Callable                   # (samples, labels) -> {name: float}
    primary: str                          # the headline metric (lower is better)
    exact: object = None                  # an exact denoiser with .score, when one exists (2-D)
    distance_fn: Callable | None = None   # (samples_a, samples_b) -> the primary metric between two sample sets
    info: dict = field(default_factory=dict)  # what the setting is, for reports
    shape: tuple | None = None            # per-sample data shape of a data-free setting (else the training data's)
    classes: int | None = None            # number of classes of a data-free setting (0 = unconditional)
    teacher_fn: Callable | None = None    # () -> the setting's own teacher denoiser (paper settings: converted EDM)
    eval_batch: int = 4096                # seeds per generator call in ``evaluate`` (paper settings: what fits a GPU)

    @property
    def data_shape(self) -> tuple:
        return tuple(self.shape) if self.shape is not None else tuple(self.train.shape[1:])

    @property
    def label_dim(self) -> int:
        if self.classes is not None:
            return self.classes
        return 0 if self.train_labels is None else int(self.train_labels.max()) + 1

    def evaluate(self, model, num_samples: int, seed_offset: int = 10 ** 6) -> dict:
        """Metrics of a one-step generator ``model`` on ``num_samples`` per-seed samples: drawn on the model's device
        ``eval_batch`` at a time, measured on the CPU copy (``metric_fn`` moves them to its own extractor)."""
        seeds = range(seed_offset, seed_offset + num_samples)
        samples, labels = generate(model, seeds, self.data_shape, self.label_dim, batch=self.eval_batch)
        return self.metric_fn(samples, labels)


def register_setting(name: str, cache_option: str | None = None):
    """Decorator: register ``builder(num_train=, num_reference=, seed=, **options) -> Setting`` as setting ``name``;
    ``cache_option`` names the builder's option that takes a folder to cache what it trains (``load_setting``'s
    ``cache_dir`` goes there)."""
    def add(builder: Callable[..., Setting]) -> Callable[..., Setting]:
        old = _BUILDERS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (builder.__module__, builder.__qualname__):
            raise ValueError(f"setting {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        _BUILDERS[name] = builder
        if cache_option:
            _CACHE_OPTIONS[name] = cache_option
        return builder
    return add


def available_settings() -> tuple[str, ...]:
    """Every setting's name, sorted (imports the known setting modules)."""
    for module in sorted(set(SETTING_MODULES.values())):
        import_module(module)
    return tuple(sorted(_BUILDERS))


def load_setting(name: str, num_train: int = 20000, num_reference: int = 2000, seed: int = 0, cache_dir=None,
                 **kw) -> Setting:
    """Build the setting ``name`` (one of ``available_settings()``) with its ``kw`` options. ``cache_dir``: a folder
    where a setting that trains something to measure with (digits: its feature classifier) keeps it for next time;
    ignored by settings that train nothing, and by one given its own folder in ``kw``."""
    if name not in _BUILDERS and name in SETTING_MODULES:
        import_module(SETTING_MODULES[name])
    if name not in _BUILDERS:
        raise ValueError(f"setting={name!r}: must be one of {available_settings()}")
    for arg, value in (("num_train", num_train), ("num_reference", num_reference)):
        check_count(arg, value)
    if cache_dir is not None and name in _CACHE_OPTIONS:
        kw.setdefault(_CACHE_OPTIONS[name], cache_dir)
    return _BUILDERS[name](num_train=num_train, num_reference=num_reference, seed=seed, **kw)


@register_setting("ring2d")
def ring2d(num_train: int, num_reference: int, seed: int, **kw) -> Setting:
    """An 8-mode ring of Gaussians with unequal weights: exact score, W2 against held-out samples."""
    mix = ring_mixture(kw.pop("num_modes", 8), kw.pop("radius", 2.0), kw.pop("std", 0.2))
    if kw:
        raise ValueError(f"unknown option(s) {sorted(kw)} for setting 'ring2d'; allowed: num_modes, radius, std")
    train = mix.sample(num_train, torch.Generator().manual_seed(seed))
    ref = mix.sample(num_reference, torch.Generator().manual_seed(seed + 1))
    return Setting("ring2d", train, None, ref, None, lambda x, _labels: sample_metrics_2d(x, ref, mix), "w2",
                   exact=mix, distance_fn=wasserstein2,
                   info={"description": "8-mode ring mixture, weights 1:2:...:8", "std": mix.std})
