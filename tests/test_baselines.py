"""Baselines against their definitions on Gaussians; backtracking changes only the target; speed statistics.

Every generator update is checked against a hand-derived closed form on exact Gaussian denoisers
D(x) = mu + c (x - mu), c = s^2 / (s^2 + sigma^2), and checked to move a Gaussian generator toward the target.
"""
import copy
import json

import numpy as np
import pytest
import torch

import disback
from disback.checkpoint import fingerprint, read_jsonl
from disback.config import METHOD_SIGMA_DIST, DistillConfig, TeacherConfig
from disback.data import GaussianMixture, ring_mixture
from disback.steps import NFE_FAKE_STEP, NFE_GEN_STEP
from disback.losses import GENERATOR_LOSSES, dmd, generator_loss, sid
from disback.metrics import empirical_denoiser, score_mismatch
from disback.path import DegradationPath, PathWriter
from disback.stats import mean_ci, speedup, time_to_threshold, times_to_threshold
from disback.teachers import train_teacher

STD = 0.5


def gauss(mu) -> GaussianMixture:
    return GaussianMixture(torch.tensor([mu], dtype=torch.float32), torch.ones(1), STD)


def shrink(sigma):
    return STD ** 2 / (STD ** 2 + sigma ** 2)


def grad_of(loss_fn, x0, **kw):
    x = x0.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(x, **kw).sum(), x)
    return g


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 2, generator=g) + torch.tensor([1.0, -0.5])
    sigma = torch.rand(32, generator=g) * 1.5 + 0.2
    n = torch.randn(32, 2, generator=g)
    return x0, sigma, n, gauss([0.3, 0.2]), gauss([1.0, -0.4])  # target (data) and fake (generator) denoisers


def test_dmd_update_is_the_normalised_score_difference(case):
    """DMD: d loss / d x0 = (D_fake - D_target)(x_t) / mean|x0 - D_target(x_t)|, per sample (Yin et al. 2024)."""
    x0, sigma, n, target, fake = case
    x_t = x0 + sigma[:, None] * n
    d_t, d_f = target(x_t, sigma), fake(x_t, sigma)
    expected = (d_f - d_t) / (x0 - d_t).abs().mean(1, keepdim=True)
    torch.testing.assert_close(grad_of(dmd, x0, sigma=sigma, n=n, labels=None, target=target, fake_score=fake),
                               expected)
    assert GENERATOR_LOSSES["dmd2"] is dmd  # DMD2-style differs only by its fake-score steps (tested below)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 1.2])
def test_sid_update_matches_its_hand_derived_gradient(case, alpha):
    """SiD, loss (f_t - f_f)^T (f_t - x0) - alpha ||f_t - f_f||^2 over mean|x0 - f_t|, gradients through x_t:
    with linear denoisers f = mu + c (x_t - mu) the gradient is
    [(c_t - c_f)(f_t - x0) + (c_t - 1)(f_t - f_f) - 2 alpha (c_t - c_f)(f_t - f_f)] / mean|x0 - f_t|."""
    x0, sigma, n, target, fake = case
    x_t = x0 + sigma[:, None] * n
    d_t, d_f = target(x_t, sigma), fake(x_t, sigma)
    c = shrink(sigma)[:, None]  # both denoisers share the std, so c_t = c_f = c
    diff, scale = d_t - d_f, (x0 - d_t).abs().mean(1, keepdim=True)
    expected = ((c - c) * (d_t - x0) + (c - 1) * diff - 2 * alpha * (c - c) * diff) / scale
    got = grad_of(sid, x0, sigma=sigma, n=n, labels=None, target=target, fake_score=fake, alpha=alpha)
    torch.testing.assert_close(got, expected)
    # Different stds make c_t != c_f and exercise every term.
    wide = GaussianMixture(fake.means, torch.ones(1), 1.3)
    d_w = wide(x_t, sigma)
    c_w = (1.3 ** 2 / (1.3 ** 2 + sigma ** 2))[:, None]
    diff = d_t - d_w
    expected = ((c - c_w) * (d_t - x0) + (c - 1) * diff - 2 * alpha * (c - c_w) * diff) / scale
    got = grad_of(sid, x0, sigma=sigma, n=n, labels=None, target=target, fake_score=wide, alpha=alpha)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("method", sorted(GENERATOR_LOSSES))
