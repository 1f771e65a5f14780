"""The paper's EDM settings: ``ffhq64``, ``afhqv2_64`` (unconditional) and ``imagenet64`` (1000 classes), 64x64 RGB.

Data-free: the teacher is NVIDIA's EDM network converted once to safetensors (``python -m disback convert-teacher``,
``make download``), the metric is Inception FID against EDM's reference statistics (``.npz``), and no training image
is read (every loss here is data-free). Assets come from the cache folder ``make download`` fills
(``paper_asset_dir()``: ``$DISBACK_ASSETS``, default ``~/.cache/disback``), laid out as ``PAPER_ASSETS`` says.

Option ``tiny=True`` (the notebooks' smoke scale): a tiny random network of the teacher's architecture at
``resolution`` pixels, a small random feature net in place of Inception and random images as the reference. Every
code path runs in seconds with no asset; the numbers mean nothing.

Option ``device`` (default the CPU): where the teacher and the feature extractor are put. The reference statistics
are always the CPU's (read from the ``.npz``, or computed on the CPU at smoke scale), so they are the same everywhere.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .diffusion import EDM_TEACHER_SAMPLERS, heun_nfe
from .fid import to_uint8
from .settings import Setting, register_setting

ASSETS_ENV = "DISBACK_ASSETS"  # overrides the cache folder
INCEPTION_WEIGHTS = "inception/weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's Inception-v3 (2015-12-05)
PAPER_ASSETS = {  # setting -> files under the cache folder: the downloaded pickle, its converted folder, the FID reference
    "ffhq64": {"pickle": "edm/edm-ffhq-64x64-uncond-vp.pkl", "teacher": "teachers/ffhq64",
               "fid_ref": "fid-refs/ffhq-64x64.npz"},
    "afhqv2_64": {"pickle": "edm/edm-afhqv2-64x64-uncond-vp.pkl", "teacher": "teachers/afhqv2_64",
                  "fid_ref": "fid-refs/afhqv2-64x64.npz"},
    "imagenet64": {"pickle": "edm/edm-imagenet-64x64-cond-adm.pkl", "teacher": "teachers/imagenet64",
                   "fid_ref": "fid-refs/imagenet-64x64.npz"},
}
LABEL_DIM = {"ffhq64": 0, "afhqv2_64": 0, "imagenet64": 1000}
DESCRIPTION = {"ffhq64": "FFHQ 64x64, unconditional", "afhqv2_64": "AFHQv2 64x64, unconditional",
               "imagenet64": "ImageNet 64x64, class-conditional (1000 classes)"}
OPTIONS = ("tiny", "resolution", "assets", "device")
EVAL_BATCH = 250  # seeds per generator call in evaluate, and images per Inception batch (EDM's FID batch)


def paper_asset_dir() -> Path:
    """The cache folder of the paper's assets, as ``make download`` fills it (``download.asset_dir``: $DISBACK_ASSETS,
    else $XDG_CACHE_HOME/disback, else ~/.cache/disback); ``PAPER_ASSETS`` is the same layout as its manifest."""
    from .download import asset_dir

    return asset_dir()


def asset_paths(setting: str, root=None) -> dict:
    """Paths of ``setting``'s assets: ``pickle``, ``teacher`` (converted folder), ``fid_ref`` and ``inception``."""
    if setting not in PAPER_ASSETS:
        raise ValueError(f"setting={setting!r}: must be one of {tuple(PAPER_ASSETS)}")
    root = Path(root) if root is not None else paper_asset_dir()
    return {**{k: root / v for k, v in PAPER_ASSETS[setting].items()}, "inception": root / INCEPTION_WEIGHTS}


def missing_assets(setting: str, root=None) -> list[str]:
    """The assets a paper run of ``setting`` needs that are not in the cache folder, as paths relative to it."""
    from .edm_pickle import CONVERTED_JSON

    root = Path(root) if root is not None else paper_asset_dir()
    need = {"converted teacher": Path(PAPER_ASSETS[setting]["teacher"]) / CONVERTED_JSON,
            "FID reference": PAPER_ASSETS[setting]["fid_ref"], "Inception weights": INCEPTION_WEIGHTS}
    return [f"{what} {rel}" for what, rel in need.items() if not (root / rel).is_file()]


