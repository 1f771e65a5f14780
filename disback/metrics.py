"""Sample-quality metrics: Frechet distance, exact optimal-transport W2, mode statistics, score error."""
from __future__ import annotations

import numbers

import numpy as np
import torch

from .diffusion import score as model_score


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)): the Frechet distance of two Gaussians (as in FID)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"mu1, cov1, mu2, cov2: must be [D], [D, D], [D], [D, D] with one D; got {mu1.shape}, "
                         f"{cov1.shape}, {mu2.shape}, {cov2.shape}")
    from scipy import linalg  # imported where used: `import disback` works without the cpu profile's packages

    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # nearly singular product: regularise as in the FID literature
        eps = np.eye(len(cov1)) * 1e-6
        covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of features ``[N, D]``: the Gaussian FID fits."""
    f = np.asarray(features, np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance_samples(a, b) -> float:
    """Frechet distance between Gaussians fitted to two sample sets ``[N, D]``."""
    a, b = _samples_pair(a, b, "frechet_distance_samples", min_n=2, allow_1d=True)
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


def _samples_pair(a, b, what: str, min_n: int, allow_1d: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both sample sets as float64 arrays, refusing shapes the metric would misread: ``[N, D]`` (``[N]`` where
    ``allow_1d``) with one D and at least ``min_n`` samples each."""
    a, b = _np(a), _np(b)
    ndims = (1, 2) if allow_1d else (2,)
    if a.ndim not in ndims or b.ndim != a.ndim or a.shape[1:] != b.shape[1:] or min(len(a), len(b)) < min_n:
        raise ValueError(f"{what}(a, b): a and b must be sample sets [N, D] with the same D and N >= {min_n} "
                         f"(flatten images to [N, C*H*W]); got {a.shape} and {b.shape}")
    return a, b


def wasserstein2(a, b) -> float:
    """Exact W2 between two empirical distributions ``[N, D]`` and ``[M, D]`` with uniform weights (POT's network
    simplex); nan if a sample is not finite (as ``frechet_distance_samples``; the solver would return 0)."""
    import ot  # POT: imported here so that ``import disback`` works where only torch, numpy and scipy exist (GPU boxes)

    a, b = _samples_pair(a, b, "wasserstein2", min_n=1)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("nan")
    cost = ot.dist(a, b, metric="sqeuclidean")
    return float(np.sqrt(ot.emd2(ot.unif(len(a)), ot.unif(len(b)), cost, numItermax=10_000_000)))