def test_every_method_moves_a_gaussian_generator_toward_the_target(method):
    """G(z) = m + s z with the exact fake score of N(m, s^2) and target N(mu, s^2): the expected update of m,
    averaged over noise levels and samples, points from mu to m (so a descent step closes the gap)."""
    g = torch.Generator().manual_seed(1)
    m = torch.tensor([1.5, -1.0], requires_grad=True)
    mu = torch.tensor([0.0, 0.5])
    x0 = m + STD * torch.randn(20000, 2, generator=g)
    sigma = disback.diffusion.sample_sigma(20000, -1.2, 1.2, g)
    n = torch.randn(20000, 2, generator=g)
    loss = generator_loss(method, x0, sigma, n, None, gauss(mu.tolist()), gauss(m.detach().tolist())).mean()
    (grad,) = torch.autograd.grad(loss, m)
    gap = (m - mu).detach()
    cos = float(grad @ gap / (grad.norm() * gap.norm()))
    assert cos > 0.95, f"{method}: update direction has cosine {cos:.3f} with m - mu"


def test_every_method_is_zero_when_fake_equals_target(case):
    x0, sigma, n, target, _ = case
    for method in GENERATOR_LOSSES:
        g = grad_of(lambda x, **kw: generator_loss(method, x, sigma, n, None, target, copy.deepcopy(target)), x0)
        # SiD too: with identical denoisers f_t - f_f is 0 at every x_t, so its derivative through x_t is 0 as well.
        assert g.abs().max() < 1e-6, method


