"""The class-conditional handwritten-digits setting: sklearn's 8x8 digits, a held-out reference, classifier FID.

Metrics of generated digits (lower FID is better):
- ``fid``: FID through torch-fidelity with a digits classifier's penultimate features, against the held-out
  real digits (the classifier never saw them);
- ``accuracy``: how often the classifier recognises the class a sample was generated for;
- ``fd_pixels``: Frechet distance between Gaussians fitted to raw pixels (no network involved).

The classifier (``DigitsClassifier``) is a small CNN trained on the train split; its torch-fidelity extractor
``ClassifierFeatures`` is registered as ``"digits-classifier"`` when this module is imported (``fid.fid``
imports it when that extractor is asked for). Inception would see an 8x8 image upsampled to 299x299, far from
anything it was trained on.
"""
from __future__ import annotations

import copy
import os
import shutil
import hashlib
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch_fidelity
from scipy.linalg import LinAlgWarning
from torch import nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from .checkpoint import (ArtifactError, load_module, load_tensors, read_json, save_tensors, tensor_digest,
                         write_json)
from .data import load_digits
from .fid import fid
from .metrics import frechet_distance_samples
from .settings import Setting, register_setting
from .steps import adam

OPTIONS = ("size", "classifier_dir", "held_out")
EXTRACTOR = "digits-classifier"  # the name torch-fidelity knows ClassifierFeatures by


# ---------------------------------------------------------------- the feature classifier

