"""Data parallelism: 2 CPU processes (gloo, launched by torchrun) train the weights one process trains on the same
global batch, to float tolerance; a 2-process checkpoint resumes on 1 process; bf16 autocast tracks float32."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from disback import distill, parallel, record_degradation
from disback.checkpoint import load_tensors, read_json, read_jsonl
from disback.config import DistillConfig, TeacherConfig
from disback.generator import make_generator
from disback.teachers import build_denoiser, load_teacher, save_teacher
from disback.train import main as train_main
from parallel_worker import DEGRADE, DISTILL, PREEMPTED, STOP_AT

ROOT = Path(__file__).resolve().parents[1]
needs_gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="this torch build has no gloo backend for CPU processes")
WORKER = Path(__file__).with_name("parallel_worker.py")


def tiny_teacher(directory: Path):
    """A random class-conditional 2-D MLP denoiser (3 classes), saved and loaded back as the workers load it."""
    config = TeacherConfig(width=16, depth=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_denoiser(config, (2,), sigma_data=1.0, label_dim=3)
    net.config = config
    save_teacher(net, directory)
    return load_teacher(directory)


def state(run_dir: Path) -> dict:
    """The tensors of a run's last checkpoint (weights, optimizer moments, RNG)."""
    return load_tensors(run_dir / read_json(run_dir / "state.json")["file"])


def assert_close_states(a: Path, b: Path) -> None:
    """Equal RNG states; weights and Adam moments equal up to float reduction order (Adam's per-coordinate
    normalisation can lift a rounding difference in a near-zero gradient to a small fraction of the learning rate)."""
    sa, sb = state(a), state(b)
    assert sorted(sa) == sorted(sb)
    assert torch.equal(sa.pop("rng"), sb.pop("rng")), "the shared RNG must end in the single-process state"
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Run the worker once on 2 processes; returns (teacher, its output folder)."""
    tmp = tmp_path_factory.mktemp("parallel")
    teacher = tiny_teacher(tmp / "teacher")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(tmp / "teacher"), str(tmp / "out")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return teacher, tmp / "out"


@needs_gloo
def test_two_processes_record_the_single_process_path(two_processes, tmp_path, one_thread):
    """Stage 1 on 2 processes (global batch split 4 + 4) equals stage 1 on 1 process with batch 8."""
    teacher, out = two_processes
    record_degradation(teacher, DEGRADE, tmp_path / "one", progress=False)
    assert_close_states(out / "degrade", tmp_path / "one")
    for i in range(DEGRADE.num_nodes + 1):
        a, b = (load_tensors(d / "path" / f"node_{i:03d}.safetensors") for d in (out / "degrade", tmp_path / "one"))
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    logs = [read_jsonl(d / "log.jsonl") for d in (out / "degrade", tmp_path / "one")]
    assert [r["step"] for r in logs[0]] == list(range(1, DEGRADE.iters + 1))  # one log, written by rank 0
    assert [r["loss_fake"] for r in logs[0]] == pytest.approx([r["loss_fake"] for r in logs[1]], rel=1e-5)


@needs_gloo
def test_two_processes_distill_like_one(two_processes, tmp_path, one_thread):
    """Stage 2 (DMD2 + regression, 2 fake steps, EMA, backtracking) on 2 processes equals 1 process, same batch."""
    teacher, out = two_processes
    path = record_degradation(teacher, DEGRADE, tmp_path / "deg", progress=False)
    result = distill(teacher, DISTILL, tmp_path / "one", path=path, progress=False)
    assert_close_states(out / "distill", tmp_path / "one")
    logged = read_jsonl(out / "distill" / "log.jsonl")
    assert [r["step"] for r in logged] == list(range(DISTILL.iters + 1))
    assert [r["nfe"] for r in logged] == [r["nfe"] for r in result.log]
    for key in ("loss_gen", "loss_fake"):
        assert [r[key] for r in logged[1:]] == pytest.approx([r[key] for r in result.log[1:]], rel=1e-4)


@needs_gloo
def test_two_process_checkpoint_resumes_on_one_process(two_processes, tmp_path, one_thread):
    """A 2-process run stopped after its update-2 checkpoint, resumed on 1 process, ends where 1 process ends."""
    teacher, out = two_processes
    resumed = out / "preempted"
    assert read_json(resumed / "state.json")["step"] == 2 and STOP_AT == 4
    distill(teacher, PREEMPTED, resumed, progress=False)
    distill(teacher, PREEMPTED, tmp_path / "one", progress=False)
    assert_close_states(resumed, tmp_path / "one")
    assert [r["step"] for r in read_jsonl(resumed / "log.jsonl")] == list(range(PREEMPTED.iters + 1))


def test_bf16_autocast_tracks_float32(tmp_path, one_thread):
    """bf16 changes the numbers (autocast is on), but the generator's samples stay within a few percent of how far
    the float32 run moved them, and the fake-score losses agree."""
    teacher = tiny_teacher(tmp_path / "teacher")
    config = DistillConfig(iters=20, batch=16, eval_every=0, lr_gen=1e-3)
    fp32 = distill(teacher, config, tmp_path / "fp32", progress=False)
    bf16 = distill(teacher, config.replace(bf16=True), tmp_path / "bf16", progress=False)
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    labels = torch.randint(3, (512,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x0, x32, x16 = (g(z, labels) for g in (make_generator(teacher, config.sigma_init), fp32.generator,
                                               bf16.generator))
    moved, gap = (x32 - x0).abs().mean().item(), (x32 - x16).abs().mean().item()
    assert 0 < gap < 0.1 * moved, (gap, moved)
    assert [r["loss_fake"] for r in bf16.log[1:]] == pytest.approx([r["loss_fake"] for r in fp32.log[1:]], rel=0.05)


def test_shard_and_rank_seed_on_a_pretend_rank(monkeypatch):
    """Rank 1 of 2 takes rows 4..7 of a batch of 8, refuses a batch of 7, and seeds its torch RNG apart from rank 0."""
    monkeypatch.setattr(parallel, "_WORLD", parallel.World(1, 2, 1, "gloo"))
    x = torch.arange(8)
    mine, none = parallel.shard(x, None)
    assert mine.tolist() == [4, 5, 6, 7] and none is None
    with pytest.raises(ValueError, match="batch=7: must be divisible by the number of processes"):
        parallel.shard(torch.arange(7))
    assert parallel.rank_seed(3) != 3 and parallel.rank_seed(3) == parallel.rank_seed(3)
    monkeypatch.setattr(parallel, "_WORLD", parallel.World(0, 1, 0, "none"))
    assert parallel.rank_seed(3) == 3 and parallel.shard(x)[0] is x


def test_train_command_runs_a_stage(tmp_path, one_thread, capsys):
    """``python -m disback.train degrade TEACHER RUN_DIR --set ...`` (one process) records a path."""
    tiny_teacher(tmp_path / "teacher")
    assert train_main(["degrade", str(tmp_path / "teacher"), str(tmp_path / "run"), "--device", "cpu",
                       "--set", "iters=3", "num_nodes=1", "batch=4", "lr=1e-4"]) == 0
    assert "3 steps of global batch 4 on 1 process(es); 2 nodes" in capsys.readouterr().out
    recorded = read_json(tmp_path / "run" / "path" / "path.json")["config"]
    assert (recorded["iters"], recorded["lr"]) == (3, 1e-4)  # YAML 1.1 would read 1e-4 as a string
