"""The degradation path on disk, the target schedule, and a tiny end-to-end DisBack run on 2-D data."""
import json

import pytest
import torch

import disback
from disback.checkpoint import ArtifactError, fingerprint, read_jsonl
from disback.config import DegradeConfig, DistillConfig, TeacherConfig
from disback.data import ring_mixture
from disback.metrics import sample_metrics_2d
from disback.path import DegradationPath, TargetSchedule, node_steps
from disback.settings import load_setting

TINY_TEACHER = TeacherConfig(width=32, depth=1, iters=300, batch=256, lr=3e-3)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    data = ring_mixture().sample(4000, torch.Generator().manual_seed(0))
    return disback.teachers.train_teacher(data, None, TINY_TEACHER, progress=False)


@pytest.fixture(scope="module")
def path(teacher, tmp_path_factory):
    run = tmp_path_factory.mktemp("degrade")
    return disback.record_degradation(teacher, DegradeConfig(iters=40, num_nodes=4, batch=64), run, progress=False)


def test_path_round_trip(path, teacher):
    """Nodes load back bitwise; node 0 is the teacher; the manifest lists step, file and sha256."""
    again = DegradationPath.load(path.root)
    assert again.steps == [0, 10, 20, 30, 40] and again.num_nodes == 4
    assert again.reversed() == [4, 3, 2, 1, 0]
    net = disback.teachers.build_denoiser(TINY_TEACHER, (2,), teacher.sigma_data)
    assert fingerprint(again.load_node(0, net)) == fingerprint(teacher)
    assert fingerprint(again.load_node(4, net)) != fingerprint(teacher)
    manifest = json.loads((path.root / "path.json").read_text())
    assert {"index", "step", "file", "sha256"} <= set(manifest["nodes"][2])
    again.check_teacher(teacher)


def _copy_path(path, tmp_path):
    import shutil

    dst = tmp_path / "p"
    shutil.copytree(path.root, dst)
    return dst


def test_strict_loading_rejects_tampered_missing_and_extra(path, tmp_path):
    """A tampered, missing or unlisted node file is refused, naming the file."""
    dst = _copy_path(path, tmp_path)
    f = dst / "node_002.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="node_002.safetensors"):
        DegradationPath.load(dst)
    f.unlink()
    with pytest.raises(ArtifactError, match="node_002.safetensors"):
        DegradationPath.load(dst)
    dst2 = _copy_path(path, tmp_path / "b")
    (dst2 / "node_099.safetensors").write_bytes(b"x")
    with pytest.raises(ArtifactError, match="node_099"):
        DegradationPath.load(dst2)


def test_node_into_wrong_module_is_refused(path):
    wrong = disback.teachers.build_denoiser(TINY_TEACHER.replace(width=16), (2,), 1.0)
    with pytest.raises(ArtifactError, match="do not fit"):
        path.load_node(1, wrong)


def test_schedule_visits_every_node_in_order_and_ends_on_teacher():
    s = TargetSchedule.backtracking(num_nodes=4, iters_per_node=10, iters=100)
    visited = [s.node_at(i) for i in range(100)]
    order = [n for i, n in enumerate(visited) if i == 0 or n != visited[i - 1]]
    assert order == [3, 2, 1, 0]
    assert [visited.index(n) for n in order] == [0, 10, 20, 30]
    assert visited[-1] == 0 and TargetSchedule.constant().node_at(5) == 0
    with pytest.raises(ValueError, match="iters_per_node=40"):
        TargetSchedule.backtracking(num_nodes=4, iters_per_node=40, iters=100)


def test_node_spacing():
    assert node_steps(100, 4, "uniform") == [0, 25, 50, 75, 100]
    early = node_steps(100, 4, "early")
    assert early[0] == 0 and early[-1] == 100 and early[1] < 25 and early == sorted(set(early))
    with pytest.raises(ValueError, match="spacing='log'"):
        node_steps(100, 4, "log")


def test_log_proves_target_changed_on_schedule(teacher, path, tmp_path):
    """The run log shows the active node every step, switching exactly on schedule to the node's real weights."""
    cfg = DistillConfig(iters=40, iters_per_node=8, batch=32, eval_every=0)
    result = disback.backtrack(teacher, path, cfg, tmp_path, progress=False)
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in log] == list(range(41))
    nodes = [r["node"] for r in log[1:]]
    assert nodes == [3] * 8 + [2] * 8 + [1] * 8 + [0] * 16
    switches = [r for r in log if "target_fingerprint" in r]
    assert [r["step"] for r in switches] == [1, 9, 17, 25]
    net = disback.teachers.build_denoiser(TINY_TEACHER, (2,), teacher.sigma_data)
    for r in switches:
        assert r["target_fingerprint"] == fingerprint(path.load_node(r["node"], net))[:16]
    assert result.schedule.nodes == (3, 2, 1, 0)


def test_path_from_other_teacher_is_refused(path, tmp_path):
    other = disback.teachers.train_teacher(ring_mixture().sample(500), None, TINY_TEACHER.replace(iters=5, seed=3),
                                           progress=False)
    with pytest.raises(ArtifactError, match="recorded from teacher"):
        disback.backtrack(other, path, DistillConfig(iters=5, iters_per_node=1), tmp_path, progress=False)


def test_disback_improves_initial_generator(tmp_path):
    """2-D DisBack from the teacher copy ends far closer to the data than the initial generator (seconds on CPU)."""
    setting = load_setting("ring2d", num_train=6000, num_reference=800)
    teacher = disback.teachers.train_teacher(setting.train, None, TeacherConfig(width=128, depth=3, iters=1500),
                                             progress=False)
    path = disback.record_degradation(teacher, DegradeConfig(iters=100, num_nodes=3, spacing="early"),
                                      tmp_path / "deg", progress=False)
    cfg = DistillConfig(iters=300, iters_per_node=20, lr_gen=2e-4, eval_every=0)
    result = disback.backtrack(teacher, path, cfg, tmp_path / "db", progress=False,
                               metric_fn=lambda g: setting.evaluate(g, 800))
    first, last = result.log[0]["metrics"], result.log[-1]["metrics"]
    assert last["frechet"] < 0.2 * first["frechet"] and last["w2"] < 0.6 * first["w2"], (first, last)
    assert last["mode_coverage"] > first["mode_coverage"]
    assert sample_metrics_2d(setting.reference[:400], setting.reference[400:], setting.exact)["w2"] < last["w2"] + 0.3


def test_interrupted_recording_is_not_a_path(teacher, tmp_path, monkeypatch):
    """A recording that died after some nodes leaves a valid-looking manifest of the nodes so far: loading it must
    fail (naming what is missing) instead of returning a shorter path whose last node never fitted G0."""
    real_add, cfg = disback.path.PathWriter.add, DegradeConfig(iters=8, num_nodes=4, batch=16)

    class Died(Exception):
        pass

    def dying_add(writer, module, step):
        if len(writer.manifest["nodes"]) == 3:  # nodes 0, 1, 2 are on disk with their manifest
            raise Died
        real_add(writer, module, step)

    monkeypatch.setattr(disback.path.PathWriter, "add", dying_add)
    with pytest.raises(Died):
        disback.record_degradation(teacher, cfg, tmp_path, progress=False)
    monkeypatch.setattr(disback.path.PathWriter, "add", real_add)
    assert len(json.loads((tmp_path / "path" / "path.json").read_text())["nodes"]) == 3
    with pytest.raises(ArtifactError, match="incomplete.*2 of 4 nodes.*step 4 of 8"):
        DegradationPath.load(tmp_path / "path")