def mode_stats(samples, mixture, max_std: float = 4.0) -> dict:
    """Mode coverage and weight error of samples against a ``GaussianMixture``.

    A sample belongs to its nearest mode if it lies within ``max_std`` standard deviations of it; a mode
    is covered when it holds at least 1/4 of its expected share. ``weight_tv`` is the total-variation
    distance between the empirical and true mode weights (off-mode samples counted as mass lost).
    """
    x = torch.as_tensor(_np(samples), dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != mixture.means.shape[1] or len(x) == 0:
        raise ValueError(f"mode_stats: samples must be [N, {mixture.means.shape[1]}] (the mixture's dimension), "
                         f"N >= 1; got {tuple(x.shape)}")
    d = torch.cdist(x, mixture.means)
    dist, nearest = d.min(1)
    on_mode = dist <= max_std * mixture.std
    counts = torch.bincount(nearest[on_mode], minlength=len(mixture.means)).float()
    frac = counts / len(x)
    covered = (frac >= 0.25 * mixture.weights).float().mean()
    tv = 0.5 * ((frac - mixture.weights).abs().sum() + (1 - frac.sum()))
    return {"mode_coverage": float(covered), "weight_tv": float(tv), "off_mode": float(1 - on_mode.float().mean())}


def sample_metrics_2d(samples, reference, mixture) -> dict:
    """All 2-D sample metrics against held-out true ``reference`` samples."""
    return {"frechet": frechet_distance_samples(samples, reference), "w2": wasserstein2(samples, reference),
            **mode_stats(samples, mixture)}


@torch.no_grad()
def score_error(denoiser, exact, x0: torch.Tensor, sigmas, seed: int = 0) -> dict:
    """Relative score error E||s_model - s_exact||^2 / E||s_exact||^2 at each sigma, on x0 + sigma n with noise n
    seeded by ``seed`` (not the global RNG: the same inputs give the same number, comparable across nets)."""
    sigmas = _check_sigmas(sigmas)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for sigma in sigmas:
        x = _noised(x0, sigma, g)
        s_exact = exact.score(x, sigma) if hasattr(exact, "score") else model_score(exact, x, sigma)
        s_model = model_score(denoiser, x, sigma)
        out[float(sigma)] = float(((s_model - s_exact) ** 2).sum(1).mean() / (s_exact ** 2).sum(1).mean())
    return out


def empirical_denoiser(samples: torch.Tensor, std: float = 1e-3):
    """The exact denoiser of the sigma-noised empirical distribution of ``samples`` ``[K, D]`` (a kernel estimate
    of the score of the distribution they were drawn from; accurate in low dimension when sigma >> spacing)."""
    from .data import GaussianMixture

    return GaussianMixture(torch.as_tensor(samples).detach().float(), torch.ones(len(samples)), std)


@torch.no_grad()
def score_mismatch(denoiser_a, denoiser_b, x0: torch.Tensor, sigmas, labels=None, seed: int = 0) -> dict:
    """sigma^2-weighted score mismatch per dimension, E ||sigma (s_a - s_b)(x0 + sigma n)||^2 / dim, at each sigma.

    With scores from denoisers, sigma (s_a - s_b) = (D_a - D_b) / sigma. ``x0`` are the points the mismatch is
    measured at (the generator's samples): where the generator update evaluates the scores. Keyed by
    ``str(float(sigma))`` (e.g. ``"0.25"``), as JSON writes a float key, so a logged result reads back the same.
    """
    sigmas = _check_sigmas(sigmas)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for sigma in sigmas:
        x = _noised(x0, sigma, g)
        call = [d(x, sigma) if labels is None or getattr(d, "label_dim", 0) == 0 else d(x, sigma, labels)
                for d in (denoiser_a, denoiser_b)]
        out[str(float(sigma))] = float(((call[0] - call[1]) ** 2).flatten(1).mean(1).mean() / sigma ** 2)
    return out


def _noised(x0: torch.Tensor, sigma, g: torch.Generator) -> torch.Tensor:
    """x0 + sigma n, the noise n drawn on the CPU from ``g`` (the same numbers for any device) and moved to x0's."""
    if not isinstance(x0, torch.Tensor):
        raise TypeError(f"x0: must be a torch tensor of points [N, ...]; got {type(x0).__name__}")
    return x0 + sigma * torch.randn(x0.shape, generator=g).to(x0.device)


def _is_number(s) -> bool:
    """A real number (not a bool or a string), or a 0-d tensor / array of one."""
    if isinstance(s, (torch.Tensor, np.ndarray)):
        return s.ndim == 0 and s.dtype not in (torch.bool, np.bool_) and not s.dtype == np.object_
    return isinstance(s, numbers.Real) and not isinstance(s, (bool, np.bool_))


def _check_sigmas(sigmas) -> list:
    """``sigmas`` as a list (same elements), refusing a bare number or string, non-numbers, zero, negative or
    non-finite noise levels: the per-sigma metrics divide by sigma."""
    try:
        if isinstance(sigmas, (str, bytes)):
            raise TypeError
        sigmas = list(sigmas)
    except TypeError:
        raise TypeError(f"sigmas: must be a list of noise levels (e.g. [0.5, 2.0]); got {type(sigmas).__name__}") \
            from None
    kinds = [type(s).__name__ for s in sigmas if not _is_number(s)]
    if kinds:
        raise TypeError(f"sigmas: every noise level must be a number; got {', '.join(sorted(set(kinds)))}")
    values = [float(s) for s in sigmas]
    bad = [v for v in values if not (np.isfinite(v) and v > 0)]
    if bad or not values:
        raise ValueError(f"sigmas={sigmas!r}: must be a non-empty list of finite noise levels > 0")
    return sigmas


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


@torch.no_grad()
def direction_agreement(fake, target, gen_score, data_score, x0: torch.Tensor, sigmas, seed: int = 0) -> dict:
    """Mean cosine, per sigma, between the generator's update direction and the direction toward the data.

    The update pushes each noised sample along D_fake - D_target (Diff-Instruct's gradient, up to sigma^2); the
    ideal push lowers KL(p_gen || p_data) at that noise level, the direction D_gen - D_data, where ``gen_score``
    and ``data_score`` are denoisers of the generator's and the data's noised distributions (in 2-D: a kernel
    estimate and the exact mixture). 1 = the update points straight at the data; it is not built into DisBack.
    """
    sigmas = _check_sigmas(sigmas)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for sigma in sigmas:
        x = _noised(x0, sigma, g)
        update = (fake(x, sigma) - target(x, sigma)).flatten(1)
        ideal = (gen_score(x, sigma) - data_score(x, sigma)).flatten(1)
        out[str(float(sigma))] = float(torch.nn.functional.cosine_similarity(update, ideal, dim=1).mean())
    return out
