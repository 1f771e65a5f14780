"""Inception FID at paper scale: torch-fidelity's Inception-v3 with local weights, EDM-style reference statistics.

Samples in [-1, 1] become uint8 RGB (``fid.to_uint8``), torch-fidelity's ``inception-v3-compat`` extractor (the
2015-12-05 graph; its weights read from a local file, ``feature_extractor_weights_path``) gives pool features, and
their mean and covariance are accumulated batch by batch, so 50k samples never sit in memory at once. The
reference is an EDM ``.npz`` (``mu``, ``sigma``) or a local image folder / zip. The Frechet distance is
torch-fidelity's. A reported FID names its protocol: EDM's minimum over 3 seed sets, or SiD's mean and std.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.utils import create_feature_extractor

from .checkpoint import ArtifactError, sha256_file
from .fid import to_uint8

EXTRACTOR = "inception-v3-compat"
PROTOCOLS = ("edm-min", "mean-std")  # EDM: min over seed sets (3 x 50k); SiD: mean and std over sets (10 x 50k)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def inception_extractor(weights_path, feature_layer: str = "2048", device="cpu"):
    """torch-fidelity's Inception-v3 on ``device``, its weights from a local file first checked to hold only tensors."""
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise ArtifactError(f"missing Inception weights {weights_path}: run `make download` (it puts torch-fidelity's "
                            "weights file at disback.download.inception_weights(); README, Paper scale: download)")
    try:  # torch-fidelity reads the file with weights_only=False: refuse anything but tensors first
        torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        raise ArtifactError(f"{weights_path}: not a plain tensor file: {(str(e).splitlines() or [''])[0]}") from None
    return create_feature_extractor(EXTRACTOR, [feature_layer], cuda=False, verbose=False,
                                    feature_extractor_weights_path=str(weights_path)).to(device)


class FeatureMoments:
    """Running sums of features (float64) giving the mean and unbiased covariance at the end."""

    def __init__(self):
        self.n, self.sum, self.outer = 0, None, None

    def add(self, features: torch.Tensor) -> None:
        f = features.detach().double().cpu()
        if self.sum is None:
            self.sum, self.outer = torch.zeros(f.shape[1], dtype=torch.float64), torch.zeros(f.shape[1], f.shape[1],
                                                                                               dtype=torch.float64)
        self.n += len(f)
        self.sum += f.sum(0)
        self.outer += f.T @ f

    def statistics(self) -> dict:
        """{"mu": [D], "sigma": [D, D]} as float64 numpy arrays (the EDM .npz keys)."""
        if self.n < 2:
            raise ValueError(f"FID statistics need at least 2 images; got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return {"mu": mu.numpy(), "sigma": sigma.numpy()}


@torch.no_grad()
def image_statistics(batches, extractor) -> dict:
    """Statistics of the features of ``batches`` (an iterable of uint8 ``[N, 3, H, W]`` tensors)."""
    moments = FeatureMoments()
    device = next(extractor.parameters()).device
    for batch in batches:
        if batch.dtype != torch.uint8 or batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"images: must be uint8 [N, 3, H, W]; got {batch.dtype} {tuple(batch.shape)}")
        moments.add(extractor(batch.to(device))[0])
    return moments.statistics()


def sample_statistics(sample_fn, seeds, extractor, batch: int = 250) -> dict:
    """Statistics of ``sample_fn(seeds_chunk)`` (images in [-1, 1]) over ``seeds``, ``batch`` seeds at a time."""
    seeds = list(seeds)
    return image_statistics((to_uint8(sample_fn(seeds[i:i + batch])) for i in range(0, len(seeds), batch)), extractor)


def _image_files(source: Path):
    """(name, bytes) of every image in a folder (recursively) or zip, in sorted order."""
    if source.is_dir():
        for p in sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield str(p), p.read_bytes()
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as z:
            for name in sorted(n for n in z.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES):
                yield name, z.read(name)
    else:
        raise ArtifactError(f"reference {source}: expected an EDM .npz, an image folder or a zip of images")


def _image_batches(source: Path, batch: int):
    from PIL import Image

    chunk = []
    for name, data in _image_files(source):
        img = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # [H, W, 3] uint8
        chunk.append(torch.from_numpy(img.copy()).permute(2, 0, 1))
        if len(chunk) == batch:
            yield torch.stack(chunk)
            chunk = []
    if chunk:
        yield torch.stack(chunk)


def reference_statistics(source, extractor=None, batch: int = 250) -> dict:
    """Reference {"mu", "sigma"}: read from an EDM-style ``.npz``, or computed from an image folder or zip."""
    source = Path(source)
    if not source.exists():
        raise ArtifactError(f"missing FID reference {source}: run `make download` (it puts EDM's fid-refs .npz at "
                            "disback.download.fid_reference(setting); README, Paper scale: download)")
    if source.suffix == ".npz":
        with np.load(source, allow_pickle=False) as f:
            if "mu" not in f or "sigma" not in f:
                raise ArtifactError(f"{source}: an FID reference .npz needs arrays 'mu' and 'sigma'; has {list(f)}")
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
            raise ArtifactError(f"{source}: mu {mu.shape} and sigma {sigma.shape} do not fit ([D] and [D, D])")
        return {"mu": mu, "sigma": sigma}
    if extractor is None:
        raise ValueError(f"reference {source} is images: pass the Inception extractor to compute its statistics")
    return image_statistics(_image_batches(source, batch), extractor)


def save_reference(path, stats: dict) -> Path:
    """Write statistics as an EDM-style ``.npz`` (``mu``, ``sigma``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, mu=stats["mu"], sigma=stats["sigma"])
    return path


def frechet_distance(stats: dict, reference: dict) -> float:
    """FID between two sets of statistics, computed by torch-fidelity."""
    if stats["mu"].shape != reference["mu"].shape:
        raise ValueError(f"feature dimensions differ: {stats['mu'].shape} vs reference {reference['mu'].shape} "
                         "(another feature layer?)")
    return float(fid_statistics_to_metric(stats, reference, verbose=False)[KEY_METRIC_FID])


def fid_over_seed_sets(sample_fn, reference: dict, extractor, seed_sets, protocol: str = "edm-min",
                       batch: int = 250) -> dict:
    """FID of ``sample_fn`` for each seed set (e.g. 3 x range(k * 50000, (k + 1) * 50000)), aggregated by ``protocol``.

    Returns {"fid", "protocol", "per_set", "std", "num_samples", "seed_sets"}: "edm-min" reports the minimum
    (EDM), "mean-std" the mean with the standard deviation across sets (SiD).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: must be one of {PROTOCOLS}")
    seed_sets = [list(s) for s in seed_sets]
    if not seed_sets or any(len(s) < 2 for s in seed_sets):
        raise ValueError("seed_sets: need at least one set of at least 2 seeds")
    per_set = [frechet_distance(sample_statistics(sample_fn, s, extractor, batch), reference) for s in seed_sets]
    value = min(per_set) if protocol == "edm-min" else float(np.mean(per_set))
    return {"fid": value, "protocol": protocol, "per_set": per_set,
            "std": float(np.std(per_set, ddof=1)) if len(per_set) > 1 else None,
            "num_samples": [len(s) for s in seed_sets], "seed_sets": [[s[0], s[-1]] for s in seed_sets]}


def weights_sha256(weights_path) -> str:
    """sha256 of the Inception weights file, to report next to an FID."""
    return sha256_file(weights_path)