def whitened_latents(num: int, dim: int, seed: int):
    """Generator noise z and diffusion noise n ``[num, dim]`` each, jointly centred and whitened: their sample
    moments up to order two are exactly those of N(0, I). For Gaussians every Diff-Instruct gradient below is a
    polynomial of degree two in (z, n), so its sample mean over these latents is its expectation (no Monte Carlo)."""
    w = torch.randn(num, 2 * dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = w - w.mean(0)
    w = w @ torch.linalg.inv(torch.linalg.cholesky(w.T @ w / num)).T
    return w[:, :dim].float(), w[:, dim:].float()


@pytest.mark.parametrize("sigma", [0.3, 1.0, 3.0])
def test_diff_instruct_expected_update_is_sigma2_times_the_exact_kl_gradient(sigma):
    """Closed form: G(z) = b + a z gives N(b, a^2 I); with the exact fake score of that and a target N(mu, s^2 I),
    Diff-Instruct's expected update at noise level sigma is sigma^2 grad_(a, b) KL(p_g,sigma || p_target,sigma), the
    noised KL whose integral over sigma is Diff-Instruct's IKL: d/db = sigma^2 (b - mu) / (s^2 + sigma^2) and
    d/da = sigma^2 D a (1 / (s^2 + sigma^2) - 1 / (a^2 + sigma^2)) (D = 2 dims). Mean and scale both differ."""
    mu, s = torch.tensor([0.3, 0.2]), STD
    a, b = torch.tensor(1.3, requires_grad=True), torch.tensor([1.0, -0.4], requires_grad=True)
    fake = GaussianMixture(b.detach()[None], torch.ones(1), 1.3)
    z, n = whitened_latents(4096, 2, seed=0)
    loss = generator_loss("diff_instruct", b + a * z, torch.full((4096,), sigma), n, None, gauss(mu.tolist()), fake)
    ga, gb = torch.autograd.grad(loss.mean(), [a, b])
    vt, vg = s ** 2 + sigma ** 2, 1.3 ** 2 + sigma ** 2
    torch.testing.assert_close(gb, sigma ** 2 * (b.detach() - mu) / vt, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ga, torch.tensor(sigma ** 2 * 2 * 1.3 * (1 / vt - 1 / vg)), rtol=1e-4, atol=1e-6)
    assert ga > 0  # the generator is wider than the target: a descent step narrows it


@pytest.mark.parametrize("method", sorted(GENERATOR_LOSSES))
@pytest.mark.parametrize("std_g", [0.3, 1.3])
def test_every_method_moves_the_generator_scale_toward_the_target(method, std_g):
    """G(z) = mu + a z with the right mean and the wrong scale a = std_g (target std 0.5): over the method's own noise
    levels, the update of a has the sign of a - 0.5 (too wide shrinks, too narrow widens)."""
    mu = torch.tensor([0.3, 0.2])
    a = torch.tensor(std_g, requires_grad=True)
    z, n = whitened_latents(20000, 2, seed=1)
    sigma = disback.diffusion.sample_loss_sigma(METHOD_SIGMA_DIST[method], 20000, -1.2, 1.2,
                                                     torch.Generator().manual_seed(2))
    fake = GaussianMixture(mu[None], torch.ones(1), std_g)
    (ga,) = torch.autograd.grad(generator_loss(method, mu + a * z, sigma, n, None, gauss(mu.tolist()), fake).mean(), a)
    assert float(ga) * (std_g - STD) > 0, f"{method}: d loss / d a = {float(ga):.4f} for a = {std_g}, target {STD}"


# ---------------------------------------------------------------------------------------------------------------------
# Backtracking changes only the target schedule.

@pytest.fixture(scope="module")
def teacher():
    data = ring_mixture().sample(512, torch.Generator().manual_seed(0))
    return train_teacher(data, None, TeacherConfig(width=16, depth=1, iters=40, batch=64), progress=False)


def teacher_path(teacher, root, num_nodes=3, sigma_init=2.5) -> DegradationPath:
    """A degradation path whose every node is the teacher itself."""
    writer = PathWriter(root, {"iters": num_nodes, "batch": 8, "sigma_init": sigma_init, "num_nodes": num_nodes},
                        fingerprint(teacher))
    for k in range(num_nodes + 1):
        writer.add(teacher, k)
    return DegradationPath.load(root)


def test_backtracking_along_a_path_of_teacher_copies_equals_the_baseline(teacher, tmp_path):
    """With every node equal to the teacher, DisBack and the baseline run bitwise the same updates: the
    schedule (and the fake score's starting node) is the only thing backtracking changes."""
    path = teacher_path(teacher, tmp_path / "path")
    cfg = DistillConfig(iters=12, iters_per_node=3, batch=32, eval_every=0, seed=3)
    base = disback.distill(teacher, cfg, tmp_path / "base", progress=False)
    back = disback.backtrack(teacher, path, cfg, tmp_path / "back", progress=False)
    assert [r["node"] for r in back.log][1:] == [2, 2, 2, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert all(r["node"] == 0 for r in base.log)
    strip = [{k: v for k, v in r.items() if k not in ("node", "target_fingerprint")} for r in back.log]
    assert strip == [{k: v for k, v in r.items() if k != "node"} for r in base.log]
    for a, b in zip(base.generator.state_dict().values(), back.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_enabling_backtracking_changes_only_the_schedule_in_the_config(teacher, tmp_path):
    path = teacher_path(teacher, tmp_path / "path")
    for method in GENERATOR_LOSSES:
        cfg = DistillConfig(method=method, iters=4, iters_per_node=1, batch=16, eval_every=0)
        a = disback.distill(teacher, cfg, tmp_path / method / "a", progress=False)
        b = disback.backtrack(teacher, path, cfg, tmp_path / method / "b", progress=False)
        ca, cb = a.config.to_dict(), b.config.to_dict()
        assert {k for k in ca if ca[k] != cb[k]} == {"backtrack"}, method
        assert a.schedule.nodes == (0,) and b.schedule.nodes == (2, 1, 0)


def test_dmd2_runs_fake_steps_per_generator_update(teacher, tmp_path):
    """DMD2's two time-scale rule: ``fake_steps`` fake-score updates per generator update, counted in the NFE."""
    for k in (1, 4):
        res = disback.distill(teacher, DistillConfig(method="dmd2", fake_steps=k, iters=3, batch=8, eval_every=0),
                              tmp_path / str(k), progress=False)
        assert [r["nfe"] for r in res.log] == [i * (k * NFE_FAKE_STEP + NFE_GEN_STEP) * 8 for i in range(4)]


def test_fake_score_trains_on_each_methods_own_noise_levels(teacher, tmp_path, monkeypatch):
    """The fake score's score matching draws sigma as each method's code does: EDM's log-normal for Diff-Instruct
    and SiD, a uniform index over the whole 1000-point Karras grid for DMD and DMD2 (DMD2's compute_loss_fake);
    the generator keeps [2%, 98%] of that grid. An explicit ``fake_sigma_dist`` overrides it."""
    import disback.steps as steps

    assert {m: DistillConfig(method=m).fake_score_sigma_dist for m in GENERATOR_LOSSES} == {
        "diff_instruct": "lognormal", "dmd": "karras_all", "dmd2": "karras_all", "sid": "lognormal"}
    assert DistillConfig(method="dmd", fake_sigma_dist="lognormal").fake_score_sigma_dist == "lognormal"
    assert "fake_sigma_dist" not in DistillConfig(method="dmd").to_dict()  # a late field: old hashes unchanged
    with pytest.raises(ValueError, match="fake_sigma_dist"):
        DistillConfig(fake_sigma_dist="uniform")
    seen = {}
    real_loss = steps.fake_score_loss

    def spy(fake_score, x0, sigma, labels, noise):
        seen.setdefault(key, []).append(sigma)
        return real_loss(fake_score, x0, sigma, labels, noise=noise)

    monkeypatch.setattr(steps, "fake_score_loss", spy)
    for key in ("diff_instruct", "dmd2"):
        disback.distill(teacher, DistillConfig(method=key, iters=8, batch=256, eval_every=0), tmp_path / key,
                        progress=False)
    lognormal, karras = torch.cat(seen["diff_instruct"]), torch.cat(seen["dmd2"])
    grid = disback.diffusion.karras_curve(torch.arange(1000, dtype=torch.float64) / 999).float()
    assert torch.isin(karras, grid).all() and not torch.isin(lognormal, grid).any()
    assert karras.min() < grid[20] and karras.max() > grid[980]  # both ends of the grid beyond the generator's
    assert (karras > 10).float().mean() > 0.2 > (lognormal > 10).float().mean()


@pytest.mark.parametrize("method", ["diff_instruct", "sid", "dmd2"])
def test_networks_train_and_sample_in_the_modes_of_diff_instructs_and_sids_code(method, tmp_path):
    """With dropout (the paper-scale EDM teachers have 0.05-0.25): the fake score learns from generator samples
    drawn in eval mode and trains in train mode; the generator trains in train mode and queries the fake score (and
    the target, and DMD2's discriminator head) in eval mode; every network is back in its own mode after a step.
    Without dropout the modes change nothing: the cpu settings' runs are bitwise as before."""
    from disback.generator import frozen_copy, make_generator, trainable_copy
    from disback.networks import EDMDenoiser
    from disback.networks.discriminator import make_discriminator_head
    from disback.steps import GANTerm, RealData, adam, fake_score_step, generator_step

    torch.manual_seed(0)
    teacher = EDMDenoiser(img_resolution=8, img_channels=1, label_dim=0, model_type="SongUNet", model_channels=8,
                          channel_mult=[1, 2], num_blocks=1, attn_resolutions=[], dropout=0.5).eval()
    generator, fake, target = make_generator(teacher, 2.5).train(), trainable_copy(teacher).train(), \
        frozen_copy(teacher)
    gan = GANTerm(make_discriminator_head(fake).train(), RealData(torch.randn(16, 1, 8, 8)), 0.1, 0.1) \
        if method == "dmd2" else None
    seen = []
    for name, net in (("generator", generator), ("fake", fake), ("target", target),
                      *((("head", gan.head),) if gan else ())):
        net.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, m.training)))
    config = DistillConfig(method=method, batch=4)
    rng = torch.Generator().manual_seed(0)
    fake_score_step(fake, adam(fake.parameters(), 1e-4), generator, 4, -1.2, 1.2, rng, 1, gan=gan)
    assert set(seen) == {("generator", False), ("fake", True), *((("head", True),) if gan else ())}
    assert generator.training and fake.training  # restored
    seen.clear()
    generator_step(generator, adam(generator.parameters(), 1e-4), target, fake, config, rng, 1, gan=gan)
    assert set(seen) == {("generator", True), ("fake", False), ("target", False), *((("head", False),) if gan else ())}
    assert generator.training and fake.training and (gan is None or gan.head.training)
    # the modes matter here: the same input through the fake score differs between train and eval mode
    x, s = torch.randn(2, 1, 8, 8), torch.ones(2)
    with torch.no_grad():
        assert not torch.equal(fake.train()(x, s), fake.eval()(x, s))


