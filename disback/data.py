"""Data sources. The 2-D setting: a Gaussian mixture whose noised score and optimal denoiser are exact.
The digits setting: sklearn's 8x8 handwritten digits with a stratified held-out split."""
from __future__ import annotations

import math

import torch

from .config import check_count


class GaussianMixture:
    """Isotropic mixture sum_k w_k N(mu_k, std^2 I). Doubles as an exact denoiser ``D(x, sigma)``.

    Noised by sigma, it is sum_k w_k N(mu_k, (std^2 + sigma^2) I), so the posterior mean is
    E[x0 | x] = sum_k r_k(x) (mu_k + std^2 / (std^2 + sigma^2) (x - mu_k)), r_k the responsibilities.
    """

    label_dim = 0

    def __init__(self, means: torch.Tensor, weights: torch.Tensor, std: float):
        means, weights = torch.as_tensor(means, dtype=torch.float32), torch.as_tensor(weights, dtype=torch.float32)
        if means.ndim != 2 or weights.shape != (len(means),):
            raise ValueError(f"means must be [K, D] and weights [K]; got {tuple(means.shape)} and {tuple(weights.shape)}")
        if not (torch.isfinite(means).all() and torch.isfinite(weights).all()):
            raise ValueError(f"means and weights must be finite; got means={means.tolist()}, "
                             f"weights={weights.tolist()}")
        try:
            std_ok = not isinstance(std, bool) and math.isfinite(float(std))
        except (TypeError, ValueError):
            std_ok = False
        if not std_ok:
            raise ValueError(f"std={std!r}: must be a finite number > 0")
        if (weights <= 0).any() or std <= 0:
            raise ValueError(f"weights must be > 0 and std > 0; got weights={weights.tolist()}, std={std!r}")
        self.means, self.weights, self.std = means, weights / weights.sum(), float(std)
        self.data_shape = (means.shape[1],)
        second_moment = (self.weights[:, None] * (means ** 2 + std ** 2)).sum(0).mean()
        self.sigma_data = float(second_moment.sqrt())

    def sample(self, n: int, generator: torch.Generator | None = None, return_modes: bool = False):
        """``[n, D]`` samples (and their mode indices if asked)."""
        check_count("n", n, 1, "the number of samples")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        x = self.means[k] + self.std * torch.randn((n, self.means.shape[1]), generator=generator)
        return (x, k) if return_modes else x

    def _responsibilities(self, x, var):
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)  # [N, K]
        return torch.softmax(self.weights.log()[None] - d2 / (2 * var), dim=1)

    def __call__(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        """Exact posterior mean E[x0 | x0 + sigma n = x]; sigma scalar or ``[N]``."""
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2
        var = self.std ** 2 + s2  # [N or 1, 1]
        r = self._responsibilities(x, var)
        shrink = self.std ** 2 / var
        per_mode = self.means[None] + shrink[:, :, None] * (x[:, None, :] - self.means[None])  # [N, K, D]
        return (r[:, :, None] * per_mode).sum(1)

    def score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Exact score of the sigma-noised mixture."""
        s2 = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1) ** 2
        return (self(x, sigma) - x) / s2

    def log_prob(self, x: torch.Tensor, sigma: float = 0.0) -> torch.Tensor:
        var = self.std ** 2 + sigma ** 2
        d2 = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        dim = self.means.shape[1]
        return torch.logsumexp(self.weights.log()[None] - d2 / (2 * var) - 0.5 * dim * math.log(2 * math.pi * var), 1)


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """``num_modes`` modes evenly on a circle, weights 1 : 2 : ... : num_modes (unequal on purpose)."""
    check_count("num_modes", num_modes, 2)
    angle = 2 * math.pi * torch.arange(num_modes) / num_modes
    means = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return GaussianMixture(means, torch.arange(1, num_modes + 1, dtype=torch.float32), std)


def load_digits(size: int = 8, seed: int = 0, held_out: float = 0.2):
    """sklearn's handwritten digits as images in [-1, 1], split per class into train and held-out parts.

    Returns ``(train [N, 1, size, size], train_labels [N], held_images [M, 1, size, size], held_labels [M])``;
    labels are int64 in 0..9. ``size`` 16 upsamples the 8x8 originals bilinearly. The split draws
    ``round(held_out * n_c)`` images of each class c with a generator seeded by ``seed``.
    """
    from sklearn.datasets import load_digits as sklearn_digits  # ships with sklearn: nothing downloads

    if size not in (8, 16):
        raise ValueError(f"size={size!r}: must be 8 (the originals) or 16 (bilinear 2x upsampling)")
    if not 0 < held_out < 1:
        raise ValueError(f"held_out={held_out!r}: must be a fraction in (0, 1)")
    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 8 - 1  # grey levels 0..16 -> [-1, 1]
    labels = torch.tensor(digits.target, dtype=torch.long)
    if size == 16:
        images = torch.nn.functional.interpolate(images, scale_factor=2, mode="bilinear", align_corners=False)

    # Stratified split: a seeded permutation of each class, its first share held out.
    gen = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(int(labels.max()) + 1):
        idx = (labels == c).nonzero().flatten()
        held[idx[torch.randperm(len(idx), generator=gen)[:round(held_out * len(idx))]]] = True
    return images[~held], labels[~held], images[held], labels[held]


def load_image_npz(path) -> tuple:
    """Real images from an ``.npz`` file for DMD2's GAN term: ``images`` uint8 ``[N, H, W, C]`` (as EDM's dataset
    tool writes them) or ``[N, C, H, W]``, and optional int64 ``labels`` ``[N]``. Returns float ``[N, C, H, W]`` in
    [-1, 1] (EDM's scaling, x / 127.5 - 1) and the labels or ``None``."""
    import numpy as np

    with np.load(path) as f:
        if "images" not in f:
            raise ValueError(f"{path}: needs an 'images' array (uint8 [N, H, W, C] or [N, C, H, W]); has {sorted(f)}")
        images, labels = f["images"], f["labels"] if "labels" in f else None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: 'images' must be uint8 [N, H, W, C] or [N, C, H, W]; got {images.dtype} "
                         f"{images.shape}")
    x = torch.from_numpy(images)
    if x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1, None if labels is None else torch.from_numpy(labels).long()
