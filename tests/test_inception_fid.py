"""Inception FID plumbing with a randomly initialised Inception saved to a temp file (nothing downloads):
FID of a set against itself ~0, against a shifted copy larger, equal to a direct scipy computation;
references from .npz, folders and zips; the seed-set protocols."""
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg
from torch import nn

from disback.checkpoint import ArtifactError
from disback.fid import to_uint8
from disback.inception import (fid_over_seed_sets, frechet_distance, image_statistics, inception_extractor,
                               reference_statistics, sample_statistics, save_reference)


@pytest.fixture(scope="module")
def random_inception(tmp_path_factory):
    """torch-fidelity's Inception-v3 with random weights, saved as a local weights file."""
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with pytest.MonkeyPatch.context() as mp:  # build without weights: no download, no load
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})  # the URL loader, replaced: no download
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["64"])
    path = tmp_path_factory.mktemp("inception") / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


class _Recorder(nn.Module):
    """Passes images to an extractor and keeps the features it returned."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor, self.features = extractor, []

    def forward(self, x):
        out = self.extractor(x)
        self.features.append(out[0].double().numpy())
        return out


def _images(n, seed):
    """Smooth random RGB images ``[n, 3, 16, 16]`` in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g) * 1.6 - 0.8
    return nn.functional.interpolate(low, size=16, mode="bilinear", align_corners=False)


def _scipy_fid(f1, f2):
    mu1, mu2, s1, s2 = f1.mean(0), f2.mean(0), np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_inception_fid_self_shift_and_scipy(random_inception):
    rec = _Recorder(inception_extractor(random_inception, feature_layer="64"))  # 64 features: 66 images give full rank
    a = _images(66, 0)
    stats_a = image_statistics([to_uint8(a[:40]), to_uint8(a[40:])], rec)
    stats_b = image_statistics([to_uint8((a + 0.3).clamp(-1, 1))], rec)
    fa, fb = np.concatenate(rec.features[:2]), rec.features[2]
    np.testing.assert_allclose(stats_a["mu"], fa.mean(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats_a["sigma"], np.cov(fa, rowvar=False), rtol=1e-6, atol=1e-14)

    shifted, itself = frechet_distance(stats_a, stats_b), frechet_distance(stats_a, stats_a)
    assert abs(itself) < 1e-6 * shifted and shifted > 0
    assert shifted == pytest.approx(_scipy_fid(fa, fb), rel=1e-6)


def test_weights_must_be_a_local_tensor_file(tmp_path):
    with pytest.raises(ArtifactError, match="missing Inception weights"):
        inception_extractor(tmp_path / "none.pth")
    torch.save({"fc.weight": torch.zeros(2), "extra": ArtifactError("not a tensor")}, tmp_path / "bad.pth")
    with pytest.raises(ArtifactError, match="not a plain tensor file"):
        inception_extractor(tmp_path / "bad.pth")


class _PixelMeans(nn.Module):
    """A cheap stand-in extractor: per-channel means and mean squares of the uint8 pixels (6 features)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        x = x.double() / 255
        return (torch.cat([x.mean((2, 3)), (x ** 2).mean((2, 3))], 1),)


def test_references_from_npz_folder_and_zip_agree(tmp_path):
    images = to_uint8(_images(12, 1))
    want = image_statistics([images], _PixelMeans())
    folder = tmp_path / "imgs"
    folder.mkdir()
    with zipfile.ZipFile(tmp_path / "imgs.zip", "w") as z:
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(folder / f"{i:05d}.png")
            z.write(folder / f"{i:05d}.png", f"00000/img{i:08d}.png")
    for source in (folder, tmp_path / "imgs.zip"):
        got = reference_statistics(source, _PixelMeans(), batch=5)
        np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=1e-9)
    npz = save_reference(tmp_path / "ref.npz", want)
    assert frechet_distance(reference_statistics(npz), want) == pytest.approx(0, abs=1e-9)
    np.savez(tmp_path / "wrong.npz", mean=want["mu"])
    with pytest.raises(ArtifactError, match="needs arrays 'mu' and 'sigma'"):
        reference_statistics(tmp_path / "wrong.npz")
    with pytest.raises(ArtifactError, match="missing FID reference"):
        reference_statistics(tmp_path / "absent.npz")


def test_seed_set_protocols_and_batch_independence():
    def sample_fn(seeds):  # image i depends only on seed i
        return torch.stack([_images(1, 100 + s)[0] * (0.5 + 0.5 * (s % 3) / 3) for s in seeds])

    ex = _PixelMeans()
    reference = image_statistics([to_uint8(_images(40, 7))], ex)
    s1, s2 = sample_statistics(sample_fn, range(30), ex, batch=7), sample_statistics(sample_fn, range(30), ex, batch=30)
    np.testing.assert_allclose(s1["sigma"], s2["sigma"], rtol=1e-9)
    sets = [range(0, 20), range(20, 40), range(40, 60)]
    edm = fid_over_seed_sets(sample_fn, reference, ex, sets, protocol="edm-min", batch=8)
    sid = fid_over_seed_sets(sample_fn, reference, ex, sets, protocol="mean-std", batch=8)
    assert edm["per_set"] == sid["per_set"] and len(set(edm["per_set"])) == 3
    assert edm["fid"] == min(edm["per_set"]) and sid["fid"] == pytest.approx(np.mean(sid["per_set"]))
    assert sid["std"] == pytest.approx(np.std(sid["per_set"], ddof=1)) and edm["seed_sets"][1] == [20, 39]
    with pytest.raises(ValueError, match="protocol='best'"):
        fid_over_seed_sets(sample_fn, reference, ex, sets, protocol="best")


def test_fid_refuses_too_few_images_and_arrays():
    """One image has no covariance (a LinAlgError deep in scipy before), none an IndexError, a numpy array a TypeError
    from isfinite: each is refused up front, naming the argument."""
    from disback.fid import fid

    many = torch.zeros(4, 1, 8, 8)
    for samples, error, match in ((many[:1], ValueError, "samples: FID needs at least 2 images .* got 1"),
                                  (many[:0], ValueError, "got 0"),
                                  (many.numpy(), TypeError, "samples: must be a torch tensor")):
        with pytest.raises(error, match=match):
            fid(samples, many, "inception-v3-compat", weights_path="unused")
    with pytest.raises(ValueError, match="reference: FID needs at least 2 images"):
        fid(many, many[:1], "inception-v3-compat", weights_path="unused")
