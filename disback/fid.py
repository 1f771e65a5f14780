"""FID through torch-fidelity: images in [-1, 1] as uint8 RGB datasets, any registered feature extractor.

The same function computes FID with Inception features at paper scale (``extractor="inception-v3-compat"``
and a local weights file): samples in [-1, 1] become uint8 RGB images, the input format of torch-fidelity's
extractors, and torch-fidelity does the feature extraction, the Gaussian statistics and the distance.
For digits, the features are the penultimate layer of the digits classifier (``disback.digits``, which
registers its extractor as ``"digits-classifier"``; imported here only when that extractor is asked for).
"""
from __future__ import annotations

import torch
import torch_fidelity
from torch.utils.data import Dataset

from .checkpoint import fingerprint

EXTRACTORS = ("digits-classifier", "inception-v3-compat")
FID_KEY = "frechet_inception_distance"  # torch-fidelity's name for FID, whatever the features


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


def _register(extractor: str) -> None:
    """Make sure torch-fidelity knows ``extractor``: the digits classifier registers itself when imported."""
    if extractor == "digits-classifier":
        from . import digits  # noqa: F401  (imported here, not at the top: digits imports this module)


def fid_datasets(input1: Dataset, input2: Dataset, extractor: str, batch_size: int = 500, cuda: bool = False,
                 **options) -> float:
    """FID between two torch Datasets by ``torch_fidelity.calculate_metrics`` with the named feature extractor.

    ``options`` go to torch-fidelity (e.g. ``feature_extractor_weights_path``, ``digits_classifier``,
    ``cache_root`` with ``input2_cache_name``). No cache is written unless ``cache_root`` is given.
    """
    _register(extractor)
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
    for name, images in (("samples", samples), ("reference", reference)):
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name}: must be a torch tensor [N, C, H, W] in [-1, 1]; got {type(images).__name__}")
        if images.ndim and len(images) < 2:
            raise ValueError(f"{name}: FID needs at least 2 images (a covariance of features); got {len(images)}")
    options = {}
    if extractor == "digits-classifier":
        if classifier is None and weights_path is None:
            raise ValueError("extractor='digits-classifier' needs classifier=<DigitsClassifier> or weights_path")
        if classifier is None:
            from .digits import load_classifier

            classifier = load_classifier(weights_path)
        options["digits_classifier"] = classifier
    elif weights_path is None:
        raise ValueError("extractor='inception-v3-compat' needs weights_path=<local Inception weights file>; nothing "
                         "is downloaded here: `make download` fetches it to disback.download.inception_weights()")
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

