"""EDM-compatible networks at tiny width: shapes, labels, strict state-dict round trips, the preconditioning
formulas, resampling layers against closed forms, and the teachers' samplers at the paper's NFE."""
import math

import pytest
import torch
from torch import nn

from disback.checkpoint import ArtifactError, load_module
from disback.diffusion import edm_sampler, edm_stochastic_sampler, sample_edm_teacher
from disback.networks import DhariwalUNet, EDMDenoiser, SongUNet, VPDenoiser, build_edm_denoiser
from disback.networks.edm import Conv2d, PositionalEmbedding

TINY = dict(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
            attn_resolutions=[4], dropout=0.0)


def _net(model_type, label_dim=0, seed=0, precond=EDMDenoiser, **extra):
    torch.manual_seed(seed)
    return precond(label_dim=label_dim, model_type=model_type, **TINY, **extra).eval()


@pytest.mark.parametrize("model_type", ["SongUNet", "DhariwalUNet"])
def test_shapes_labels_and_strict_round_trip(model_type):
    net = _net(model_type, label_dim=4)
    assert isinstance(net.model, {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}[model_type])
    assert net.data_shape == (3, 8, 8) and net.label_dim == 4 and net.sigma_data == 0.5
    x, labels = torch.randn(3, 3, 8, 8), torch.tensor([0, 3, 1])
    with torch.no_grad():
        out = net(x, torch.tensor([0.1, 1.0, 10.0]), labels)
        assert out.shape == x.shape and torch.isfinite(out).all()
        # Class indices and one-hot labels are the same input; another class gives another output.
        assert torch.equal(out, net(x, torch.tensor([0.1, 1.0, 10.0]), nn.functional.one_hot(labels, 4).float()))
        assert not torch.allclose(out, net(x, torch.tensor([0.1, 1.0, 10.0]), torch.tensor([2, 2, 2])))
        assert torch.equal(net(x, 2.0, labels), net(x, torch.full((3,), 2.0), labels))  # scalar sigma broadcasts
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 4\)"):
        net(x, 1.0, torch.tensor([0, 4, 1]))

    # A state dict written by one instance loads strictly into a fresh one and gives the same function.
    fresh = _net(model_type, label_dim=4, seed=1)
    with torch.no_grad():
        assert not torch.allclose(fresh(x, 1.0, labels), net(x, 1.0, labels))
        load_module(fresh, net.state_dict())
        assert torch.equal(fresh(x, 1.0, labels), net(x, 1.0, labels))
    with pytest.raises(ArtifactError, match="do not fit"):  # a different width is refused
        load_module(EDMDenoiser(label_dim=4, model_type=model_type, **{**TINY, "model_channels": 16}), net.state_dict())


def test_names_match_the_released_layout():
    """A few keys of EDM's FFHQ-64 (DDPM++) and ImageNet-64 (ADM) state dicts, built at tiny width."""
    song = set(_net("SongUNet", augment_dim=9).state_dict())
    assert {"model.map_augment.weight", "model.enc.8x8_conv.weight", "model.enc.4x4_down.skip.resample_filter",
            "model.enc.4x4_block0.qkv.weight", "model.dec.4x4_in0.proj.bias", "model.dec.8x8_aux_conv.weight",
            "model.dec.8x8_block1.skip.weight"} <= song
    assert "model.map_augment.bias" not in song and "model.enc.8x8_block0.qkv.weight" not in song
    adm = set(_net("DhariwalUNet", label_dim=10).state_dict())
    assert {"model.map_label.weight", "model.out_norm.weight", "model.out_conv.bias", "model.dec.8x8_up.conv0.weight",
            "model.enc.8x8_block0.affine.weight"} <= adm
    assert "model.map_label.bias" not in adm and "model.enc.4x4_down.skip.weight" not in adm  # no resample_proj
    with pytest.raises(ValueError, match="encoder_type='residual'"):
        build_edm_denoiser("EDMPrecond", dict(TINY, model_type="SongUNet", encoder_type="residual"))
    with pytest.raises(ValueError, match="'iDDPMPrecond'"):
        build_edm_denoiser("iDDPMPrecond", TINY)


class _Probe(nn.Module):
    """Stands in for the backbone: records its inputs and returns F = 0.3 x_in + c_noise."""

    def forward(self, x_in, c_noise, class_labels=None):
        self.seen = (x_in, c_noise)
        return 0.3 * x_in + c_noise.reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("precond", [EDMDenoiser, VPDenoiser])
