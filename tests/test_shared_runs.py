"""Runs shared between notebooks: identical requests reuse one finished run, anything different trains anew."""
import dataclasses

import pytest
import torch

import disback
from disback.config import DegradeConfig, DistillConfig, TeacherConfig
from disback.experiments import Paths, shared_path, shared_runs
from disback.settings import load_setting
from disback.teachers import save_teacher, train_teacher

CFG = DistillConfig(iters=6, iters_per_node=2, batch=32, eval_every=3)
DEGRADE = DegradeConfig(iters=8, num_nodes=3, batch=32)


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A tiny teacher, notebook 02's path (in the place notebooks put it) and a counting 2-D setting."""
    root = tmp_path_factory.mktemp("shared")
    paths = Paths.make(root / "runs", root / "results", "t", "ring2d")
    data = load_setting("ring2d", num_train=512, num_reference=200)
    teacher = train_teacher(data.train, None, TeacherConfig(width=16, depth=1, iters=30, batch=64), progress=False)
    save_teacher(teacher, paths.teacher)
    path = disback.record_degradation(teacher, DEGRADE, paths.degradation, progress=False)
    return paths, teacher, path, data


def _counting(data, counter):
    """The same setting, counting metric evaluations (a reused run evaluates nothing)."""
    fn = data.metric_fn

    def counted(x, labels):
        counter.append(1)
        return fn(x, labels)

    return dataclasses.replace(data, metric_fn=counted)


def test_identical_request_reuses_the_finished_run_bitwise(stage, one_thread):
    """A second notebook asking for the same runs gets the first one's weights and log without training."""
    paths, teacher, path, data = stage
    calls = []
    first = shared_runs(paths, teacher, _counting(data, calls), CFG.replace(backtrack=True), [0, 1], 50, path,
                        progress=False)
    trained = len(calls)
    assert trained == 2 * 3  # evaluations at steps 0, 3, 6 for each seed
    again = shared_runs(paths, teacher, _counting(data, calls), CFG.replace(backtrack=True), [1], 50, path,
                        progress=False)
    assert len(calls) == trained, "a finished shared run was trained or evaluated again"
    assert again[0].log == first[1].log
    g1, g2 = first[1].generator.state_dict(), again[0].generator.state_dict()
    assert all(torch.equal(g1[k], g2[k]) for k in g1)
    assert first[0].run_dir.parent == again[0].run_dir.parent


def test_baselines_differing_only_in_unused_iters_per_node_share_a_run(stage):
    paths, teacher, _, data = stage
    a = shared_runs(paths, teacher, data, CFG.replace(iters=2), [0], 50, progress=False)
    b = shared_runs(paths, teacher, data, CFG.replace(iters=2, iters_per_node=7), [0], 50, progress=False)
    assert a[0].run_dir == b[0].run_dir


@pytest.mark.parametrize("change", ["config", "num_eval", "path", "data", "teacher"])
def test_anything_the_run_depends_on_gives_another_folder(stage, change):
    paths, teacher, path, data = stage
    base = dict(config=CFG.replace(iters=3, iters_per_node=1, backtrack=True), num_eval=50, path=path, data=data, teacher=teacher)
    other = dict(base)
    if change == "config":
        other["config"] = base["config"].replace(lr_gen=3e-4)
    elif change == "num_eval":
        other["num_eval"] = 60
    elif change == "path":
        other["path"] = disback.record_degradation(teacher, DEGRADE.replace(iters=6), paths.runs / "p2", progress=False)
    elif change == "data":
        other["data"] = load_setting("ring2d", num_train=512, num_reference=201)
    else:
        t2 = train_teacher(data.train, None, TeacherConfig(width=16, depth=1, iters=31, batch=64), progress=False)
        other["teacher"], other["path"] = t2, disback.record_degradation(t2, DEGRADE, paths.runs / "p3", progress=False)

    def folder(k):
        return shared_runs(paths, k["teacher"], k["data"], k["config"], [0], k["num_eval"], k["path"],
                           progress=False)[0].run_dir.parent

    assert folder(base) != folder(other)


def test_a_probed_run_is_retrained_so_the_probe_sees_every_step(stage):
    paths, teacher, _, data = stage
    cfg = CFG.replace(iters=3, eval_every=1)
    shared_runs(paths, teacher, data, cfg, [0], 50, progress=False)
    steps = []
    runs = shared_runs(paths, teacher, data, cfg, [0], 50, progress=False,
                       probe_fn=lambda step, **_: steps.append(step) or {})
    assert steps == [0, 1, 2, 3]
    assert [r["step"] for r in runs[0].log if "probe" in r] == [0, 1, 2, 3]


def test_shared_path_is_notebook_02s_when_the_config_matches(stage):
    paths, teacher, path, _ = stage
    assert shared_path(paths, teacher, DEGRADE, progress=False).root == path.root
    other = shared_path(paths, teacher, DEGRADE.replace(num_nodes=2), progress=False)
    assert other.root != path.root and other.num_nodes == 2
    assert other.root.is_relative_to(paths.runs / "paths")
    again = shared_path(paths, teacher, DEGRADE.replace(num_nodes=2), progress=False)
    assert again.nodes == other.nodes  # a finished recording is loaded, not recorded again