def test_generator_and_gan_noise_levels_of_dmd2_use_the_grid():
    """DMD / DMD2's generator: indices 20..980 inclusive (DMD2's randint(min_step, max_step + 1)); their GAN term's
    noisy images: the whole grid, as the fake score."""
    from disback.diffusion import karras_curve, sample_loss_sigma
    from disback.steps import GANTerm, _noisy_draw

    g = torch.Generator().manual_seed(0)
    index = lambda s: torch.round((s.double() ** (1 / 7) - 0.002 ** (1 / 7)) / (80 ** (1 / 7) - 0.002 ** (1 / 7)) * 999)
    gen = index(sample_loss_sigma("karras", 50000, -1.2, 1.2, g))
    assert gen.min() == 20 and gen.max() == 980
    gan = GANTerm(None, None, 1.0, 1.0, sigma_dist=DistillConfig(method="dmd2").fake_score_sigma_dist)
    sigma, _ = _noisy_draw(50000, (2,), gan, g, "cpu")
    assert index(sigma).min() == 0 and index(sigma).max() == 999
    assert float(sigma.max()) == pytest.approx(float(karras_curve(torch.tensor(1.0))), rel=1e-6)


def test_probe_sees_the_scheduled_target_and_never_changes_the_run(teacher, tmp_path):
    path = teacher_path(teacher, tmp_path / "path", num_nodes=3)
    seen = []

    def probe(generator, fake, target, node, step, seed):
        seen.append((step, node, fingerprint(target)))
        assert seed == 1
        return {"x": float(torch.randn(1)[0])}  # draws from the global RNG on purpose: must not matter

    cfg = DistillConfig(iters=6, iters_per_node=2, batch=16, eval_every=2, seed=1)
    plain = disback.backtrack(teacher, path, cfg, tmp_path / "plain", progress=False)
    probed = disback.backtrack(teacher, path, cfg, tmp_path / "probed", progress=False, probe_fn=probe)
    assert [s[:2] for s in seen] == [(0, 2), (2, 2), (4, 1), (6, 0)]  # the target of the update just made
    assert [{k: v for k, v in r.items() if k != "probe"} for r in probed.log] == plain.log


