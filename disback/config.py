"""Frozen run configurations, one per stage, validated before any compute.

Every field has a comment; every bad value raises ``ValueError`` naming the field, the value and what
is allowed. ``from_dict`` refuses unknown keys, so a typo in a params YAML fails instead of being ignored.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import math
import numbers
import typing
from dataclasses import dataclass

ARCHS = ("mlp", "unet")
SPACINGS = ("uniform", "early")
METHODS = ("diff_instruct", "dmd", "dmd2", "sid")
# Noise-level distributions of the distillation losses (disback.diffusion.sample_loss_sigma): "lognormal" is EDM's
# ln(sigma) ~ N(p_mean, p_std^2) (Diff-Instruct); "karras" is uniform over the indices [2%, 98%] of a 1000-step
# Karras grid (DMD, DMD2's generator); "karras_all" uniform over the whole grid (DMD2's fake score and GAN term);
# "sid" is SiD's u ~ U[0, 0.8] on the same rho-curve. "auto" = the method's own, for the generator loss
# (METHOD_SIGMA_DIST) and for the fake score's score matching (METHOD_FAKE_SIGMA_DIST; Diff-Instruct's and SiD's
# code train it on EDM's log-normal, DMD2's code on a uniform index over the whole grid, which DMD shares here).
SIGMA_DISTS = ("auto", "lognormal", "karras", "karras_all", "sid")
METHOD_SIGMA_DIST = {"diff_instruct": "lognormal", "dmd": "karras", "dmd2": "karras", "sid": "sid"}
METHOD_FAKE_SIGMA_DIST = {"diff_instruct": "lognormal", "dmd": "karras_all", "dmd2": "karras_all", "sid": "lognormal"}


def whole_number(value, minimum: int = 0) -> bool:
    """An integer (not a bool) >= ``minimum``: what every count argument must be."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def check_count(name: str, value, minimum: int = 1, why: str = "") -> None:
    """Refuse a count argument that is not ``whole_number(value, minimum)``, naming it (``why``: what it counts)."""
    if not whole_number(value, minimum):
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}{f' ({why})' if why else ''}")


def _fail(cls, name, value, allowed):
    raise ValueError(f"{cls.__name__}.{name}={value!r}: must be {allowed}")


class _Config:
    """Shared validation and (de)serialisation for the config dataclasses.

    ``LATE_FIELDS`` names fields added after configs were already hashed and saved: ``to_dict`` (so ``hash`` and every
    saved ``config.json``) leaves each out while it holds its default, so a config that does not use it keeps the hash
    and the files it had before the field existed, and its checkpoints and shared runs still match.
    """

    LATE_FIELDS: typing.ClassVar[tuple] = ()

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), hints[f.name]
            ok = {bool: isinstance(value, bool),
                  int: isinstance(value, int) and not isinstance(value, bool),
                  float: isinstance(value, (int, float)) and not isinstance(value, bool),
                  str: isinstance(value, str)}[kind]
            if not ok:
                _fail(type(self), f.name, value, f"of type {kind.__name__}")
            if kind is float:
                if not math.isfinite(value):
                    _fail(type(self), f.name, value, "a finite number")
                object.__setattr__(self, f.name, float(value))
        self._check()

    def _check(self):  # ranges; overridden per config
        pass

    def _require(self, name, ok, allowed):
        if not ok:
            _fail(type(self), name, getattr(self, name), allowed)

    @classmethod
    def _check_keys(cls, keys) -> None:
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(keys) - set(names), key=str)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; allowed keys are {names}")

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a mapping, refusing unknown keys."""
        if not isinstance(d, collections.abc.Mapping):
            raise TypeError(f"{cls.__name__}.from_dict(d): d must be a mapping of field names to values; got "
                            f"{type(d).__name__}")
        cls._check_keys(d)
        return cls(**d)

    def to_dict(self) -> dict:
        """The fields as a dict, less the ``LATE_FIELDS`` that hold their default."""
        d = dataclasses.asdict(self)
        for f in dataclasses.fields(self):
            if f.name in self.LATE_FIELDS and d[f.name] == f.default:
                del d[f.name]
        return d

    def replace(self, **changes):
        """A copy with ``changes`` applied (validated as a new config); an unknown field name is a ``ValueError``."""
        self._check_keys(changes)
        return dataclasses.replace(self, **changes)

    def hash(self) -> str:
        """Short sha256 of the sorted JSON form: identifies a configuration in manifests and checkpoints."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _positive(cfg, *names):
    for n in names:
        cfg._require(n, getattr(cfg, n) > 0, "> 0")


