"""Reliability: killed runs resume bitwise, artifacts load strictly, NaNs stop runs, bad inputs fail clearly.

Everything is tiny (16-unit MLPs on the 2-D ring mixture) so the file runs in about a minute on 2 CPU cores.
"""
import copy
import hashlib
import importlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import disback
from disback.checkpoint import ArtifactError, RunLog, fingerprint, read_jsonl, sha256_file, tensor_digest
from disback.config import DegradeConfig, DistillConfig, TeacherConfig
from disback.data import ring_mixture
from disback.generator import generate, make_generator
from disback.path import DegradationPath
from disback.settings import load_setting
from disback.teachers import _data_hash, build_denoiser, load_teacher, save_teacher, train_teacher

HERE = Path(__file__).resolve().parent
STEPS_MODULE = importlib.import_module("disback.steps")  # the per-step functions both stages share
TEACHER = TeacherConfig(width=16, depth=1, iters=150, batch=64, ckpt_every=1)
DEGRADE = DegradeConfig(iters=60, num_nodes=3, batch=64, ckpt_every=1)
DISTILL = DistillConfig(iters=60, iters_per_node=10, batch=64, eval_every=0, ckpt_every=1)
STAGES = (("teacher", TEACHER.iters), ("degrade", DEGRADE.iters), ("distill", DISTILL.iters))


def ring_data(n: int = 512) -> torch.Tensor:
    return ring_mixture().sample(n, torch.Generator().manual_seed(0))


def run_pipeline(root: Path):
    """Teacher -> degradation path -> DisBack, each stage checkpointing every step into ``root/<stage>``."""
    teacher = train_teacher(ring_data(), None, TEACHER, progress=False, run_dir=root / "teacher")
    path = disback.record_degradation(teacher, DEGRADE, root / "degrade", progress=False)
    disback.backtrack(teacher, path, DISTILL, root / "distill", progress=False)


@pytest.fixture(scope="module")
def teacher():
    return train_teacher(ring_data(), None, TeacherConfig(width=16, depth=1, iters=60, batch=64), progress=False)


@pytest.fixture(scope="module")
def path(teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("degrade")
    return disback.record_degradation(teacher, DegradeConfig(iters=20, num_nodes=4, batch=32), run, progress=False)


def assert_same_tensors(file_a, file_b):
    a, b = load_file(str(file_a)), load_file(str(file_b))
    assert sorted(a) == sorted(b), (file_a, file_b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), f"{file_a.name}: tensor {k} differs"


def state_file(run: Path) -> Path:
    """The tensors file of the training state that ``run/state.json`` commits to."""
    return run / json.loads((run / "state.json").read_text())["file"]


def assert_same_run(a: Path, b: Path):
    """Final training state (weights, optimiser moments, RNG), path nodes and logs of two run folders are equal."""
    assert_same_tensors(state_file(a), state_file(b))
    assert json.loads((a / "state.json").read_text()) == json.loads((b / "state.json").read_text())
    assert sorted(p.name for p in a.glob("state*")) == ["state.json", state_file(a).name]  # no stale states
    for f in ("log.jsonl", "path/path.json"):
        if (b / f).exists():
            assert (a / f).read_bytes() == (b / f).read_bytes(), f"{a / f} differs"
    for node in sorted((b / "path").glob("node_*.safetensors")):
        assert_same_tensors(a / "path" / node.name, node)


# ---------------------------------------------------------------------------------------------------------------------
# SIGKILL at random points, resume, compare bitwise with an uninterrupted run.

CHILD = ("import sys, torch; torch.set_num_threads(1); from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
         "import test_reliability as t; t.run_pipeline(Path(sys.argv[2]))")


def _progress(root: Path) -> tuple:
    """(stage index, last checkpointed step) of a pipeline run; (-1, -1) before the first checkpoint."""
    for i in reversed(range(len(STAGES))):
        try:
            return i, json.loads((root / STAGES[i][0] / "state.json").read_text())["step"]
        except (FileNotFoundError, ValueError):
            continue
    return -1, -1


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(tmp_path, one_thread):
    """SIGKILL all three loops at random steps, rerun: every tensor, node and log equals an uninterrupted run."""
    rnd = random.Random(int(os.environ.get("DISBACK_KILL_SEED", "0")))
    plan = [(i, k) for i, (_, iters) in enumerate(STAGES) for k in sorted(rnd.sample(range(int(0.7 * iters)), 2))]
    killed, env = tmp_path / "killed", {**os.environ, "OMP_NUM_THREADS": "1"}
    landed = []
    for stage, k in plan:
        at_spawn = _progress(killed)
        target = max((stage, k), (at_spawn[0], at_spawn[1] + 1))  # at least one new checkpoint in this process
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(HERE), str(killed)], env=env)
        deadline = time.time() + 120
        try:
            while _progress(killed) < target:
                assert proc.poll() is None, f"child exited with {proc.returncode} before reaching {target}"
                assert time.time() < deadline, f"child made no progress to {target} in 120 s"
                time.sleep(0.002)
            time.sleep(rnd.uniform(0, 0.005))  # land anywhere inside the next step: compute, log, node or state write
        finally:
            proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        landed.append((STAGES[stage][0], k, _progress(killed)))
    assert subprocess.run([sys.executable, "-c", CHILD, str(HERE), str(killed)], env=env).returncode == 0
    print("kills (stage, target step, (stage index, checkpointed step) at kill):", landed)
    for name, iters in STAGES:  # every loop was really interrupted mid-run at least once
        assert any(s == name and p[0] == STAGES.index((name, iters)) and p[1] < iters for s, _, p in landed), landed

    reference = tmp_path / "reference"
    run_pipeline(reference)
    for name, _ in STAGES:
        assert_same_run(killed / name, reference / name)