@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture and training of the digits feature classifier; ``hash()`` names its cache folder."""

    size: int = 8            # image side (8 or 16); the classifier only accepts this size
    width: int = 32          # channels of the convolutions
    feat_dim: int = 64       # penultimate (feature) layer width: the FID feature dimension
    epochs: int = 15         # passes over the training split
    batch: int = 64          # images per step
    lr: float = 1e-2         # Adam learning rate (cosine decay to 0)
    shift: int = 1           # random translation by up to this many pixels (augmentation)
    seed: int = 0            # initialisation, batches and augmentation

    def hash(self) -> str:
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:12]


class DigitsClassifier(nn.Module):
    """CNN on ``[N, 1, size, size]`` images in [-1, 1]: two resolutions of 3x3 convs, then a feature layer."""

    def __init__(self, size: int = 8, width: int = 32, feat_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(8 * width, feat_dim), nn.SiLU())
        self.head = nn.Linear(feat_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``[N, feat_dim]``: the FID features."""
        if x.ndim != 4 or x.shape[1:] != (1, self.size, self.size):
            raise ValueError(f"classifier input: must be [N, 1, {self.size}, {self.size}] in [-1, 1]; "
                             f"got {tuple(x.shape)}")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _random_shift(x: torch.Tensor, shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``shift`` pixels, filling with background (-1)."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift,) * 4, value=-1.0)
    dy, dx = torch.randint(2 * shift + 1, (2, n, 1), generator=gen)
    rows = (dy + torch.arange(h))[:, :, None]  # [N, H, 1]
    cols = (dx + torch.arange(w))[:, None, :]  # [N, 1, W]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def class_accuracy(classifier: nn.Module, samples: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``samples`` that ``classifier`` assigns to ``labels`` (the requested classes)."""
    if labels is None or len(labels) != len(samples):
        raise ValueError(f"labels: need one per sample ({len(samples)}); got "
                         f"{None if labels is None else len(labels)}")
    was_training = classifier.training
    logits = classifier.eval()(samples.clamp(-1, 1))
    classifier.train(was_training)
    return float((logits.argmax(1) == labels).float().mean())


def train_classifier(images, labels, held_images, held_labels, config: ClassifierConfig = ClassifierConfig()):
    """Train ``DigitsClassifier`` on ``images``; its held-out accuracy is stored as ``.accuracy``. Deterministic."""
    if images.shape[-1] != config.size:
        raise ValueError(f"images are {images.shape[-1]}px but config.size={config.size}")
    gen = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
        torch.manual_seed(config.seed)
        net = DigitsClassifier(config.size, config.width, config.feat_dim, int(labels.max()) + 1)
    steps = config.epochs * (len(images) // config.batch)
    opt = adam(net.parameters(), config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(config.epochs):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images) - config.batch + 1, config.batch):
            idx = perm[i:i + config.batch]
            x = _random_shift(images[idx], config.shift, gen) if config.shift else images[idx]
            loss = nn.functional.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    net.eval().requires_grad_(False)
    net.config = config
    net.accuracy = class_accuracy(net, held_images, held_labels)
    return net


def save_classifier(classifier: DigitsClassifier, directory, extra: dict | None = None) -> Path:
    """Write ``classifier.safetensors`` and ``classifier.json`` (config, held-out accuracy, sha256)."""
    directory = Path(directory)
    sha = save_tensors(directory / "classifier.safetensors", classifier.state_dict())
    write_json(directory / "classifier.json", {"config": asdict(classifier.config), "accuracy": classifier.accuracy,
                                               "num_classes": classifier.head.out_features, "sha256": sha,
                                               **(extra or {})})
    return directory


def load_classifier(directory) -> DigitsClassifier:
    """Strictly load a classifier written by ``save_classifier`` (checks the weights' sha256)."""
    meta = read_json(Path(directory) / "classifier.json")
    try:
        config = ClassifierConfig(**meta["config"])
    except TypeError as e:
        raise ArtifactError(f"{directory}/classifier.json: config does not fit ClassifierConfig: {e}") from None
    net = DigitsClassifier(config.size, config.width, config.feat_dim, meta["num_classes"])
    load_module(net, load_tensors(Path(directory) / "classifier.safetensors", meta["sha256"]))
    net.eval().requires_grad_(False)
    net.config, net.accuracy = config, meta["accuracy"]
    return net


# ---------------------------------------------------------------- its torch-fidelity extractor

class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity feature extractor: a ``DigitsClassifier``'s penultimate layer (or logits) on uint8 images.

    The classifier comes from the keyword ``digits_classifier`` (a module, copied) or from
    ``feature_extractor_weights_path`` (a folder written by ``save_classifier``).
    """

    def __init__(self, name, features_list, digits_classifier=None, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if digits_classifier is not None:
            self.classifier = copy.deepcopy(digits_classifier)
        elif feature_extractor_weights_path is not None:
            self.classifier = load_classifier(feature_extractor_weights_path)
        else:
            raise ValueError(f"feature extractor {name!r} needs digits_classifier=<DigitsClassifier> or "
                             "feature_extractor_weights_path=<folder written by save_classifier>")

    @staticmethod
    def get_provided_features_list():
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "penultimate"

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        raise NotImplementedError("ClassifierFeatures is not compiled")

    def forward(self, images: torch.Tensor):
        if images.dtype != torch.uint8:
            raise ValueError(f"images: torch-fidelity feeds uint8 [N, 3, H, W]; got {images.dtype}")
        x = images.float().mean(1, keepdim=True) / 127.5 - 1  # [N, 1, H, W] in [-1, 1]
        feats = self.classifier.features(x)
        out = {"penultimate": feats, "logits": self.classifier.head(feats)}
        return tuple(out[name] for name in self.features_list)


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:  # a module reload must not register twice
    torch_fidelity.register_feature_extractor(EXTRACTOR, ClassifierFeatures)


# ---------------------------------------------------------------- the setting

def digits_classifier(train, train_labels, held, held_labels, config: ClassifierConfig, directory=None):
    """The feature classifier: loaded from ``directory`` if this config and data were trained there, else trained
    (seconds) and, with a ``directory``, saved into a subfolder named after the config and data hashes."""
    if directory is None:
        return train_classifier(train, train_labels, held, held_labels, config)
    data_hash = tensor_digest(train, train_labels, held, held_labels)
    folder = Path(directory) / f"digits{config.size}px-{config.hash()}-{data_hash[:12]}"
    if (folder / "classifier.json").is_file():
        clf = load_classifier(folder)
        if clf.config != config:
            raise ArtifactError(f"{folder}: holds a classifier of config {clf.config}, expected {config}")
        return clf
    clf = train_classifier(train, train_labels, held, held_labels, config)
    # Written beside, then renamed: notebooks started side by side may train it at once; the first rename wins and
    # a reader never sees half a folder (both trained the same deterministic weights).
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    save_classifier(clf, tmp, {"data_sha256": data_hash})
    try:
        os.rename(tmp, folder)
    except OSError:
        if not (folder / "classifier.json").is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return clf


@register_setting("digits", cache_option="classifier_dir")
def _digits(num_train: int, num_reference: int, seed: int, **kw) -> Setting:
    """The registered builder: ``num_train`` is not an option here (the split fixes the training set)."""
    return load_digits_setting(num_reference=num_reference, seed=seed, **kw)


def load_digits_setting(num_reference: int = 2000, seed: int = 0, size: int = 8, classifier_dir=None,
                        **kw) -> Setting:
    """The digits setting: train split for the teacher, held-out split as FID reference, classifier metrics.

    ``seed`` picks the stratified split and seeds the classifier; keep it fixed across a method's seeds so
    all runs share one reference. ``num_reference`` caps the reference (the held-out split has ~360 images).
    ``classifier_dir``: a folder to cache the trained classifier in (``None``: train in memory, ~4 s).
    """
    held_out = kw.pop("held_out", 0.2)
    if kw:
        raise ValueError(f"unknown option(s) {sorted(kw)} for setting 'digits'; allowed: {', '.join(OPTIONS)}")
    if num_reference < 2:
        raise ValueError(f"num_reference={num_reference!r}: must be >= 2")
    train, train_labels, held, held_labels = load_digits(size, seed, held_out)
    classifier = digits_classifier(train, train_labels, held, held_labels, ClassifierConfig(size=size, seed=seed),
                                   classifier_dir)
    reference, reference_labels = held[:num_reference], held_labels[:num_reference]

    def metric_fn(samples: torch.Tensor, labels: torch.Tensor | None) -> dict:
        if tuple(samples.shape[1:]) != tuple(reference.shape[1:]):
            raise ValueError(f"samples: must be [N, {', '.join(map(str, reference.shape[1:]))}]; "
                             f"got {tuple(samples.shape)}")
        with warnings.catch_warnings():  # border pixels are constant in real digits: a singular covariance is expected
            warnings.simplefilter("ignore", LinAlgWarning)
            fd_pixels = frechet_distance_samples(samples.flatten(1), reference.flatten(1))
        out = {"fid": fid(samples, reference, classifier=classifier), "fd_pixels": fd_pixels}
        if labels is not None:
            out["accuracy"] = class_accuracy(classifier, samples, labels)
        return out

    info = {"description": f"sklearn handwritten digits, {size}x{size}, 10 classes, held-out split as reference",
            "size": size, "num_train": len(train), "num_reference": len(reference), "held_out": held_out,
            "classifier_accuracy": classifier.accuracy,
            "fid_real_floor": fid(reference, train, classifier=classifier)}  # held-out vs train: real data's FID
    metric_fn.classifier = classifier  # for notebooks that look at per-class results
    return Setting("digits", train, train_labels, reference, reference_labels, metric_fn, "fid", info=info,
                   distance_fn=lambda a, b: fid(a, b, classifier=classifier))
