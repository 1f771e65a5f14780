"""FID through torch-fidelity, with a small digits classifier as a registered feature extractor.

The same function computes FID with Inception features at paper scale (``extractor="inception-v3-compat"``
and a local weights file): samples in [-1, 1] become uint8 RGB images, the input format of torch-fidelity's
extractors, and torch-fidelity does the feature extraction, the Gaussian statistics and the distance.
For digits, the features are the penultimate layer of ``DigitsClassifier`` (Inception would see an 8x8
image upsampled to 299x299, far from anything it was trained on).
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from .checkpoint import ArtifactError, fingerprint, load_module, load_tensors, read_json, save_tensors, write_json

EXTRACTORS = ("digits-classifier", "inception-v3-compat")
FID_KEY = "frechet_inception_distance"  # torch-fidelity's name for FID, whatever the features


# ---------------------------------------------------------------- digits classifier

@dataclass(frozen=True)
class ClassifierConfig:
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
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
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


# ---------------------------------------------------------------- torch-fidelity plumbing

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``[N, C, H, W]`` in [-1, 1] -> uint8 RGB ``[N, 3, H, W]`` (grey images repeated), clipped."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images: must be [N, 1 or 3, H, W]; got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"images: {int((~torch.isfinite(images)).sum())} non-finite values")
    u8 = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u8.expand(-1, 3, -1, -1).contiguous()


class ImageSet(Dataset):
    """Images in [-1, 1] served as uint8 ``[3, H, W]`` tensors, the input torch-fidelity's extractors expect."""

    def __init__(self, images: torch.Tensor):
        self.images = to_uint8(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


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


if "digits-classifier" not in FEATURE_EXTRACTORS_REGISTRY:  # a module reload must not register twice
    torch_fidelity.register_feature_extractor("digits-classifier", ClassifierFeatures)


def fid_datasets(input1: Dataset, input2: Dataset, extractor: str, batch_size: int = 500, cuda: bool = False,
                 **options) -> float:
    """FID between two torch Datasets by ``torch_fidelity.calculate_metrics`` with the named feature extractor.

    ``options`` go to torch-fidelity (e.g. ``feature_extractor_weights_path``, ``digits_classifier``,
    ``cache_root`` with ``input2_cache_name``). No cache is written unless ``cache_root`` is given.
    """
    options.setdefault("cache", "cache_root" in options)
    metrics = torch_fidelity.calculate_metrics(
        input1=input1, input2=input2, fid=True, feature_extractor=extractor, batch_size=batch_size, cuda=cuda,
        save_cpu_ram=True, verbose=False, **options)  # save_cpu_ram: no DataLoader worker processes
    return float(metrics[FID_KEY])


def fid(samples: torch.Tensor, reference: torch.Tensor, extractor: str = "digits-classifier", *, classifier=None,
        weights_path=None, feature_layer: str | None = None, cache_dir=None, reference_name: str | None = None,
        batch_size: int = 500, cuda: bool = False) -> float:
    """FID of image ``samples`` against ``reference`` (both ``[N, C, H, W]`` in [-1, 1]) via torch-fidelity.

    ``extractor="digits-classifier"`` needs ``classifier`` (a ``DigitsClassifier``) or ``weights_path`` (its
    folder); ``"inception-v3-compat"`` needs ``weights_path``, a local Inception weights file (nothing is
    downloaded). ``feature_layer`` overrides the extractor's default features (Inception: "2048"; the
    classifier: "penultimate"). With ``cache_dir`` and ``reference_name``, reference statistics are cached there.
    """
    if extractor not in EXTRACTORS:
        raise ValueError(f"extractor={extractor!r}: must be one of {EXTRACTORS}")
    options = {}
    if extractor == "digits-classifier":
        if classifier is None and weights_path is None:
            raise ValueError("extractor='digits-classifier' needs classifier=<DigitsClassifier> or weights_path")
        options["digits_classifier"] = classifier if classifier is not None else load_classifier(weights_path)
    elif weights_path is None:
        raise ValueError("extractor='inception-v3-compat' needs weights_path, a local Inception weights file "
                         "(make download fetches it); torch-fidelity would otherwise download it")
    else:
        options["feature_extractor_weights_path"] = str(weights_path)
    if feature_layer is not None:
        options["feature_layer_fid"] = feature_layer
    if (cache_dir is None) != (reference_name is None):
        raise ValueError("cache_dir and reference_name: give both (to cache reference statistics) or neither")
    if cache_dir is not None:  # torch-fidelity names the cache after the input and the extractor's name
        key = reference_name
        if "digits_classifier" in options:  # one extractor name, many classifiers: name the weights too
            key = f"{reference_name}-{fingerprint(options['digits_classifier'])[:12]}"
        options.update(cache_root=str(cache_dir), input2_cache_name=key)
    return fid_datasets(ImageSet(samples), ImageSet(reference), extractor, batch_size, cuda, **options)