def test_rerun_of_finished_runs_is_a_no_op(tmp_path, one_thread, teacher):
    """Rerunning a finished teacher, degradation or distillation run returns the saved result without training."""
    t1 = train_teacher(ring_data(), None, TEACHER.replace(iters=5), progress=False, run_dir=tmp_path / "t")
    t2 = train_teacher(ring_data(), None, TEACHER.replace(iters=5), progress=False, run_dir=tmp_path / "t")
    assert all(torch.equal(a, b) for a, b in zip(t1.state_dict().values(), t2.state_dict().values()))
    cfg = DEGRADE.replace(iters=6)
    p1 = disback.record_degradation(teacher, cfg, tmp_path / "d", progress=False)
    p2 = disback.record_degradation(teacher, cfg, tmp_path / "d", progress=False)
    assert p1.nodes == p2.nodes and len(read_jsonl(tmp_path / "d" / "log.jsonl")) == 6
    cfg = DISTILL.replace(iters=4, iters_per_node=1)
    r1 = disback.backtrack(teacher, p1, cfg, tmp_path / "s", progress=False)
    r2 = disback.backtrack(teacher, p1, cfg, tmp_path / "s", progress=False)
    assert r1.log == r2.log and len(r2.log) == 5
    g1, g2 = r1.generator.state_dict(), r2.generator.state_dict()
    assert all(torch.equal(g1[k], g2[k]) for k in g1)


def test_torn_log_line_is_dropped_on_resume(tmp_path):
    """A half-written last log line (a kill mid-write) is dropped on resume; a torn line elsewhere is still an error."""
    f = tmp_path / "log.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "loss_g')
    assert [r["step"] for r in RunLog(f, resume_step=2).records] == [1, 2]
    assert f.read_text() == '{"step": 1}\n{"step": 2}\n'
    f.write_text('{"step": 1, "lo\n{"step": 2}\n')
    with pytest.raises(ValueError):
        RunLog(f, resume_step=2)


# ---------------------------------------------------------------------------------------------------------------------
# Altered, truncated or mismatched artifacts are refused by name.

def _truncate(f: Path):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_last_byte(f: Path):
    b = bytearray(f.read_bytes())
    b[-1] ^= 0xFF
    f.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", [_truncate, _flip_last_byte])
def test_damaged_checkpoint_is_refused_by_name(tmp_path, damage):
    """A truncated or altered state tensors file or state.json stops the resume with an ArtifactError naming it."""
    cfg = TEACHER.replace(iters=2)
    train_teacher(ring_data(), None, cfg, progress=False, run_dir=tmp_path)
    damage(state_file(tmp_path))
    with pytest.raises(ArtifactError, match=r"state_00000002\.safetensors: sha256 does not match"):
        train_teacher(ring_data(), None, cfg, progress=False, run_dir=tmp_path)
    damage(tmp_path / "state.json")
    with pytest.raises(ArtifactError, match=r"state\.json: not valid JSON"):
        train_teacher(ring_data(), None, cfg, progress=False, run_dir=tmp_path)


def test_damaged_path_node_is_refused_by_name(path, tmp_path):
    """A truncated node file, or an unlisted one, makes DegradationPath.load fail naming that file."""
    root = tmp_path / "p"
    shutil.copytree(path.root, root)
    _truncate(root / "node_003.safetensors")
    with pytest.raises(ArtifactError, match=r"node_003\.safetensors: sha256 does not match"):
        DegradationPath.load(root)


@pytest.mark.parametrize("damage", ["truncated", "a list", "no nodes", "sha256 null", "step a string"])
def test_damaged_path_manifest_is_refused_by_name(path, tmp_path, damage):
    """A truncated or altered path.json is one ArtifactError naming it, never a raw JSON / key error, and a node whose
    sha256 is missing is refused (it would skip the hash check); a run folder given for its path/ is pointed there."""
    root = tmp_path / "p"
    shutil.copytree(path.root, root)
    m = json.loads((root / "path.json").read_text())
    text = {"truncated": lambda: json.dumps(m)[:40], "a list": lambda: "[]",
            "no nodes": lambda: json.dumps({k: v for k, v in m.items() if k != "nodes"}),
            "sha256 null": lambda: json.dumps({**m, "nodes": [{**m["nodes"][0], "sha256": None}, *m["nodes"][1:]]}),
            "step a string": lambda: json.dumps({**m, "nodes": [m["nodes"][0], {**m["nodes"][1], "step": "5"},
                                                                *m["nodes"][2:]]})}[damage]()
    (root / "path.json").write_text(text)
    with pytest.raises(ArtifactError, match=re.escape(str(root / "path.json"))):
        DegradationPath.load(root)
    with pytest.raises(ArtifactError, match=r"path\.json is missing \(record_degradation writes it to .*path\)"):
        DegradationPath.load(path.root.parent)