@dataclass(frozen=True)
class TeacherConfig(_Config):
    arch: str = "mlp"        # backbone: "mlp" for [N, D] vectors, "unet" for [N, C, H, W] images
    width: int = 128         # hidden units (MLP) or base channels (UNet)
    depth: int = 3           # residual blocks (MLP) or blocks per resolution (UNet)
    iters: int = 2000        # denoising-score-matching steps
    batch: int = 256         # samples per step
    lr: float = 2e-3         # Adam learning rate
    ema: float = 0.999       # EMA decay of the returned weights (0 = no EMA)
    p_mean: float = -1.2     # ln(sigma) ~ N(p_mean, p_std^2) during training (EDM)
    p_std: float = 1.2
    ckpt_every: int = 0      # steps between resumable checkpoints when trained with a run_dir (0 = none)
    seed: int = 0            # initialisation and batch sampling

    def _check(self):
        self._require("arch", self.arch in ARCHS, f"one of {ARCHS}")
        _positive(self, "width", "depth", "iters", "batch", "lr", "p_std")
        self._require("ema", 0 <= self.ema < 1, "in [0, 1)")
        self._require("ckpt_every", self.ckpt_every >= 0, ">= 0")
        self._require("seed", 0 <= self.seed < 2 ** 64, "in [0, 2**64) (a torch seed)")


@dataclass(frozen=True)
class DegradeConfig(_Config):
    iters: int = 400         # stage-1 fake-score steps on the frozen initial generator's samples
    num_nodes: int = 4       # N: checkpoints after the teacher; the path holds N + 1 nodes
    spacing: str = "uniform"  # node steps: "uniform" over stage 1, or "early" (quadratic, dense near the teacher)
    batch: int = 256         # generator samples per step
    lr: float = 1e-3         # Adam learning rate of the degrading copy
    sigma_init: float = 2.5  # input sigma of the one-step generator G0 = D(sigma_init * z, sigma_init)
    p_mean: float = -1.2     # ln(sigma) distribution of the score-matching loss
    p_std: float = 1.2
    ckpt_every: int = 0      # steps between resumable checkpoints (0 = none)
    bf16: bool = False       # forward passes and losses under bfloat16 autocast; weights and optimizer stay float32
    seed: int = 0            # generator noise and loss noise

    def _check(self):
        _positive(self, "iters", "num_nodes", "batch", "lr", "sigma_init", "p_std")
        self._require("spacing", self.spacing in SPACINGS, f"one of {SPACINGS}")
        self._require("num_nodes", self.num_nodes <= self.iters, f"<= iters ({self.iters}): one node per step at most")
        self._require("ckpt_every", self.ckpt_every >= 0, ">= 0")
        self._require("seed", 0 <= self.seed < 2 ** 64, "in [0, 2**64) (a torch seed)")