class RandomFeatures(nn.Module):
    """Smoke-scale stand-in for Inception: two random convolutions and a global average, 32 features per image."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor):  # uint8 [N, 3, H, W] -> ([N, 32],) like torch-fidelity's extractors
        return (self.net(images.float() / 127.5 - 1),)


def _register(name: str) -> None:
    @register_setting(name)
    def build(num_train: int, num_reference: int, seed: int, tiny: bool = False, resolution: int = 16,
              assets=None, device="cpu", **kw) -> Setting:
        if kw:
            raise ValueError(f"unknown option(s) {sorted(kw)} for setting {name!r}; allowed: {', '.join(OPTIONS)}")
        device = torch.device(device)
        return _tiny_setting(name, num_reference, seed, resolution, device) if tiny else _paper_setting(name, assets,
                                                                                                          device)

    build.__qualname__ = f"build_{name}"


def _fid_setting(name: str, extractor_fn, reference: dict, shape, teacher_fn, info: dict) -> Setting:
    """A data-free setting whose metric is the FID of samples' features (``extractor_fn()``) against ``reference``."""
    from .inception import frechet_distance, image_statistics

    cache = []  # the extractor, built on first use: Inception is slow to load and not needed to build the setting

    def extractor():
        if not cache:
            cache.append(extractor_fn())
        return cache[0]

    def metric_fn(samples: torch.Tensor, _labels=None, batch: int = EVAL_BATCH) -> dict:  # samples on any device
        stats = image_statistics((to_uint8(samples[i:i + batch]) for i in range(0, len(samples), batch)), extractor())
        return {"fid": frechet_distance(stats, reference)}

    metric_fn.extractor, metric_fn.reference = extractor, reference  # for FID over seed sets (paper_runs.final_fid)

    kind, kwargs = EDM_TEACHER_SAMPLERS[name]
    info = {"description": DESCRIPTION[name], "teacher_sampler": kind, "teacher_nfe": heun_nfe(kwargs["num_steps"]),
            **info}
    stats = {k: torch.from_numpy(v) for k, v in reference.items()}  # tensors: runs are keyed by their digest
    return Setting(name, None, None, stats, None, metric_fn, "fid", info=info, shape=tuple(shape),
                   classes=LABEL_DIM[name], teacher_fn=teacher_fn, eval_batch=EVAL_BATCH)


def _paper_setting(name: str, assets=None, device=torch.device("cpu")) -> Setting:
    """The real setting: converted EDM teacher, Inception, EDM's reference statistics (all from the cache folder); the
    teacher and Inception on ``device``."""
    from .checkpoint import ArtifactError
    from .inception import inception_extractor, reference_statistics
    from .teachers import load_teacher

    missing = missing_assets(name, assets)
    if missing:
        raise ArtifactError(f"setting {name!r} needs {'; '.join(missing)}: run `make download` "
                            f"(cache folder ${ASSETS_ENV}, now {Path(assets) if assets else paper_asset_dir()})")
    p = asset_paths(name, assets)
    reference = reference_statistics(p["fid_ref"])
    return _fid_setting(name, lambda: inception_extractor(p["inception"], device=device), reference,
                        (3, 64, 64), lambda: load_teacher(p["teacher"]).to(device),
                        {"metric": "Inception FID (pool3, 2048) vs EDM reference statistics",
                         "assets": {k: str(v) for k, v in p.items()}})


def _tiny_setting(name: str, num_reference: int, seed: int, resolution: int,
                  device=torch.device("cpu")) -> Setting:
    """Smoke scale: tiny random teacher, random features, random reference images; the teacher and the features made
    on the CPU (the same weights everywhere), then put on ``device``."""
    from .inception import image_statistics
    from .networks.presets import random_edm_teacher

    g = torch.Generator().manual_seed(seed + 1)
    images = (torch.rand(max(num_reference, 2), 3, resolution, resolution, generator=g) * 255).to(torch.uint8)
    reference = image_statistics([images], RandomFeatures(seed))
    return _fid_setting(name, lambda: RandomFeatures(seed).to(device), reference, (3, resolution, resolution),
                        lambda: random_edm_teacher(name, "tiny", resolution, seed).to(device),
                        {"metric": "smoke: random-feature FID vs random images (meaningless numbers)", "tiny": True,
                         "resolution": resolution})


for _name in PAPER_ASSETS:
    _register(_name)