def test_damaged_teacher_files_are_refused_by_name(teacher, tmp_path):
    """Altered teacher.safetensors, truncated teacher.json, or a teacher.json describing another net: each named."""
    save_teacher(teacher, tmp_path)
    assert torch.equal(load_teacher(tmp_path).backbone.inp.weight, teacher.backbone.inp.weight)
    meta = json.loads((tmp_path / "teacher.json").read_text())
    (tmp_path / "teacher.json").write_text(json.dumps({**meta, "config": {**meta["config"], "width": 8}}))
    with pytest.raises(ArtifactError, match=r"teacher\.safetensors: weights do not fit.*teacher\.json describes"):
        load_teacher(tmp_path)
    _truncate(tmp_path / "teacher.json")
    with pytest.raises(ArtifactError, match=r"teacher\.json: not valid JSON"):
        load_teacher(tmp_path)
    save_teacher(teacher, tmp_path)
    _flip_last_byte(tmp_path / "teacher.safetensors")
    with pytest.raises(ArtifactError, match=r"teacher\.safetensors: sha256 does not match"):
        load_teacher(tmp_path)


def test_path_from_another_teacher_is_refused(path, tmp_path):
    """Distilling along a path recorded from a different teacher is refused before any update."""
    other = train_teacher(ring_data(), None, TeacherConfig(width=16, depth=1, iters=3, batch=16, seed=5),
                          progress=False)
    with pytest.raises(ArtifactError, match="recorded from teacher"):
        disback.backtrack(other, path, DistillConfig(iters=10, iters_per_node=2, batch=16), tmp_path, progress=False)
    assert not (tmp_path / "log.jsonl").exists()


def test_resume_with_another_config_teacher_or_data_is_refused(teacher, path, tmp_path, one_thread):
    """Resuming a run folder with a different config (any loop), teacher (degradation) or data (teacher) is refused."""
    data = ring_data()
    cfg = TEACHER.replace(iters=2)
    train_teacher(data, None, cfg, progress=False, run_dir=tmp_path / "t")
    with pytest.raises(ArtifactError, match="config hash"):
        train_teacher(data, None, cfg.replace(lr=1e-3), progress=False, run_dir=tmp_path / "t")
    with pytest.raises(ArtifactError, match="config hash"):
        train_teacher(data + 1, None, cfg, progress=False, run_dir=tmp_path / "t")
    dcfg = DEGRADE.replace(iters=4, num_nodes=2, batch=16)
    disback.record_degradation(teacher, dcfg, tmp_path / "d", progress=False)
    with pytest.raises(ArtifactError, match="config hash"):
        disback.record_degradation(teacher, dcfg.replace(lr=5e-4), tmp_path / "d", progress=False)
    other = train_teacher(data, None, cfg.replace(seed=3, ckpt_every=0), progress=False)
    with pytest.raises(ArtifactError, match="config hash"):
        disback.record_degradation(other, dcfg, tmp_path / "d", progress=False)
    scfg = DISTILL.replace(iters=4, iters_per_node=1, batch=16)
    disback.backtrack(teacher, path, scfg, tmp_path / "s", progress=False)
    with pytest.raises(ArtifactError, match="config hash"):
        disback.backtrack(teacher, path, scfg.replace(lr_gen=3e-4), tmp_path / "s", progress=False)


class Crash(Exception):
    """Stands for a process dying at a chosen line."""


def test_degradation_dying_before_node_0_resumes(teacher, tmp_path, monkeypatch, one_thread):
    """A recording that dies after its step-0 checkpoint but before node 0 is written resumes on rerun."""
    cfg = DEGRADE.replace(iters=6, num_nodes=2, batch=16)

    def crash(*args, **kwargs):
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(importlib.import_module("disback.path").PathWriter, "add", crash)
        with pytest.raises(Crash):
            disback.record_degradation(teacher, cfg, tmp_path / "run", progress=False)
    disback.record_degradation(teacher, cfg, tmp_path / "run", progress=False)
    disback.record_degradation(teacher, cfg, tmp_path / "ref", progress=False)
    assert_same_run(tmp_path / "run", tmp_path / "ref")


def test_dying_between_state_tensors_and_state_json_resumes(tmp_path, monkeypatch, one_thread):
    """Dying after a state's tensors are written but before state.json commits resumes from the previous state."""
    checkpoint, cfg, data = importlib.import_module("disback.checkpoint"), TEACHER.replace(iters=6), ring_data()
    real, calls = checkpoint.write_json, []

    def dying_write_json(path, obj):
        calls.append(Path(path).name)
        if calls.count("state.json") == 4:
            raise Crash
        real(path, obj)

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "write_json", dying_write_json)
        with pytest.raises(Crash):
            train_teacher(data, None, cfg, progress=False, run_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "state.json").read_text())["step"] == 3
    train_teacher(data, None, cfg, progress=False, run_dir=tmp_path / "run")
    train_teacher(data, None, cfg, progress=False, run_dir=tmp_path / "ref")
    assert_same_run(tmp_path / "run", tmp_path / "ref")


