"""The digits setting: data split, UNet backbone, torch-fidelity FID against closed forms, classifier, bad inputs."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from disback.config import TeacherConfig
from disback.data import load_digits
from disback.digits import ClassifierConfig, class_accuracy, digits_classifier, load_digits_setting
from disback.fid import fid, fid_datasets, to_uint8
from disback.metrics import frechet_distance, gaussian_stats
from disback.networks import build_backbone
from disback.networks.unet import UNetBackbone
from disback.settings import load_setting
from disback.teachers import train_teacher


@pytest.fixture(scope="module")
def setting():
    return load_digits_setting()  # trains the feature classifier in memory (seconds)


# ---------------------------------------------------------------- data

def test_digits_split_shapes_range_and_partition():
    from sklearn.datasets import load_digits as sklearn_digits

    train, train_labels, held, held_labels = load_digits()
    assert train.shape[1:] == held.shape[1:] == (1, 8, 8) and train.dtype == torch.float32
    assert train_labels.dtype == held_labels.dtype == torch.int64
    assert train.min() == -1 and train.max() == 1 and held.min() >= -1 and held.max() <= 1
    assert len(train) + len(held) == 1797 and abs(len(held) / 1797 - 0.2) < 0.01
    # Stratified: every class holds out ~20% of its images.
    counts = torch.bincount(held_labels, minlength=10).float() / torch.bincount(
        torch.cat([train_labels, held_labels]), minlength=10).float()
    assert ((counts - 0.2).abs() < 0.02).all()
    # The two parts partition the dataset: as multisets of (image, label) rows they equal the whole.
    full = np.concatenate([np.asarray(sklearn_digits().images, np.float32).reshape(-1, 64) / 8 - 1,
                           sklearn_digits().target[:, None]], 1)
    parts = torch.cat([torch.cat([train.flatten(1), train_labels[:, None].float()], 1),
                       torch.cat([held.flatten(1), held_labels[:, None].float()], 1)]).numpy()
    full_rows, full_counts = np.unique(full, axis=0, return_counts=True)
    part_rows, part_counts = np.unique(parts, axis=0, return_counts=True)
    assert np.array_equal(full_rows, part_rows) and np.array_equal(full_counts, part_counts)


def test_digits_split_deterministic_and_seeded():
    a, b = load_digits(seed=0), load_digits(seed=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[2], load_digits(seed=1)[2])
    big = load_digits(size=16)
    assert big[0].shape[1:] == (1, 16, 16) and big[0].min() >= -1 and big[0].max() <= 1
    assert torch.equal(big[1], a[1])  # same split at either size


# ---------------------------------------------------------------- UNet

@pytest.mark.parametrize("size", [8, 16])
def test_unet_forward_shape(size):
    net = build_backbone("unet", (1, size, size), width=8, depth=1, label_dim=10)
    assert isinstance(net, UNetBackbone)
    out = net(torch.randn(5, 1, size, size), torch.randn(5), torch.arange(5))
    assert out.shape == (5, 1, size, size) and torch.isfinite(out).all()


def test_unet_conditional_needs_labels_and_even_sizes():
    net = UNetBackbone(1, width=8, depth=1, label_dim=10)
    with pytest.raises(ValueError, match="labels=None"):
        net(torch.randn(2, 1, 8, 8), torch.randn(2))
    with pytest.raises(ValueError, match="divisible by 2"):
        net(torch.randn(2, 1, 7, 7), torch.randn(2), torch.zeros(2, dtype=torch.long))
    UNetBackbone(1, width=8, depth=1)(torch.randn(2, 1, 8, 8), torch.randn(2))  # unconditional: no labels needed


def test_unet_labels_and_noise_reach_the_output():
    torch.manual_seed(0)
    net = UNetBackbone(1, width=8, depth=1, label_dim=10)
    for p in net.parameters():  # leave the zero initialisation so every input matters
        torch.nn.init.normal_(p, std=0.3)
    x, c = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1), torch.zeros(2)
    out = net(x, c, torch.tensor([3, 7]))
    assert not torch.allclose(out[0], out[1])
    out = net(x, torch.tensor([-1.0, 1.0]), torch.tensor([3, 3]))
    assert not torch.allclose(out[0], out[1])


def test_tiny_unet_teacher_trains(setting):
    config = TeacherConfig(arch="unet", width=8, depth=1, iters=3, batch=16, ema=0.0)
    teacher = train_teacher(setting.train, setting.train_labels, config, progress=False)
    x = teacher(torch.randn(4, 1, 8, 8), 1.0, torch.arange(4))
    assert x.shape == (4, 1, 8, 8) and torch.isfinite(x).all() and teacher.label_dim == 10


# ---------------------------------------------------------------- FID path against closed forms

class _Features(Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


class _IdentityFeatures(FeatureExtractorBase):
    """Test extractor: the dataset items are the features."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)

    @staticmethod
    def get_provided_features_list():
        return ("identity",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "identity"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        return (x.double(),)


if "test-identity" not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor("test-identity", _IdentityFeatures)


def test_torch_fidelity_fid_matches_closed_form_for_gaussians():
    gen = torch.Generator().manual_seed(0)
    d, n = 4, 40000
    mu1, mu2 = torch.zeros(d), torch.tensor([1.0, -0.5, 0.0, 2.0])
    a1, a2 = torch.randn(d, d, generator=gen), torch.randn(d, d, generator=gen)
    cov1, cov2 = a1 @ a1.T + 0.5 * torch.eye(d), a2 @ a2.T + 0.5 * torch.eye(d)
    f1 = mu1 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov1).double().T
    f2 = mu2 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov2).double().T
    got = fid_datasets(_Features(f1), _Features(f2), "test-identity")
    # Same statistics, computed independently: agreement to rounding.
    assert got == pytest.approx(frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2)), rel=1e-8)
    # The population distance of the two known Gaussians: agreement to sampling error.
    exact = frechet_distance(mu1, cov1, mu2, cov2)
    assert got == pytest.approx(exact, rel=0.05)
    assert abs(fid_datasets(_Features(f1), _Features(f1), "test-identity")) < 1e-8


