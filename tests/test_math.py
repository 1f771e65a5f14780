"""Closed-form checks of the diffusion math and the DisBack losses on Gaussian data."""
import math

import pytest
import torch

from disback.data import GaussianMixture, ring_mixture
from disback.diffusion import EDMPrecond, denoising_loss, edm_sampler, heun_nfe, karras_sigmas, score
from disback.losses import fake_score_loss, generator_loss


def test_gaussian_denoiser_and_score_closed_form(gaussian):
    """D(x) = mu + s^2/(s^2+sigma^2)(x - mu) and the score equals the gradient of the noised log-density."""
    x = torch.randn(64, 2, dtype=torch.float32)
    sigma = 0.9
    mu, s2 = gaussian.means[0], gaussian.std ** 2
    torch.testing.assert_close(gaussian(x, sigma), mu + s2 / (s2 + sigma ** 2) * (x - mu))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(gaussian.log_prob(xg, sigma).sum(), xg)
    torch.testing.assert_close(gaussian.score(x, sigma), grad, atol=1e-5, rtol=1e-4)


def test_mixture_score_matches_autograd():
    mix = ring_mixture()
    x = torch.randn(128, 2) * 2
    for sigma in (0.05, 0.5, 3.0):
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.log_prob(xg, sigma).sum(), xg)
        torch.testing.assert_close(mix.score(x, sigma), grad, atol=1e-3, rtol=1e-3)


class Shifted(torch.nn.Module):
    """Exact Gaussian denoiser plus c * x: a family whose score-matching optimum is c = 0."""

    def __init__(self, exact, c):
        super().__init__()
        self.exact, self.c = exact, c
        self.sigma_data, self.label_dim, self.data_shape = exact.sigma_data, 0, exact.data_shape

    def forward(self, x, sigma, labels=None):
        return self.exact(x, sigma) + self.c * x


def test_fake_score_loss_minimised_by_exact_denoiser(gaussian):
    """The fake-score (DSM) loss is smallest at the exact denoiser of the sampled distribution."""
    x0 = gaussian.sample(20000, torch.Generator().manual_seed(0))
    sigma = torch.full((20000,), 0.8)
    losses = {c: fake_score_loss(Shifted(gaussian, c), x0, sigma, generator=torch.Generator().manual_seed(1)).item()
              for c in (-0.1, -0.02, 0.0, 0.02, 0.1)}
    assert min(losses, key=losses.get) == 0.0
    assert losses[0.1] > losses[0.0] * 1.01


class LinearGenerator(torch.nn.Module):
    """G(z) = a * z + b: its samples are N(b, a^2 I), whose exact denoiser is known."""

    def __init__(self, a, b):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(float(a)))
        self.b = torch.nn.Parameter(torch.tensor(b, dtype=torch.float32))

    def forward(self, z):
        return self.a * z + self.b

    def distribution(self):
        return GaussianMixture(self.b.detach()[None], torch.ones(1), abs(self.a.item()))


def _grad(loss, gen):
    return torch.autograd.grad(loss, [gen.a, gen.b])


def test_diff_instruct_update_is_score_difference_times_jacobian(gaussian):
    """grad_eta = E[sigma^2 (s_fake - s_target)(x_t) * dx_t/deta], computed analytically for G(z) = a z + b."""
    gen = LinearGenerator(1.3, [2.0, 0.0])
    fake = gen.distribution()
    g = torch.Generator().manual_seed(0)
    z, n = torch.randn(4096, 2, generator=g), torch.randn(4096, 2, generator=g)
    sigma = torch.rand(4096, generator=g) * 2 + 0.1
    x0 = gen(z)
    loss = generator_loss("diff_instruct", x0, sigma, n, None, gaussian, fake).mean()
    ga, gb = _grad(loss, gen)
    x_t = (x0 + sigma[:, None] * n).detach()
    diff = sigma[:, None] ** 2 * (fake.score(x_t, sigma) - gaussian.score(x_t, sigma))  # [N, 2]
    torch.testing.assert_close(ga, (diff * z).sum(1).mean())      # dx/da = z
    torch.testing.assert_close(gb, diff.mean(0))                  # dx/db = I
    # The update moves b toward the target mean.
    assert (gb * (gen.b.detach() - gaussian.means[0])).sum() > 0


@pytest.mark.parametrize("method", ["diff_instruct", "dmd", "sid"])
def test_update_vanishes_when_fake_equals_target(gaussian, method):
    """When the fake score equals the target, every method's generator update is zero."""
    gen = LinearGenerator(0.7, [0.5, -1.0])  # the target's own distribution
    g = torch.Generator().manual_seed(0)
    z, n = torch.randn(512, 2, generator=g), torch.randn(512, 2, generator=g)
    sigma = torch.rand(512, generator=g) + 0.1
    loss = generator_loss(method, gen(z), sigma, n, None, gaussian, gaussian).mean()
    for grad in _grad(loss, gen):
        assert grad.abs().max() < 1e-5