def test_the_code_key_follows_the_computation_not_the_plots(tmp_path):
    """Editing a training module gives new run folders; restyling figures or the report does not."""
    import shutil
    from pathlib import Path

    from disback.experiments import PRESENTATION_MODULES, code_fingerprint, sources_digest

    package = tmp_path / "disback"
    shutil.copytree(Path(disback.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    before = sources_digest(package)
    assert before == code_fingerprint()
    restyled = [f for f in package.rglob("*.py") if f.name in PRESENTATION_MODULES]
    assert {f.name for f in restyled} == set(PRESENTATION_MODULES)
    for f in restyled:
        f.write_text(f.read_text() + "\n# restyled\n")
    assert sources_digest(package) == before
    (package / "losses.py").write_text((package / "losses.py").read_text() + "\n# changed\n")
    assert sources_digest(package) != before


def test_an_unnamed_probe_run_waits_for_the_lock_before_it_empties_the_folder(stage, one_thread):
    """A run retrained for an unnamed probe empties its seed folder only while holding that folder's lock: a
    notebook still training it in another process is never pulled out from under (here: the wait times out)."""
    import subprocess
    import sys
    import time

    from disback import experiments
    from disback.runlock import PID_FILE, RunFolderInUse

    paths, teacher, path, data = stage
    cfg = CFG.replace(iters=3, eval_every=0, seed=0)
    folder = shared_runs(paths, teacher, data, cfg, [0], num_eval=50, progress=False)[0].run_dir
    marker = folder / "log.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from disback.runlock import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    time.sleep(60)", str(folder)])
    old_wait, experiments.SHARED_RUN_WAIT = experiments.SHARED_RUN_WAIT, 0.5
    try:
        deadline = time.time() + 30
        while not (folder / PID_FILE).is_file() and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(RunFolderInUse):
            shared_runs(paths, teacher, data, cfg, [0], num_eval=50, progress=False, probe_fn=lambda **_: {})
        assert marker.is_file()
    finally:
        experiments.SHARED_RUN_WAIT = old_wait
        holder.kill()
        holder.wait()


def test_side_by_side_helpers_train_the_same_runs_bitwise_under_a_base_profile(stage, tmp_path, one_thread):
    """A profile built on another (``base_profile``) loads its stage and records and shares its runs; a
    ``side_by_side`` helper process trains them (here the block itself trains nothing, so the helper does it all)
    and they are bitwise the runs one process trains; the record keeps what it was built on."""
    import json
    import os
    import time

    from disback import notebook

    paths, teacher, path, data = stage
    root = paths.runs.parent.parent  # <tmp>/runs; results beside it
    (paths.results / "metrics").mkdir(parents=True, exist_ok=True)
    paths.metrics("01_teacher_setup").write_text(json.dumps({"summary": {"teacher": {"w2": 0.25}}}))
    ctx = notebook.setup("t_extra", "ring2d", root.parent / "results", root, 200, 50, {}, base_profile="t",
                         num_train=512)
    assert ctx.paths.runs == paths.runs and ctx.paths.results == root.parent / "results" / "t_extra"
    assert ctx.threshold(2.0) == 0.5  # the base profile's notebook-01 record
    configs = [CFG.replace(method="sid"), CFG.replace(method="dmd", backtrack=True)]
    with ctx.side_by_side(teacher, [configs[0], (configs[1], path)], [0, 1], jobs=2):  # a config, a (config, path)
        pass  # the block returns once the helper has finished
    done = time.time()
    here = [ctx.runs(teacher, c, [0, 1], path, progress=False) for c in configs]
    alone = Paths.make(tmp_path / "runs", tmp_path / "results", "t", "ring2d")
    for c, runs in zip(configs, here):
        for res, ref in zip(runs, shared_runs(alone, teacher, data, c, [0, 1], 50, path, progress=False)):
            assert os.path.getmtime(res.run_dir / "state.json") < done  # trained by the helper, only loaded here
            assert res.log == ref.log
            a, b = res.generator.state_dict(), ref.generator.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a)
    out = json.loads(ctx.save_record("04_baselines", {"x": 1}).read_text())["summary"]
    assert out["base_profile"] == "t" and list(out["base_records"]) == ["01_teacher_setup"]
    with pytest.raises(ValueError, match="jobs=0: must be >= 1"):
        with ctx.side_by_side(teacher, configs, [0], path, jobs=0):
            pass
    with pytest.raises(ValueError, match="cannot build on itself"):
        notebook.setup("t", "ring2d", root.parent / "results", root, 200, 50, {}, base_profile="t")
    with pytest.raises(FileNotFoundError, match="make reproduce PROFILE=nothing"):
        notebook.setup("t_extra", "ring2d", root.parent / "results", root, 200, 50, {}, base_profile="nothing")


def test_side_by_side_stops_its_helpers_when_the_notebook_stops(stage, one_thread):
    """An error inside the block (a failing cell, an interrupt) terminates the helpers instead of waiting for them."""
    import time

    from disback import notebook

    paths, teacher, path, _ = stage
    root = paths.runs.parent.parent
    ctx = notebook.setup("t_stop", "ring2d", root.parent / "results", root, 200, 50, {}, base_profile="t",
                         num_train=512)
    start = time.time()
    with pytest.raises(KeyboardInterrupt):
        with ctx.side_by_side(teacher, [CFG.replace(iters=3000, eval_every=0)], [7], path, jobs=2):
            raise KeyboardInterrupt
    assert time.time() - start < 30  # 3000 updates would take minutes