# ---------------------------------------------------------------------------------------------------------------------
# Score mismatch and convergence statistics.

def test_score_mismatch_closed_form_between_two_gaussians():
    """Exact denoisers of N(a, s^2) and N(b, s^2): sigma (s_a - s_b) = (1 - c)(a - b) / sigma everywhere."""
    a, b = gauss([0.0, 0.0]), gauss([0.6, -0.8])
    x = torch.randn(200, 2)
    got = score_mismatch(a, b, x, [0.3, 1])
    assert list(got) == ["0.3", "1.0"] and json.loads(json.dumps(got)) == got  # keys survive a JSON round trip
    for sigma, v in got.items():
        sigma = float(sigma)
        assert v == pytest.approx((1 - shrink(sigma)) ** 2 * 1.0 / 2 / sigma ** 2, rel=1e-4)  # |a - b|^2 = 1


def test_empirical_denoiser_estimates_the_distribution_score():
    """The kernel estimate from 4000 samples of N(mu, s^2) is close to the exact denoiser at sigma = 0.5 and 1."""
    g = torch.Generator().manual_seed(0)
    exact = gauss([1.0, 2.0])
    kde = empirical_denoiser(exact.sample(4000, g))
    x = exact.sample(500, g)
    for sigma, v in score_mismatch(exact, kde, x, [0.5, 1.0]).items():
        ref = score_mismatch(exact, gauss([0.0, 0.0]), x, [float(sigma)])[sigma]  # a clearly wrong score, for scale
        assert v < 0.05 * ref, (sigma, v, ref)