def test_precond_coefficients_and_sampler_on_exact_denoiser():
    """EDM preconditioning has unit-variance targets; the Heun sampler on an exact denoiser recovers the mixture."""
    net = EDMPrecond(lambda x, c, labels: torch.zeros_like(x), sigma_data=0.5)
    x = torch.randn(3, 2)
    torch.testing.assert_close(net(x, 1e-4), x, atol=1e-6, rtol=1e-4)  # c_skip -> 1 at small sigma
    assert karras_sigmas(18, 0.002, 80.0)[0] == pytest.approx(80.0)
    assert heun_nfe(18) == 35
    from disback.metrics import mode_stats

    mix = ring_mixture()
    xs = edm_sampler(mix, torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)), num_steps=32, sigma_max=20)
    stats = mode_stats(xs, mix)
    assert stats["mode_coverage"] == 1.0 and stats["weight_tv"] < 0.05


def test_denoising_loss_weight_and_score_relation(gaussian):
    x = torch.randn(8, 2)
    torch.testing.assert_close(score(gaussian, x, 0.5), gaussian.score(x, 0.5))
    loss = denoising_loss(gaussian, gaussian.sample(10, torch.Generator().manual_seed(0)), torch.full((10,), 0.5))
    assert loss.shape == (10,) and torch.isfinite(loss).all() and not math.isnan(loss.sum().item())


def test_score_error_draws_its_noise_from_its_seed_not_the_global_rng(gaussian):
    """The score error is a function of its inputs: advancing torch's global RNG in between changes nothing."""
    from disback.metrics import score_error

    x0 = gaussian.sample(500, torch.Generator().manual_seed(0))
    model, sigmas = Shifted(gaussian, 0.05), [0.1, 1.0]
    torch.manual_seed(0)
    first = score_error(model, gaussian, x0, sigmas, seed=3)
    torch.manual_seed(1)
    torch.randn(1000)
    assert score_error(model, gaussian, x0, sigmas, seed=3) == first  # bitwise
    assert score_error(model, gaussian, x0, sigmas, seed=4) != first  # the seed is what picks the noise
    assert all(v == 0 for v in score_error(gaussian, gaussian, x0, sigmas).values())  # exact score: no error
    assert all(v > 0 for v in first.values())


def test_foreach_adam_is_bitwise_the_single_tensor_adam():
    """The loops' Adam (``steps.adam``, multi-tensor) takes exactly the default implementation's steps on CPU."""
    from disback.networks import build_backbone
    from disback.steps import adam

    torch.manual_seed(0)
    nets = [EDMPrecond(build_backbone("unet", (1, 8, 8), width=8, depth=1, label_dim=3), 0.5, 3)
            for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(nets[0].parameters(), lr=1e-2, foreach=False), adam(nets[1].parameters(), 1e-2)]
    x, sigma, labels = torch.randn(6, 1, 8, 8), torch.rand(6) + 0.1, torch.randint(3, (6,))
    for _ in range(4):
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            net(x, sigma, labels).square().mean().backward()
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    assert not torch.equal(nets[0].state_dict()["backbone.out.2.weight"], torch.zeros_like(nets[0].state_dict()["backbone.out.2.weight"]))


def test_channels_last_unet_matches_the_nchw_computation():
    """The digits UNet runs its convolutions channels-last; its output equals the plain NCHW computation to float
    rounding and comes back in the default layout, and the layout leaves the weights' digest unchanged."""
    from disback.checkpoint import fingerprint
    from disback.networks import build_backbone

    torch.manual_seed(1)
    net = build_backbone("unet", (1, 8, 8), width=8, depth=1, label_dim=3)
    for p in net.parameters():  # the zero-initialised output layers would hide any difference
        torch.nn.init.normal_(p, std=0.3)
    x, c_noise, labels = torch.randn(5, 1, 8, 8), torch.randn(5), torch.randint(3, (5,))
    out, digest = net(x, c_noise, labels), fingerprint(net)
    assert out.is_contiguous() and net.inp.weight.is_contiguous(memory_format=torch.channels_last)
    net.channels_last = False
    net.to(memory_format=torch.contiguous_format)
    assert net.inp.weight.is_contiguous() and fingerprint(net) == digest
    ref = net(x, c_noise, labels)
    assert not torch.equal(out, torch.zeros_like(out)) and out.abs().max() > 1
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_cached_evaluation_latents_are_the_seeded_ones_and_safe_to_modify():
    """Evaluation noise comes from a per-process cache: the same values as drawing it per seed, and a caller that
    modifies what it got cannot change what the next evaluation gets."""
    from disback.generator import seeded_labels, seeded_latents, seeded_noise

    seeds = range(10 ** 6, 10 ** 6 + 50)
    z, labels = seeded_latents(seeds, (1, 8, 8), 10)
    assert torch.equal(z, seeded_noise(seeds, (1, 8, 8))) and torch.equal(labels, seeded_labels(seeds, 10))
    z.zero_(), labels.zero_()
    z2, labels2 = seeded_latents(seeds, (1, 8, 8), 10)
    assert torch.equal(z2, seeded_noise(seeds, (1, 8, 8))) and torch.equal(labels2, seeded_labels(seeds, 10))
    assert seeded_latents(seeds, (2,), 0)[1] is None