@dataclass(frozen=True)
class DistillConfig(_Config):
    method: str = "diff_instruct"  # generator loss: diff_instruct (VSD), dmd, dmd2 (dmd + TTUR), sid
    backtrack: bool = False  # DisBack: target the reversed degradation path, fake score starts at its last node
    fake_from_path: bool = False  # control arm: fake score starts at the path's last node, target = teacher throughout
    iters: int = 1000        # generator updates (stage 2)
    iters_per_node: int = 100  # generator updates on each intermediate node before switching to the next
    batch: int = 256         # generator samples per update
    lr_gen: float = 1e-4     # Adam learning rate of the generator
    lr_fake: float = 1e-3    # Adam learning rate of the fake score
    fake_steps: int = 1      # fake-score updates per generator update (DMD2's two time-scale rule uses 5)
    sigma_init: float = 2.5  # generator input sigma; must equal the path's when backtracking
    p_mean: float = -1.2     # ln(sigma) distribution of the generator and fake-score losses
    p_std: float = 1.2
    sid_alpha: float = 1.2   # SiD's alpha (only used by method "sid")
    sigma_dist: str = "auto"  # noise levels of the generator loss (SIGMA_DISTS); "auto" = the method's paper
    reg_weight: float = 0.0  # DMD's regression term: weight of mean ||G(z) - teacher ODE(z)||^2 (DMD uses 0.25)
    reg_pairs: int = 1024    # (noise, teacher ODE output) pairs made once per run when reg_weight > 0
    reg_sigma_max: float = 80.0  # the pairs' ODE starts from reg_sigma_max * z (Heun, 18 steps)
    ema: float = 0.0         # EMA decay of the generator reported at eval (0 = none)
    eval_every: int = 100    # generator updates between metric evaluations (0 = start and end only)
    snapshot_every: int = 0  # keep the generator's weights every this many updates in snapshots/ (0 = none)
    ckpt_every: int = 0      # generator updates between resumable checkpoints (0 = none)
    bf16: bool = False       # forward passes and losses under bfloat16 autocast; weights and optimizer stay float32
    seed: int = 0            # generator noise, labels and loss noise
    # DMD2's GAN term (Yin et al. 2024, Sec. 4.3; off at 0): a discriminator head on the fake score's bottleneck
    # features tells noisy real images (``distill(real_data=...)``) from noisy generated ones. DMD2's ImageNet-64
    # weights are 3e-3 (generator) and 1e-2 (fake score) [their released ImageNet script: gen_cls_loss_weight,
    # guidance_cls_loss_weight]. Their distribution-matching loss is a mean over the data dimensions, ours a sum
    # (losses._surrogate), so DMD2's balance on the generator is gan_weight = 3e-3 * dim (dim = C * H * W).
    gan_weight: float = 0.0  # weight of the generator's non-saturating GAN loss (0 = no GAN term, no head)
    gan_weight_fake: float = 1e-2  # weight of the discriminator's loss added to the fake score's (when gan_weight > 0)
    # noise levels of the fake score's score matching and of the GAN term's noisy images (SIGMA_DISTS); "auto" = the
    # method's code (METHOD_FAKE_SIGMA_DIST); "lognormal" = EDM's for every method (this library before 2026-11-27)
    fake_sigma_dist: str = "auto"

    LATE_FIELDS = ("gan_weight", "gan_weight_fake", "fake_sigma_dist")

    def _check(self):
        self._require("method", self.method in METHODS, f"one of {METHODS}")
        _positive(self, "iters", "iters_per_node", "batch", "lr_gen", "lr_fake", "fake_steps",
                  "sigma_init", "p_std")
        self._require("ema", 0 <= self.ema < 1, "in [0, 1)")
        self._require("sigma_dist", self.sigma_dist in SIGMA_DISTS, f"one of {SIGMA_DISTS}")
        self._require("fake_sigma_dist", self.fake_sigma_dist in SIGMA_DISTS, f"one of {SIGMA_DISTS}")
        _positive(self, "reg_pairs", "reg_sigma_max")
        for n in ("eval_every", "snapshot_every", "ckpt_every", "seed", "reg_weight", "gan_weight", "gan_weight_fake"):
            self._require(n, getattr(self, n) >= 0, ">= 0")
        self._require("seed", self.seed < 2 ** 64, "in [0, 2**64) (a torch seed)")
        self._require("fake_from_path", not (self.fake_from_path and self.backtrack),
                      "False when backtrack=True (backtracking already starts the fake score at the last node)")

    @property
    def generator_sigma_dist(self) -> str:
        """The noise-level distribution the generator loss really uses ("auto" resolved per method)."""
        return METHOD_SIGMA_DIST[self.method] if self.sigma_dist == "auto" else self.sigma_dist

    @property
    def fake_score_sigma_dist(self) -> str:
        """The noise-level distribution the fake score (and the GAN term) really uses ("auto" resolved per method)."""
        return METHOD_FAKE_SIGMA_DIST[self.method] if self.fake_sigma_dist == "auto" else self.fake_sigma_dist


def check_config(config, cls, argument: str = "config") -> None:
    """Refuse a ``config`` of another type (a dict, ``None``, another stage's config) before any compute."""
    if not isinstance(config, cls):
        hint = f"; build one with {cls.__name__}.from_dict(...)" if isinstance(config, collections.abc.Mapping) else ""
        raise TypeError(f"{argument}: must be a {cls.__name__}; got {type(config).__name__}{hint}")