def test_degradation_refuses_a_foreign_path_folder(teacher, tmp_path):
    """A run folder that holds a path but no training state is never adopted by a resumable recording."""
    cfg = DEGRADE.replace(iters=4, num_nodes=2, batch=16)
    disback.record_degradation(teacher, cfg.replace(ckpt_every=0), tmp_path, progress=False)
    with pytest.raises(ArtifactError, match="already holds a path"):
        disback.record_degradation(teacher, cfg, tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# A NaN stops the run, naming the step and the last good checkpoint, which stays intact.

def _poison(monkeypatch, module, name, at_call):
    """Make ``module.name`` return NaN on its ``at_call``-th call."""
    real, calls = getattr(module, name), []

    def poisoned(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return out * float("nan") if len(calls) == at_call else out

    monkeypatch.setattr(module, name, poisoned)


def _assert_checkpoint_intact(run: Path, step: int):
    meta = json.loads((run / "state.json").read_text())
    assert meta["step"] == step and sha256_file(state_file(run)) == meta["sha256"]
    assert all(torch.isfinite(t).all() for t in load_file(str(state_file(run))).values())


def test_nan_in_teacher_loss_stops_with_step_and_checkpoint(tmp_path, monkeypatch, one_thread):
    """A NaN teacher loss at step 7 names step 7 and checkpoint 6; resuming ends bitwise equal to a clean run."""
    cfg, data = TEACHER.replace(iters=10, ckpt_every=2), ring_data()
    with monkeypatch.context() as m:
        _poison(m, disback.teachers, "denoising_loss", 7)
        with pytest.raises(FloatingPointError, match=r"non-finite teacher loss at step 7; last good checkpoint: "
                                                     r"step 6 in " + re.escape(str(tmp_path / "run"))):
            train_teacher(data, None, cfg, progress=False, run_dir=tmp_path / "run")
    _assert_checkpoint_intact(tmp_path / "run", 6)
    train_teacher(data, None, cfg, progress=False, run_dir=tmp_path / "run")
    train_teacher(data, None, cfg, progress=False, run_dir=tmp_path / "ref")
    assert_same_run(tmp_path / "run", tmp_path / "ref")


def test_nan_in_fake_score_loss_stops_degradation(teacher, tmp_path, monkeypatch, one_thread):
    """A NaN fake-score loss at stage-1 step 5 names step 5 and checkpoint 4; the resumed path equals a clean one."""
    cfg = DEGRADE.replace(iters=8, num_nodes=4, batch=16, ckpt_every=1)
    with monkeypatch.context() as m:
        _poison(m, disback.steps, "fake_score_loss", 5)
        with pytest.raises(FloatingPointError,
                           match=r"non-finite fake-score loss at step 5; last good checkpoint: step 4"):
            disback.record_degradation(teacher, cfg, tmp_path / "run", progress=False)
    _assert_checkpoint_intact(tmp_path / "run", 4)
    disback.record_degradation(teacher, cfg, tmp_path / "run", progress=False)
    disback.record_degradation(teacher, cfg, tmp_path / "ref", progress=False)
    assert_same_run(tmp_path / "run", tmp_path / "ref")


def test_nan_in_generator_loss_stops_distillation(teacher, path, tmp_path, monkeypatch, one_thread):
    """A NaN generator loss at update 6 names update 6 and checkpoint 3; the resumed run equals a clean one."""
    cfg = DISTILL.replace(iters=9, iters_per_node=2, batch=16, ckpt_every=3)
    with monkeypatch.context() as m:
        _poison(m, STEPS_MODULE, "generator_loss", 6)
        with pytest.raises(FloatingPointError,
                           match=r"non-finite generator loss at step 6; last good checkpoint: step 3"):
            disback.backtrack(teacher, path, cfg, tmp_path / "run", progress=False)
    _assert_checkpoint_intact(tmp_path / "run", 3)
    disback.backtrack(teacher, path, cfg, tmp_path / "run", progress=False)
    disback.backtrack(teacher, path, cfg, tmp_path / "ref", progress=False)
    assert_same_run(tmp_path / "run", tmp_path / "ref")


def test_poisoned_teacher_weight_stops_at_first_step(teacher, tmp_path):
    """A NaN inside the teacher's weights stops distillation at step 1, saying no checkpoint was saved."""
    bad = copy.deepcopy(teacher)
    with torch.no_grad():
        bad.backbone.out[1].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"at step 1; no checkpoint was saved"):
        disback.distill(bad, DistillConfig(iters=3, batch=16, ckpt_every=1), tmp_path, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs: one clear message naming the parameter, the value and what is allowed.

def _missing_dir(tmp):
    return tmp / "nowhere"


BAD_INPUTS = {
    "unknown TeacherConfig key": (lambda t, p, tmp: TeacherConfig.from_dict({"widht": 16}),
                                  ["TeacherConfig", "'widht'", "allowed keys are", "'width'"]),
    "unknown DegradeConfig key": (lambda t, p, tmp: DegradeConfig.from_dict({"nodes": 4}),
                                  ["DegradeConfig", "'nodes'", "'num_nodes'"]),
    "str for int": (lambda t, p, tmp: TeacherConfig(width="16"), ["TeacherConfig.width='16'", "of type int"]),
    "float for int": (lambda t, p, tmp: TeacherConfig(iters=10.5), ["TeacherConfig.iters=10.5", "of type int"]),
    "bool for int": (lambda t, p, tmp: DistillConfig(batch=True), ["DistillConfig.batch=True", "of type int"]),
    "str for float": (lambda t, p, tmp: DistillConfig(lr_gen="1e-4"), ["DistillConfig.lr_gen='1e-4'", "of type float"]),
    "zero width": (lambda t, p, tmp: TeacherConfig(width=0), ["TeacherConfig.width=0", "> 0"]),
    "zero batch": (lambda t, p, tmp: DegradeConfig(batch=0), ["DegradeConfig.batch=0", "> 0"]),
    "ema of 1": (lambda t, p, tmp: TeacherConfig(ema=1.0), ["TeacherConfig.ema=1.0", "in [0, 1)"]),
    "negative teacher ckpt_every": (lambda t, p, tmp: TeacherConfig(ckpt_every=-1),
                                    ["TeacherConfig.ckpt_every=-1", ">= 0"]),
    "bad arch": (lambda t, p, tmp: TeacherConfig(arch="transformer"),
                 ["TeacherConfig.arch='transformer'", "one of ('mlp', 'unet')"]),
    "num_nodes > iters": (lambda t, p, tmp: DegradeConfig(iters=10, num_nodes=50),
                          ["DegradeConfig.num_nodes=50", "<= iters (10)"]),
    "negative sigma_init": (lambda t, p, tmp: DegradeConfig(sigma_init=-1.0), ["DegradeConfig.sigma_init=-1.0", "> 0"]),
    "infinite learning rate": (lambda t, p, tmp: DistillConfig(lr_gen=float("inf")),
                               ["DistillConfig.lr_gen=inf", "a finite number"]),
    "nan sigma_init": (lambda t, p, tmp: DegradeConfig(sigma_init=float("nan")),
                       ["DegradeConfig.sigma_init=nan", "a finite number"]),
    "negative p_std": (lambda t, p, tmp: DistillConfig(p_std=-0.5), ["DistillConfig.p_std=-0.5", "> 0"]),
    "bad spacing": (lambda t, p, tmp: DegradeConfig(spacing="log"),
                    ["DegradeConfig.spacing='log'", "one of ('uniform', 'early')"]),
    "bad method": (lambda t, p, tmp: DistillConfig(method="gan"),
                   ["DistillConfig.method='gan'", "one of ('diff_instruct', 'dmd', 'dmd2', 'sid')"]),
    "negative eval_every": (lambda t, p, tmp: DistillConfig(eval_every=-1), ["DistillConfig.eval_every=-1", ">= 0"]),
    "iters_per_node too large": (
        lambda t, p, tmp: disback.backtrack(t, p, DistillConfig(iters=30, iters_per_node=10, batch=16), tmp,
                                            progress=False),
        ["iters_per_node=10", "with 4 nodes the teacher becomes the target at update 30", "must be < 10"]),
    "a path for a baseline (silently unused before)": (
        lambda t, p, tmp: disback.distill(t, DistillConfig(iters=2), tmp, path=p, progress=False),
        ["path: given", "backtrack=True", "fake_from_path=True", "path=None"]),
    "backtrack without a path": (lambda t, p, tmp: disback.distill(t, DistillConfig(backtrack=True), tmp,
                                                                   progress=False),
                                 ["backtrack=True", "needs a DegradationPath"]),
    "sigma_init differs from the path's": (
        lambda t, p, tmp: disback.backtrack(t, p, DistillConfig(iters=50, iters_per_node=5, sigma_init=1.0), tmp,
                                            progress=False),
        ["sigma_init=1.0", "sigma_init=2.5", "must match"]),
    "missing teacher folder": (lambda t, p, tmp: load_teacher(_missing_dir(tmp)),
                               ["no teacher at", "nowhere", "teacher.json is missing"]),
    "missing path folder": (lambda t, p, tmp: DegradationPath.load(_missing_dir(tmp)),
                            ["no degradation path at", "nowhere", "path.json is missing"]),
    "unknown setting (dataset)": (lambda t, p, tmp: load_setting("cifar10"),
                                  ["setting='cifar10'", "must be one of (", "'digits'", "'imagenet64'", "'ring2d'"]),
    "unknown setting option": (lambda t, p, tmp: load_setting("ring2d", modes=4),
                               ["['modes']", "ring2d", "allowed: num_modes, radius, std"]),
    "data of the wrong rank": (lambda t, p, tmp: train_teacher(torch.zeros(10), None, TeacherConfig(iters=1), False),
                               ["data:", "[N, D] or [N, C, H, W]", "torch.Size([10])"]),
    "float labels": (lambda t, p, tmp: train_teacher(torch.randn(10, 2), torch.zeros(10), TeacherConfig(iters=1),
                                                     False),
                     ["labels:", "int64", "torch.float32"]),
    "data with zero spread": (lambda t, p, tmp: train_teacher(torch.full((10, 2), 3.0), None,
                                                              TeacherConfig(iters=1), False, run_dir=tmp),
                              ["data has zero spread", "every sample identical / std 0", "all 10 samples"]),
    "identical samples": (lambda t, p, tmp: train_teacher(torch.tensor([[0.0, 1.0]]).repeat(8, 1), None,
                                                          TeacherConfig(iters=1), False),
                          ["data has zero spread", "all 8 samples equal the first"]),
    "mlp on images": (lambda t, p, tmp: build_denoiser(TeacherConfig(arch="mlp"), (1, 8, 8), 1.0),
                      ["arch='mlp'", "vector data [N, D]", "(1, 8, 8)"]),
    "float64 data": (lambda t, p, tmp: train_teacher(torch.randn(10, 2, dtype=torch.float64), None,
                                                     TeacherConfig(iters=1), False),
                     ["data:", "must be float32", "torch.float64", "data.float()"]),
    "labels as a list": (lambda t, p, tmp: train_teacher(torch.randn(10, 2), [0] * 10, TeacherConfig(iters=1), False),
                         ["labels:", "int64 tensor of shape [10]", "got list"]),
    "unknown key to replace": (lambda t, p, tmp: DistillConfig().replace(lr=1e-3),
                               ["DistillConfig", "unknown key(s) ['lr']", "'lr_gen'"]),
    "seed beyond torch's range": (lambda t, p, tmp: DistillConfig(seed=2 ** 64),
                                  ["DistillConfig.seed=18446744073709551616", "in [0, 2**64)"]),
    "teacher seed beyond torch's range": (lambda t, p, tmp: TeacherConfig(seed=2 ** 70),
                                          ["TeacherConfig.seed=", "in [0, 2**64)"]),
    "run_dir is a file": (lambda t, p, tmp: (tmp.parent.mkdir(exist_ok=True), tmp.write_text(""),
                                             disback.distill(t, DistillConfig(iters=2), tmp, progress=False)),
                          ["run_dir=", "is a file, not a folder"]),
    "degradation run_dir is a file": (lambda t, p, tmp: (tmp.write_text(""), disback.record_degradation(
        t, DegradeConfig(iters=2, num_nodes=1), tmp, progress=False)), ["run_dir=", "is a file, not a folder"]),
    "schedule with no nodes": (lambda t, p, tmp: disback.TargetSchedule.backtracking(0, 10, 100),
                               ["num_nodes=0", "integer >= 1"]),
    "schedule with negative nodes": (lambda t, p, tmp: disback.TargetSchedule((1, -1, 0), (0, 5, 9)),
                                     ["TargetSchedule: nodes=(1, -1, 0)", "integers >= 0"]),
    "zero training samples": (lambda t, p, tmp: load_setting("ring2d", num_train=0),
                              ["num_train=0", "integer >= 1"]),
    "float reference size": (lambda t, p, tmp: load_setting("ring2d", num_reference=10.5),
                             ["num_reference=10.5", "integer >= 1"]),
    "nan mixture std": (lambda t, p, tmp: load_setting("ring2d", std=float("nan")),
                        ["std=nan", "finite number > 0"]),
    "nan mixture radius": (lambda t, p, tmp: ring_mixture(radius=float("nan")),
                           ["means and weights must be finite", "nan"]),
    "GAN real labels beyond the classes": (
        lambda t, p, tmp: disback.distill(_labelled_teacher(), DistillConfig(iters=2, gan_weight=1.0), tmp,
                                          real_data=(torch.randn(8, 2), torch.full((8,), 7)), progress=False),
        ["real_data: labels", "in [0, 3)", "[7, 7]"]),
    "GAN real data with nan": (
        lambda t, p, tmp: disback.distill(t, DistillConfig(iters=2, gan_weight=1.0), tmp,
                                          real_data=torch.full((8, 2), float("nan")), progress=False),
        ["real_data: x must be finite", "16 of its 16"]),
    "GAN real data as a 3-tuple": (
        lambda t, p, tmp: disback.distill(t, DistillConfig(iters=2, gan_weight=1.0), tmp,
                                          real_data=(torch.randn(8, 2), None, 1), progress=False),
        ["real_data: a tuple must be (images, labels)", "3 items"]),
    "generate: data_shape of another network": (
        lambda t, p, tmp: generate(make_generator(t, 2.5), range(4), (3,)),
        ["data_shape=(3,)", "takes samples of shape (2,)"]),
    "generate: more classes than the network": (
        lambda t, p, tmp: generate(make_generator(_labelled_teacher(), 2.5), range(4), (2,), 10),
        ["label_dim=10", "has label_dim=3"]),
    "generate: labels of the wrong length": (
        lambda t, p, tmp: generate(make_generator(_labelled_teacher(), 2.5), range(4), (2,), 3,
                                   labels=torch.zeros(2, dtype=torch.long)),
        ["labels:", "integer tensor [4]", "(2,)"]),
    "generate: labels out of the network's classes": (
        lambda t, p, tmp: generate(make_generator(_labelled_teacher(), 2.5), range(4), (2,), 3,
                                   labels=torch.tensor([0, 1, 2, 3])),
        ["labels:", "in [0, 3)", "the network's classes", "[0, 3]"]),
    "generate: no seeds": (lambda t, p, tmp: generate(make_generator(t, 2.5), [], (2,)),
                           ["seeds:", "non-empty sequence", "[]"]),
    "generate: batch 0": (lambda t, p, tmp: generate(make_generator(t, 2.5), range(4), (2,), batch=0),
                          ["batch=0", "integer >= 1"]),
}


def _labelled_teacher():
    """A 3-class 2-D teacher (untrained: only its shapes matter here)."""
    net = build_denoiser(TeacherConfig(width=16, depth=1), (2,), 1.0, label_dim=3)
    net.config = TeacherConfig(width=16, depth=1)
    return net.eval().requires_grad_(False)


WRONG_TYPES = {
    "config as a dict": (lambda t, p, tmp: disback.distill(t, {"iters": 2}, tmp, progress=False),
                         ["config: must be a DistillConfig", "got dict", "DistillConfig.from_dict"]),
    "config None to backtrack": (lambda t, p, tmp: disback.backtrack(t, p, None, tmp, progress=False),
                                 ["config: must be a DistillConfig", "got NoneType"]),
    "another stage's config": (lambda t, p, tmp: disback.record_degradation(t, DistillConfig(), tmp, progress=False),
                               ["config: must be a DegradeConfig", "got DistillConfig"]),
    "teacher config as a dict": (lambda t, p, tmp: train_teacher(torch.randn(10, 2), None, {"iters": 1}, False),
                                 ["config: must be a TeacherConfig", "got dict"]),
    "exact mixture as the teacher": (
        lambda t, p, tmp: disback.distill(ring_mixture(), DistillConfig(iters=2), tmp, progress=False),
        ["teacher: must be a denoiser network", "GaussianMixture"]),
    "path as a folder name": (lambda t, p, tmp: disback.backtrack(t, str(p.root), DistillConfig(iters=2), tmp,
                                                                  progress=False),
                              ["path: must be a DegradationPath", "DegradationPath.load", "got str"]),
    "run_dir None": (lambda t, p, tmp: disback.record_degradation(t, DegradeConfig(iters=2, num_nodes=1), None,
                                                                  progress=False),
                     ["run_dir: must be a folder path", "NoneType"]),
    "metric_fn not callable": (lambda t, p, tmp: disback.distill(t, DistillConfig(iters=2), tmp, metric_fn=5,
                                                                 progress=False),
                               ["metric_fn: must be a callable or None", "int"]),
    "from_dict of None": (lambda t, p, tmp: DistillConfig.from_dict(None),
                          ["DistillConfig.from_dict(d)", "must be a mapping", "NoneType"]),
}


@pytest.mark.parametrize("case", list(WRONG_TYPES))
def test_wrong_type_gives_one_clear_type_error(case, teacher, path, tmp_path):
    """An argument of the wrong kind is refused at the entry point, naming it, before anything is written."""
    call, expected = WRONG_TYPES[case]
    with pytest.raises(TypeError) as info:
        call(teacher, path, tmp_path / "run")
    msg = str(info.value)
    assert "\n" not in msg, msg
    for piece in expected:
        assert piece in msg, f"{case}: {piece!r} not in {msg!r}"
    assert not (tmp_path / "run" / "log.jsonl").exists()


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_message(case, teacher, path, tmp_path):
    """Each bad input raises one one-line error naming the parameter, its value and what is allowed."""
    call, expected = BAD_INPUTS[case]
    with pytest.raises(ValueError) as info:
        call(teacher, path, tmp_path / "run")
    msg, err = str(info.value), info.value
    assert "\n" not in msg and err.__cause__ is None and (err.__context__ is None or err.__suppress_context__), msg
    for piece in expected:
        assert piece in msg, f"{case}: {piece!r} not in {msg!r}"
    assert not (tmp_path / "run" / "log.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Determinism.

def test_same_seed_gives_identical_log_and_metrics(teacher, path, tmp_path, one_thread):
    """Two same-seed CPU runs of a tiny DisBack distillation write byte-identical log, metrics and state."""
    setting = load_setting("ring2d", num_train=10, num_reference=200)
    cfg = DistillConfig(iters=12, iters_per_node=3, batch=32, eval_every=4, ckpt_every=6, seed=1)
    for run in ("a", "b"):
        disback.backtrack(teacher, path, cfg, tmp_path / run, progress=False,
                          metric_fn=lambda g: setting.evaluate(g, 200))
    for f in ("log.jsonl", "config.json", "state.json", "state_00000012.safetensors"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    assert sum("metrics" in r for r in read_jsonl(tmp_path / "a" / "log.jsonl")) == 4  # steps 0, 4, 8, 12


# ---------------------------------------------------------------- artifact keys

def _old_digest(header: bytes, tensors, shapes: bool = True, names=None) -> str:
    """The hashing each call site did inline before ``tensor_digest``: keys of cached artifacts must not move."""
    h = hashlib.sha256(header)
    for i, t in enumerate(tensors):
        if names is not None:
            h.update(names[i].encode())
        if shapes:
            h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_tensor_digest_keeps_every_artifact_key_byte_identical():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 1, 8, 8, generator=g), torch.randint(10, (5,), generator=g)
    held, held_y = torch.randn(3, 1, 8, 8, generator=g), torch.randint(10, (3,), generator=g)
    # checkpoint.fingerprint (teacher and path checks, run keys): names, shapes, bytes in sorted name order.
    net = build_denoiser(TeacherConfig(width=16, depth=1), (2,), 1.0)
    sd = sorted(net.state_dict().items())
    assert fingerprint(net) == _old_digest(b"", [t for _, t in sd], names=[n for n, _ in sd])
    # teachers._data_hash (teacher resume check): a (shape, dtype) header, then data and label bytes, no shapes.
    header = str((tuple(x.shape), str(x.dtype))).encode()
    assert _data_hash(x, y) == _old_digest(header, [x, y], shapes=False)
    assert _data_hash(x, None) == _old_digest(header, [x], shapes=False)
    # digits classifier cache folder: shape and bytes of each tensor.
    assert tensor_digest(x, y, held, held_y) == _old_digest(b"", [x, y, held, held_y])
    # experiments' data fingerprint: the setting's name, then shape and bytes of the tensors that are not None.
    assert tensor_digest(x, None, held, held_y, extra="digits") == _old_digest(b"digits", [x, held, held_y])
    assert tensor_digest(x, extra=b"a") != tensor_digest(x, extra=b"b") != tensor_digest(x.reshape(5, 64), extra=b"b")


def test_dropout_runs_resume_bitwise_and_ignore_evaluation_draws(tmp_path, monkeypatch, one_thread):
    """With dropout (the EDM teachers' networks), both stages killed mid-run resume bitwise, and a metric that draws
    from the global RNG leaves the run unchanged: the masks of an update depend on (seed, rank, update) alone."""
    from disback.networks import EDMDenoiser
    from disback.networks.presets import edm_teacher_kwargs

    torch.manual_seed(0)
    teacher = EDMDenoiser(**{**edm_teacher_kwargs("afhqv2_64", "tiny", 8), "dropout": 0.25})
    teacher = teacher.eval().requires_grad_(False)
    dcfg = DegradeConfig(iters=6, num_nodes=2, batch=4, lr=1e-3, ckpt_every=2)
    ref = disback.record_degradation(teacher, dcfg, tmp_path / "d_ref", progress=False)
    degrade, calls = importlib.import_module("disback.degrade"), []
    real_step = degrade.fake_score_step

    def dying_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Crash
        return real_step(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(degrade, "fake_score_step", dying_step)
        with pytest.raises(Crash):
            disback.record_degradation(teacher, dcfg, tmp_path / "d_run", progress=False)
    resumed = disback.record_degradation(teacher, dcfg, tmp_path / "d_run", progress=False)
    assert [n["sha256"] for n in resumed.nodes] == [n["sha256"] for n in ref.nodes]

    cfg = DistillConfig(iters=5, iters_per_node=2, batch=4, lr_gen=1e-3, lr_fake=1e-3, eval_every=1, ckpt_every=2)
    evaluations = []

    def metric(generator):  # draws from the global RNG, as a careless metric might; dies once, at step 3
        evaluations.append(float(torch.rand(())))
        if len(evaluations) == 4:
            raise Crash
        return {"draw": evaluations[-1]}

    plain = disback.backtrack(teacher, ref, cfg, tmp_path / "s_ref", progress=False)
    with pytest.raises(Crash):
        disback.backtrack(teacher, ref, cfg, tmp_path / "s_run", progress=False, metric_fn=metric)
    assert json.loads((tmp_path / "s_run" / "state.json").read_text())["step"] == 2
    resumed = disback.backtrack(teacher, ref, cfg, tmp_path / "s_run", progress=False, metric_fn=metric)
    for a, b in ((plain.generator, resumed.generator), (plain.fake_score, resumed.fake_score)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["loss_gen"] for r in plain.log[1:]] == [r["loss_gen"] for r in resumed.log[1:]]


def test_resume_along_another_path_is_refused(teacher, path, tmp_path, one_thread):
    """A stage-2 run folder resumed with a different degradation path (same teacher and config) is refused: its
    targets would come from one path and its weights from another."""
    cfg = DistillConfig(iters=4, iters_per_node=1, batch=16, ckpt_every=1)
    other = disback.record_degradation(teacher, DegradeConfig(iters=20, num_nodes=4, batch=32, lr=3e-4),
                                       tmp_path / "other", progress=False)
    disback.backtrack(teacher, path, cfg, tmp_path / "s", progress=False)
    with pytest.raises(ArtifactError, match="config hash"):
        disback.backtrack(teacher, other, cfg, tmp_path / "s", progress=False)
    control = cfg.replace(backtrack=False, fake_from_path=True)
    disback.distill(teacher, control, tmp_path / "c", path=path, progress=False)
    with pytest.raises(ArtifactError, match="config hash"):
        disback.distill(teacher, control, tmp_path / "c", path=other, progress=False)
