"""The verdict machinery: control arm, per-method noise levels, DMD regression, compute counting, snapshots,
schedule shares, BCa/t intervals, finals, log-metric area, direction agreement, progress and notebook cleaning."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats as sstats

import disback
import disback.experiments
import disback.settings
from disback.analysis import (ablation_variants, compare, convergence, iters_per_node_for_share, schedule_share,
                              stage1_cost, threshold_sweep)
from disback.checkpoint import fingerprint
from disback.config import DegradeConfig, DistillConfig, TeacherConfig
from disback.data import GaussianMixture, ring_mixture
from disback.diffusion import karras_curve, sample_loss_sigma
from disback.distill import load_snapshot
from disback.metrics import (direction_agreement, frechet_distance, frechet_distance_samples, mode_stats, score_error,
                             score_mismatch, wasserstein2)
from disback.path import DegradationPath, PathWriter
from disback.stats import final_values, mean_ci, mean_log_metric, paired_ratio_t, speedup, time_to_threshold
from disback.steps import COST_FAKE_STEP, NFE_FAKE_STEP, cost_gen_step, regression_pairs
from disback.teachers import train_teacher


@pytest.fixture(scope="module")
def teacher():
    data = ring_mixture().sample(512, torch.Generator().manual_seed(0))
    return train_teacher(data, None, TeacherConfig(width=16, depth=1, iters=40, batch=64), progress=False)


@pytest.fixture
def perturbed_path(teacher, tmp_path):
    """A 3-node path whose nodes differ from the teacher (a shifted copy each), so loads are visible."""
    writer = PathWriter(tmp_path / "path", {"iters": 3, "batch": 8, "sigma_init": 2.5, "num_nodes": 3},
                        fingerprint(teacher))
    for k in range(4):
        node = disback.generator.frozen_copy(teacher)
        with torch.no_grad():
            for p in node.parameters():
                p.add_(0.01 * k)
        writer.add(node, k)
    return DegradationPath.load(tmp_path / "path")


def test_control_arm_starts_the_fake_score_at_node_n_and_aims_at_the_teacher(teacher, perturbed_path, tmp_path):
    """Control arm: the fake score begins as the path's last node, the target is the teacher at every update,
    and with the same seed it equals DisBack until DisBack's first intermediate target changes the update."""
    cfg = DistillConfig(iters=6, iters_per_node=2, batch=16, eval_every=0, lr_fake=1e-12)
    control = disback.distill(teacher, cfg.replace(fake_from_path=True), tmp_path / "c", path=perturbed_path,
                              progress=False)
    assert all(r["node"] == 0 for r in control.log)
    node_n = perturbed_path.load_node(3, disback.generator.frozen_copy(teacher))
    for a, b in zip(control.fake_score.state_dict().values(), node_n.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # lr_fake ~ 0: still node N at the end
    baseline = disback.distill(teacher, cfg, tmp_path / "b", progress=False)
    assert fingerprint(baseline.generator) != fingerprint(control.generator)
    with pytest.raises(ValueError, match="fake_from_path"):
        DistillConfig(backtrack=True, fake_from_path=True)
    with pytest.raises(ValueError, match="needs a DegradationPath"):
        disback.distill(teacher, cfg.replace(fake_from_path=True), tmp_path / "x", progress=False)


@pytest.mark.parametrize("dist,lo,hi", [("karras", karras_curve(torch.tensor(20 / 999)), karras_curve(torch.tensor(980 / 999))),
                                        ("sid", 0.002, float(karras_curve(torch.tensor(0.8))))])
def test_generator_noise_levels_follow_each_papers_range(dist, lo, hi):
    s = sample_loss_sigma(dist, 20000, -1.2, 1.2, torch.Generator().manual_seed(0))
    assert float(s.min()) >= float(lo) * 0.999 and float(s.max()) <= float(hi) * 1.001
    assert float(s.max()) > 0.9 * float(hi)  # the range is used, not just its bottom
    assert 23 < float(karras_curve(torch.tensor(0.8))) < 25  # SiD's tmax = 800: sigma up to about 24
    assert DistillConfig(method="sid").generator_sigma_dist == "sid"
    assert DistillConfig(method="dmd2").generator_sigma_dist == "karras"
    assert DistillConfig(method="diff_instruct").generator_sigma_dist == "lognormal"
    with pytest.raises(ValueError, match="sigma_dist"):
        DistillConfig(sigma_dist="uniform")


def test_dmd_regression_pairs_are_the_teachers_ode_and_pull_the_generator(teacher, tmp_path):
    """DMD's regression term: pairs are (z, Heun ODE of the teacher from reg_sigma_max * z); with it on, the
    generator moves toward its pairs (the regression error falls) and the run costs the pairs' ODE."""
    pairs = regression_pairs(teacher, 64, 20.0)
    again = disback.experiments.sample_teacher(teacher, disback.settings.load_setting("ring2d", num_reference=10),
                                               64, 18, 20.0, seed_offset=5 * 10 ** 6)[0]
    torch.testing.assert_close(pairs["x"], again)
    cfg = DistillConfig(iters=30, batch=64, eval_every=0, reg_weight=10.0, reg_pairs=64, reg_sigma_max=20.0,
                        lr_gen=1e-3)
    res = disback.distill(teacher, cfg, tmp_path / "r", progress=False)
    g0 = disback.generator.make_generator(teacher, cfg.sigma_init)
    with torch.no_grad():
        before = float(((g0(pairs["z"]) - pairs["x"]) ** 2).mean())
        after = float(((res.generator(pairs["z"]) - pairs["x"]) ** 2).mean())
    assert after < 0.8 * before
    assert res.log[0]["nfe"] == 64 * 35 and res.log[1]["nfe"] - res.log[0]["nfe"] == 64 * (2 + 3 + 1)


def test_compute_counts_backward_passes_and_sid_goes_through_both_denoisers(teacher, tmp_path):
    assert COST_FAKE_STEP == 4 and cost_gen_step("diff_instruct") == 5 and cost_gen_step("sid") == 9
    for method, k in (("diff_instruct", 1), ("sid", 1), ("dmd2", 3)):
        cfg = DistillConfig(method=method, fake_steps=k, iters=2, batch=8, eval_every=0)
        res = disback.distill(teacher, cfg, tmp_path / method, progress=False)
        assert [r["cost"] for r in res.log] == [i * 8 * (k * COST_FAKE_STEP + cost_gen_step(method)) for i in range(3)]


def test_stage1_is_charged_to_every_arm_that_uses_the_path(perturbed_path):
    """DisBack and the control arm (fake score started at node N) both need the path, so both are charged its
    recording in compute; the baseline is not, and an arm that used the path cannot be analysed without it."""
    log = [{"step": s, "metrics": {"w2": 2.0 - s / 10}, "nfe": 10 * s, "cost": 20 * s} for s in range(11)]
    arms = {"baseline": DistillConfig(), "DisBack": DistillConfig(backtrack=True),
            "control": DistillConfig(fake_from_path=True)}
    runs = {arm: [SimpleNamespace(log=log, config=cfg.replace(seed=k)) for k in range(2)] for arm, cfg in arms.items()}
    charge = stage1_cost(perturbed_path)
    assert charge == {"nfe": 3 * 8 * NFE_FAKE_STEP, "cost": 3 * 8 * COST_FAKE_STEP}  # iters x batch of stage 1
    conv = {arm: convergence(results, "w2", 1.5, perturbed_path) for arm, results in runs.items()}
    assert conv["baseline"]["cost"][0] == 0 and conv["baseline"]["compute"].tolist() == [100.0, 100.0]
    for arm in ("DisBack", "control"):
        assert conv[arm]["cost"][0] == charge["cost"] and conv[arm]["nfe"][0] == charge["nfe"], arm
        assert conv[arm]["compute"].tolist() == [100.0 + charge["cost"]] * 2, arm
    assert compare(conv["baseline"], conv["control"])["speedup_compute"]["ratio"] == pytest.approx(
        100 / (100 + charge["cost"]))
    with pytest.raises(ValueError, match="pass it as `path`"):
        convergence(runs["control"], "w2", 1.5)
    with pytest.raises(ValueError, match="one arm at a time"):
        convergence(runs["baseline"] + runs["control"], "w2", 1.5, perturbed_path)


def test_snapshots_keep_the_generator_as_it_was(teacher, tmp_path):
    cfg = DistillConfig(iters=6, batch=16, eval_every=3, snapshot_every=3)
    res = disback.distill(teacher, cfg, tmp_path / "s", progress=False)
    final = load_snapshot(res.run_dir, 6, teacher, cfg.sigma_init)
    assert fingerprint(final) == fingerprint(res.generator)
    assert fingerprint(load_snapshot(res.run_dir, 0, teacher, cfg.sigma_init)) == fingerprint(
        disback.generator.make_generator(teacher, cfg.sigma_init))
    with pytest.raises(disback.checkpoint.ArtifactError, match="missing"):
        load_snapshot(res.run_dir, 4, teacher, cfg.sigma_init)


def test_share_of_updates_on_intermediate_nodes():
    assert iters_per_node_for_share(0.1, 4, 400) == 13  # 3 nodes x 13 = 39 of 400 updates
    cfg = DistillConfig(backtrack=True, iters=400, iters_per_node=13)
    assert schedule_share(cfg, 4) == pytest.approx(39 / 400)
    assert schedule_share(cfg.replace(backtrack=False), 4) == 0
    for bad in ({"share": 0.0, "num_nodes": 4}, {"share": 1.0, "num_nodes": 4}, {"share": 0.1, "num_nodes": 1}):
        with pytest.raises(ValueError):
            iters_per_node_for_share(iters=400, **bad)
    assert iters_per_node_for_share(0.05, 8, 300) == 2  # 2.1 per node: 14 of 300 updates, the nearest schedule
    with pytest.raises(ValueError, match="0.1 update per node; the least schedule .* a share of 0.1"):
        iters_per_node_for_share(0.01, 11, 100)  # would silently become 1 per node, i.e. 10% of the updates


def test_schedule_grid_gives_every_arm_of_a_method_its_options():
    arm = DistillConfig(iters=300, lr_fake=1e-3).to_dict()
    headline = {"headline": {"baseline": arm, "DisBack": {**arm, "backtrack": True}}, "headline_share": 0.1}
    variants = ablation_variants(headline, DegradeConfig(num_nodes=4), {"dmd2": [4], "sid": [2]}, [0.1, 0.5], {},
                                 {"dmd2": {"fake_steps": 5}})
    assert [(v.method, v.group) for v in variants] == [("dmd2", "baseline"), ("dmd2", "control"), ("dmd2", "N=4"),
                                                       ("dmd2", "N=4"), ("sid", "baseline"), ("sid", "control"),
                                                       ("sid", "N=2"), ("sid", "N=2")]
    assert [v.config.fake_steps for v in variants] == [5] * 4 + [1] * 4  # the same for baseline, control, DisBack
    assert variants[1].config.fake_from_path and not variants[1].config.backtrack
    assert variants[3].config.iters_per_node == iters_per_node_for_share(0.5, 4, 300)
    with pytest.raises(ValueError, match="dmd"):
        ablation_variants(headline, DegradeConfig(num_nodes=4), {"sid": [4]}, [0.1], {}, {"dmd": {"fake_steps": 5}})


def test_bca_and_t_intervals_agree_with_scipy_and_widen_at_small_n():
    a, b = np.array([100., 120, 90, 130, 110]), np.array([300., 250, 320, 310, 280])
    s = speedup(a, b)
    ref = sstats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) / y.mean(axis), paired=True, vectorized=True,
                           n_resamples=10000, method="BCa", random_state=np.random.default_rng(0))
    assert s.method == "BCa" and (s.ci_low, s.ci_high) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high))
    d = np.log(a / b)
    half = sstats.t.ppf(0.975, 4) * d.std(ddof=1) / np.sqrt(5)
    assert (s.t_low, s.t_high) == pytest.approx((np.exp(d.mean() - half), np.exp(d.mean() + half)))
    assert s.t_high - s.t_low > s.pct_high - s.pct_low  # the t interval is the more cautious one at n = 5
    assert np.isnan(paired_ratio_t([1, 0], [1, 1])["ratio"])