def test_preconditioning_matches_its_formula(precond):
    net = _net("SongUNet", precond=precond)
    net.model = _Probe()
    sigma = torch.tensor([0.002, 0.1, 0.5, 2.0, 80.0])
    x = torch.randn(5, 3, 8, 8)
    out = net(x, sigma)
    x_in, c_noise = net.model.seen
    s = sigma.reshape(-1, 1, 1, 1)
    if precond is EDMDenoiser:  # EDM Table 1 with sigma_data = 0.5
        c_skip, c_out, c_in = 0.25 / (s ** 2 + 0.25), s * 0.5 / (s ** 2 + 0.25).sqrt(), 1 / (s ** 2 + 0.25).sqrt()
        torch.testing.assert_close(c_noise, sigma.log() / 4)
    else:  # VP: c_skip 1, c_out -sigma, c_in 1/sqrt(1+sigma^2), c_noise (M-1) t with sigma(t) = sigma
        c_skip, c_out, c_in = 1.0, -s, 1 / (s ** 2 + 1).sqrt()
        t = c_noise.double() / 999  # float32 like EDM: log(1 + sigma^2) loses digits at sigma = 0.002
        torch.testing.assert_close(((0.5 * 19.9 * t ** 2 + 0.1 * t).exp() - 1).sqrt().float(), sigma, rtol=1e-2, atol=0)
        torch.testing.assert_close(((0.5 * 19.9 * t ** 2 + 0.1 * t).exp() - 1).sqrt().float()[1:], sigma[1:],
                                   rtol=1e-4, atol=0)
        assert math.isclose(net.sigma_max, math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1), rel_tol=1e-9)
    torch.testing.assert_close(x_in, c_in * x)
    torch.testing.assert_close(out, c_skip * x + c_out * (0.3 * c_in * x + c_noise.reshape(-1, 1, 1, 1)))


def test_resampling_and_embedding_closed_forms():
    x = torch.randn(2, 4, 8, 8)
    down, up = Conv2d(4, 4, 0, down=True), Conv2d(4, 4, 0, up=True)
    torch.testing.assert_close(down(x), nn.functional.avg_pool2d(x, 2))  # [1, 1] filter = 2x2 box average
    torch.testing.assert_close(up(x), nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    emb = PositionalEmbedding(8, endpoint=True)(torch.tensor([2.0]))
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4])  # geometric, both ends included
    torch.testing.assert_close(emb, torch.cat([(2 * freqs).cos(), (2 * freqs).sin()])[None])


class _GaussianTeacher(nn.Module):
    """Exact denoiser of N(0, sd^2 I) data; counts its evaluations."""

    def __init__(self, sd=0.5):
        super().__init__()
        self.sd, self.calls = sd, 0

    def forward(self, x, sigma, labels=None):
        self.calls += 1
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return x * self.sd ** 2 / (self.sd ** 2 + s ** 2)


def test_teacher_samplers_at_the_papers_nfe():
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
    heun = _GaussianTeacher()
    x = sample_edm_teacher(heun, noise, "ffhq64")
    assert heun.calls == 79  # EDM: 40 Heun steps, NFE 79
    exact = noise * 80 * 0.5 / math.sqrt(80 ** 2 + 0.25)  # the probability-flow ODE maps sigma_max to 0 this way
    assert float((x / exact - 1).abs().max()) < 0.015  # Heun is second order: 1% at 40 steps on this ODE

    stoch = _GaussianTeacher()
    torch.manual_seed(0)  # churn noise from the global RNG here; per-sample generators are checked below
    y = sample_edm_teacher(stoch, noise, "imagenet64")
    assert stoch.calls == 511  # EDM ImageNet-64: 256 stochastic steps, NFE 511
    assert abs(float(y.std()) - 0.5) < 0.03 and not torch.allclose(y, x, atol=1e-2)
    # Sample i's churn noise comes from its own generator: the same sample alone gives the same result.
    alone = edm_stochastic_sampler(_GaussianTeacher(), noise[5:6], num_steps=16,
                                   generators=[torch.Generator().manual_seed(5)])
    batch = edm_stochastic_sampler(_GaussianTeacher(), noise[:8], num_steps=16,
                                   generators=[torch.Generator().manual_seed(i) for i in range(8)])
    torch.testing.assert_close(alone[0], batch[5], rtol=0, atol=1e-6)
    # Without churn the stochastic sampler is the deterministic one.
    torch.testing.assert_close(edm_stochastic_sampler(_GaussianTeacher(), noise[:8], num_steps=16, S_churn=0),
                               edm_sampler(_GaussianTeacher(), noise[:8], num_steps=16), rtol=0, atol=0)
    with pytest.raises(ValueError, match="setting='cifar10'"):
        sample_edm_teacher(heun, noise, "cifar10")