def test_digits_fid_is_frechet_distance_of_classifier_features(setting):
    clf = setting.metric_fn.classifier
    samples, reference = setting.train[:500], setting.reference

    def feats(x):  # what the extractor should see: the images after the uint8 round trip
        return clf.features(to_uint8(x)[:, :1].double().div(127.5).sub(1).float())

    expected = frechet_distance(*gaussian_stats(feats(samples)), *gaussian_stats(feats(reference)))
    assert fid(samples, reference, classifier=clf) == pytest.approx(expected, rel=1e-4)
    assert abs(fid(reference, reference, classifier=clf)) < 1e-3
    noisy = (samples + 0.5 * torch.randn(samples.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert fid(noisy, reference, classifier=clf) > 5 * fid(samples, reference, classifier=clf)


def test_fid_reference_cache_is_written_only_where_asked(setting, tmp_path):
    clf, ref = setting.metric_fn.classifier, setting.reference
    first = fid(setting.train[:300], ref, classifier=clf, cache_dir=tmp_path, reference_name="held")
    cached = list(tmp_path.iterdir())
    assert cached and all("held" in p.name for p in cached)
    assert fid(setting.train[:300], ref, classifier=clf, cache_dir=tmp_path, reference_name="held") == first


def test_inception_path_runs_offline_on_local_weights(monkeypatch):
    """The paper-scale route: the same uint8 RGB datasets into torch-fidelity's Inception, from a local file.

    Random weights stand in for the real file (nothing may download in tests); any download attempt fails.
    The 64-channel features keep the test fast (FID on 2048 features costs ~20 s of eigenvalues on CPU).
    """
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download Inception weights")

    class RandomInception(inception.FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True):  # keep the random initialisation
            return None

    monkeypatch.setattr(inception, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: {})
    torch.manual_seed(0)
    weights = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path="x").state_dict()
    monkeypatch.setattr(torch, "load", lambda path, **kwargs: weights if path == "local.pth" else {}[path])
    x, y = torch.rand(2, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1  # Inception is slow on CPU: 2 images
    options = dict(extractor="inception-v3-compat", weights_path="local.pth", feature_layer="64")  # 2048: slow FID
    different = fid(x, -y, **options)
    assert np.isfinite(different) and different > 0
    assert abs(fid(x, x, **options)) < 1e-3 * different


# ---------------------------------------------------------------- classifier and setting

def test_classifier_accuracy_and_metrics(setting):
    clf = setting.metric_fn.classifier
    assert setting.info["classifier_accuracy"] > 0.9
    assert class_accuracy(clf, setting.reference, setting.reference_labels) > 0.9
    assert setting.name == "digits" and setting.primary == "fid" and setting.label_dim == 10
    assert setting.data_shape == (1, 8, 8) and 0 < setting.info["fid_real_floor"] < 20
    metrics = setting.metric_fn(setting.train[:200], setting.train_labels[:200])
    assert set(metrics) == {"fid", "fd_pixels", "accuracy"} and metrics["accuracy"] > 0.9
    assert "accuracy" not in setting.metric_fn(setting.train[:200], None)


def test_classifier_is_cached_and_reloaded(tmp_path):
    data = load_digits()
    config = ClassifierConfig(epochs=1)
    first = digits_classifier(*data, config, tmp_path)
    (folder,) = tmp_path.iterdir()
    assert {p.name for p in folder.iterdir()} == {"classifier.safetensors", "classifier.json"}
    again = digits_classifier(*data, config, tmp_path)
    assert again.accuracy == first.accuracy
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    fresh = digits_classifier(*data, config)  # deterministic: retraining gives the same accuracy
    assert fresh.accuracy == first.accuracy
    x, y = data[0][:50], data[2][:50]
    assert fid(x, y, weights_path=folder) == fid(x, y, classifier=first)  # the saved folder as the extractor


def test_fid_registers_the_digits_extractor_without_importing_digits_first():
    """``disback.fid`` alone does not import the digits setting; asking for its extractor registers it."""
    code = ("import sys; import disback.fid as f\n"
            "from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY as R\n"
            "assert 'disback.digits' not in sys.modules and 'digits-classifier' not in R\n"
            "f._register('digits-classifier'); assert 'digits-classifier' in R")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("call, message", [
    (lambda: load_digits(size=12), "size=12"),
    (lambda: load_digits(held_out=1.5), "held_out=1.5"),
    (lambda: load_setting("digits", colour=True), "unknown option(s) ['colour'] for setting 'digits'; allowed: size"),
    (lambda: fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), extractor="vgg"), "extractor='vgg'"),
    (lambda: fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), extractor="inception-v3-compat"), "weights_path"),
    (lambda: fid(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)), "needs classifier"),
    (lambda: to_uint8(torch.full((2, 1, 8, 8), float("nan"))), "non-finite"),
])
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_metric_fn_rejects_wrong_shapes(setting):
    with pytest.raises(ValueError, match=r"samples: must be \[N, 1, 8, 8\]"):
        setting.metric_fn(torch.zeros(10, 1, 16, 16), None)