def test_finals_and_log_metric_area_closed_forms():
    v = np.array([[4., 3, 2, 1, 1, 3, 1, 3], [1, 1, 1, 1, 1, 1, 1, 1]])
    assert final_values(v).tolist() == [2.0, 1.0]  # last quarter: (1 + 3) / 2
    steps = np.array([0., 10, 20])
    assert mean_log_metric(steps, [[2., 2, 2]])[0] == pytest.approx(2)
    assert mean_log_metric(steps, [[1., np.e, np.e ** 2]])[0] == pytest.approx(np.e)  # exp(mean of 0..2)
    with pytest.raises(ValueError, match="positive"):
        mean_log_metric(steps, [[1., 0, 1]])


_MIX = ring_mixture()
BAD_STATS_AND_METRICS = {
    "speedup n_boot 0": (lambda: speedup([1., 2, 3], [1., 2, 4], n_boot=0), r"n_boot=0: must be an integer >= 1"),
    "speedup reached of another length": (lambda: speedup([1., 2, 3], [1., 2, 4], reached_a=[True]),
                                          r"reached_a: must be one flag per seed, shape \(3,\)"),
    "paired_ratio_t lengths differ": (lambda: paired_ratio_t([1., 2, 3], [1., 2]),
                                      r"a and b: must be paired 1-D arrays.*\(3,\), \(2,\)"),
    "paired_ratio_t level in percent": (lambda: paired_ratio_t([1., 2, 3], [1., 2, 4], level=95),
                                        r"level=95: must be in \(0, 1\)"),
    "mean_ci level in percent": (lambda: mean_ci([1., 2, 3], level=95), r"level=95: must be in \(0, 1\)"),
    "mean_ci 2-D": (lambda: mean_ci([[1., 2], [3, 4]]), r"values: must be 1-D .*\(2, 2\)"),
    "time_to_threshold threshold None": (lambda: time_to_threshold([1, 2], [3, 1], None),
                                         r"threshold=None: must be a finite number"),
    "time_to_threshold x decreasing": (lambda: time_to_threshold([0, 20, 10], [3, 2, 1], 1.5),
                                       r"x: must be finite and increasing"),
    "final_values no evaluations": (lambda: final_values([]), r"values: must be \[seeds, evals\].*\(1, 0\)"),
    "final_values 3-D": (lambda: final_values(np.zeros((2, 2, 2))), r"values: must be \[seeds, evals\]"),
    "mean_log_metric steps of another length": (lambda: mean_log_metric([0., 10, 20], [[1., 2]]),
                                                r"steps and values: .*same evals >= 2; got \(3,\) and \(1, 2\)"),
    "mean_log_metric steps out of order": (lambda: mean_log_metric([10., 0, 20], [[1., 2, 3]]),
                                           r"steps: must not decrease"),
    "frechet of different dims": (lambda: frechet_distance_samples(np.zeros((5, 2)), np.zeros((5, 3))),
                                  r"frechet_distance_samples\(a, b\).*same D.*\(5, 2\) and \(5, 3\)"),
    "frechet of one sample": (lambda: frechet_distance_samples(np.zeros((1, 2)), np.zeros((5, 2))),
                              r"N >= 2.*\(1, 2\)"),
    "frechet_distance mean and cov differ": (lambda: frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)),
                                             r"mu1, cov1, mu2, cov2: must be \[D\], \[D, D\]"),
    "w2 of different dims": (lambda: wasserstein2(np.zeros((5, 2)), np.zeros((5, 3))),
                             r"wasserstein2\(a, b\).*same D.*\(5, 2\) and \(5, 3\)"),
    "w2 of images": (lambda: wasserstein2(np.zeros((5, 1, 2, 2)), np.zeros((5, 1, 2, 2))),
                     r"flatten images to \[N, C\*H\*W\]"),
    "w2 of nothing": (lambda: wasserstein2(np.zeros((0, 2)), np.zeros((5, 2))), r"N >= 1.*\(0, 2\)"),
    "mode_stats of 3-D points": (lambda: mode_stats(np.zeros((5, 3)), _MIX),
                                 r"mode_stats: samples must be \[N, 2\].*\(5, 3\)"),
    "score_mismatch at sigma 0": (lambda: score_mismatch(_MIX, _MIX, torch.zeros(4, 2), [0.0]),
                                  r"sigmas=\[0.0\]: must be a non-empty list of finite noise levels > 0"),
    "mixture sample of 0": (lambda: _MIX.sample(0), r"n=0: must be an integer >= 1 \(the number of samples\)"),
}