def test_time_to_threshold_interpolates_and_censors():
    assert time_to_threshold([0, 10, 20], [5.0, 3.0, 1.0], 2.0) == (15.0, True)
    assert time_to_threshold([0, 10], [1.0, 0.5], 2.0) == (0.0, True)
    assert time_to_threshold([0, 10, 20], [5.0, 4.0, 3.0], 2.0) == (20.0, False)  # never: censored at the budget
    assert time_to_threshold([0, 10, 20, 30], [5.0, 1.0, 9.0, 1.0], 2.0)[0] == pytest.approx(7.5)  # first crossing
    times, reached = times_to_threshold([0, 10], [[3.0, 1.0], [3.0, 2.5]], 2.0)
    assert times.tolist() == [5.0, 10.0] and reached.tolist() == [True, False]
    with pytest.raises(ValueError, match="same non-zero length"):
        time_to_threshold([0, 1], [1.0], 0.5)
    with pytest.raises(ValueError, match="threshold=nan"):
        time_to_threshold([0, 1], [1.0, 0.5], float("nan"))


def test_speedup_ratio_interval_and_censoring():
    s = speedup([100, 110, 90, 105, 95], [300, 310, 290, 305, 295])
    assert s.ratio == pytest.approx(1 / 3) and s.ci_low <= s.ratio <= s.ci_high < 1 and not s.censored
    assert s.ci_high - s.ci_low < 0.05
    wide = speedup([50, 150, 100, 60, 140], [100, 100, 100, 100, 100])
    assert wide.ci_low < 1 < wide.ci_high  # noisy arms: the interval says "no evidence either way"
    assert speedup([10, 20], [5, 10], [True, True], [True, False]).censored
    assert "censored" in str(speedup([10, 20], [5, 10], [True, True], [True, False]))
    with pytest.raises(ValueError, match="paired"):
        speedup([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="level"):
        speedup([1, 2], [1, 2], level=1.5)


def test_mean_ci_matches_student_t():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert ci["mean"] == 2.5 and ci["ci_high"] - 2.5 == pytest.approx(3.182446 * np.std([1, 2, 3, 4], ddof=1) / 2)
    one = mean_ci([3.0])  # one seed: no spread to report (it said std 0 before)
    assert one["mean"] == 3.0 and one["n"] == 1 and all(np.isnan(one[k]) for k in ("std", "ci_low", "ci_high"))