@pytest.mark.parametrize("case", list(BAD_STATS_AND_METRICS))
def test_bad_stats_and_metrics_inputs_name_the_argument(case):
    call, match = BAD_STATS_AND_METRICS[case]
    with pytest.raises(ValueError, match=match):
        call()


def test_threshold_time_after_a_non_finite_evaluation_and_infinite_bootstrap_ratios():
    """A NaN / inf evaluation (a metric of non-finite samples) is not interpolated from: the crossing is the next
    evaluation at or below the threshold. A resample whose arm B reached at once is an infinite ratio: the percentile
    interval's bounds stay the quantiles (inf only in that tail), not NaN."""
    for bad in (np.nan, np.inf):
        assert time_to_threshold([0, 10, 20], [5, bad, 1], 2) == (20.0, True)
    assert time_to_threshold([0, 10, 20], [5, 3, 1], 2) == (15.0, True)
    s = speedup([50., 60, 70, 80, 90], [0., 30, 35, 40, 45], n_boot=4000)
    idx = np.random.default_rng(0).integers(0, 5, size=(4000, 5))
    with np.errstate(divide="ignore"):
        boot = np.array([50., 60, 70, 80, 90])[idx].mean(1) / np.array([0., 30, 35, 40, 45])[idx].mean(1)
    assert np.isinf(boot).any() and np.isfinite([s.pct_low, s.pct_high]).all()
    assert (s.pct_low, s.pct_high) == tuple(np.quantile(boot, [0.025, 0.975]))
    assert np.isnan(speedup([0., 0, 5], [0., 0, 5]).pct_low)  # a 0 / 0 resample: undefined


def test_metrics_refuse_a_bare_sigma_and_w2_of_nan_samples_is_nan():
    with pytest.raises(TypeError, match=r"sigmas: must be a list of noise levels .*got float"):
        score_error(_MIX, _MIX, torch.zeros(4, 2), 0.5)
    for sigmas, kind in (("25", r"list of noise levels .*got str"), (["0.5"], "number; got str"),
                         ([True], "number; got bool")):
        with pytest.raises(TypeError, match=kind):  # a string was split into digits, a bool read as 1.0
            score_error(_MIX, _MIX, torch.zeros(4, 2), sigmas)
    with pytest.raises(TypeError, match="x0: must be a torch tensor"):
        score_mismatch(_MIX, _MIX, np.zeros((4, 2)), [0.5])
    x = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    assert np.isnan(wasserstein2(x * float("nan"), x))  # the solver alone returns 0.0: a perfect score
    assert score_mismatch(_MIX, _MIX, x, (s for s in [0.5, 1.0])) == {"0.5": 0.0, "1.0": 0.0}  # a generator works


def test_comparison_and_threshold_sweep_on_synthetic_curves():
    steps = np.arange(0, 101, 10.)

    def conv(times):
        values = np.array([np.clip(2 - steps / (2 * t), 0.5, None) for t in times])
        from disback.stats import times_to_threshold
        upd, reached = times_to_threshold(steps, values, 1.0)
        cost = steps * 10
        return {"steps": steps, "values": values, "nfe": cost, "cost": cost, "updates": upd, "reached": reached,
                "evaluations": upd * 10, "compute": upd * 10}

    base, fast = conv([40., 42, 38, 41, 39]), conv([20., 21, 19, 22, 18])
    c = compare(base, fast)
    assert c["speedup_updates"]["ratio"] == pytest.approx(2, rel=0.05) and c["speedup_updates"]["ci_low"] > 1
    assert c["area_ratio"]["ratio"] > 1 and c["to_baseline_final"]["speedup"]["ratio"] > 1
    sweep = threshold_sweep(base, fast, 1.0, [1.0, 1.5])
    assert [s["factor"] for s in sweep] == [1.0, 1.5] and all(s["ratio"] > 1 for s in sweep)


def test_direction_agreement_is_one_when_the_update_points_at_the_data():
    data, gen = GaussianMixture(torch.tensor([[0.0, 0.0]]), torch.ones(1), 0.5), \
        GaussianMixture(torch.tensor([[1.0, 1.0]]), torch.ones(1), 0.5)
    x0 = gen.sample(200, torch.Generator().manual_seed(0))
    same = direction_agreement(gen, data, gen, data, x0, [0.5, 1.0])
    opposite = direction_agreement(data, gen, gen, data, x0, [0.5, 1.0])
    assert all(v == pytest.approx(1.0) for v in same.values()) and all(v == pytest.approx(-1.0) for v in opposite.values())
    assert list(same) == ["0.5", "1.0"] and json.loads(json.dumps(same)) == same


def test_progress_goes_to_the_log_and_bars_stay_silent(tmp_path, monkeypatch, capsys):
    from disback import progress

    monkeypatch.setenv("DISBACK_PROGRESS_LOG", str(tmp_path / "p.log"))
    monkeypatch.setenv("DISBACK_PROGRESS_LABEL", "03_x__ring2d")
    assert list(progress.bar(range(3), desc="x")) == [0, 1, 2]
    counter = progress.RunCounter(2, "runs")
    counter.step("seed 0")
    text = (tmp_path / "p.log").read_text()
    assert "03_x__ring2d runs: run 1/2 (seed 0) done" in text and "left" in text
    assert capsys.readouterr().err == ""


def test_clean_notebook_scrubs_machine_paths(tmp_path):
    import sys

    from disback.clean_notebook import REPO, main

    nb = {"cells": [{"cell_type": "code", "source": "", "metadata": {}, "outputs": [
        {"output_type": "stream", "name": "stderr", "text": f"warning in {sys.prefix}/lib/x.py and {REPO}/disback"},
        {"output_type": "stream", "name": "stdout", "text": "  \n"}]}],
        "metadata": {"papermill": {"input_path": f"{REPO}/notebooks/a.ipynb"}}, "nbformat": 4, "nbformat_minor": 5}
    f = tmp_path / "a.ipynb"
    f.write_text(json.dumps(nb))
    main([str(f)])
    out = f.read_text()
    assert str(REPO) not in out and sys.prefix not in out and "<venv>/lib/x.py" in out and "<repo>/disback" in out
    assert len(json.loads(out)["cells"][0]["outputs"]) == 1  # the empty stream output is dropped
