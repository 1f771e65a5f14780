"""One writer per run folder, checked with real processes: a second writer stops at once; a killed holder does not block."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from disback.config import TeacherConfig
from disback.runlock import PID_FILE, RunFolderInUse, run_lock
from disback.teachers import train_teacher

ROOT = Path(__file__).resolve().parents[1]

# Holds the lock of argv[1], says so on stdout, then sleeps until killed or 60 s pass. It loads runlock.py alone
# (the package's import of torch and POT costs seconds per process).
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("runlock", sys.argv[2])
runlock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runlock)
with runlock.run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""

# Trains a tiny teacher into argv[1]: the real entry point, so the decorator is what is tested.
WRITER = """
import sys, torch
from disback.config import TeacherConfig
from disback.teachers import train_teacher
train_teacher(torch.randn(64, 2), config=TeacherConfig(width=8, depth=1, iters=2, batch=8), progress=False,
              run_dir=sys.argv[1])
print("trained", flush=True)
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _start_holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), str(ROOT / "disback" / "runlock.py")],
                            stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    assert proc.stdout.readline().strip() == "held", "the holder process never took the lock"
    return proc


def _run_writer(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WRITER, str(run_dir)], capture_output=True, text=True, env=_env(),
                          cwd=ROOT, timeout=120)


def test_second_writer_stops_at_once_naming_folder_and_holder(tmp_path):
    """A second process training into a held run folder stops at once: one line naming the folder and the holder's pid."""
    run_dir = tmp_path / "run"
    holder = _start_holder(run_dir)
    try:
        start = time.monotonic()
        second = _run_writer(run_dir)
        took = time.monotonic() - start
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode != 0 and "trained" not in second.stdout
    last = second.stderr.strip().splitlines()[-1]
    assert last == (f"disback.runlock.RunFolderInUse: {run_dir} is in use by process {holder.pid} "
                    f"(lock file {run_dir / '.lock'}); wait for it or stop it"), second.stderr
    assert took < 60, f"the second writer waited {took:.0f} s instead of stopping at once"
    assert not (run_dir / "config.json").exists(), "the refused writer wrote into the folder"


def test_lock_of_a_killed_holder_does_not_block_a_rerun(tmp_path):
    """A holder killed with SIGKILL leaves its lock and pid files behind; a rerun on the folder still trains."""
    run_dir = tmp_path / "run"
    holder = _start_holder(run_dir)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run_dir / ".lock").exists() and (run_dir / PID_FILE).read_text().strip() == str(holder.pid)
    rerun = _run_writer(run_dir)
    assert rerun.returncode == 0, rerun.stderr
    assert "trained" in rerun.stdout and (run_dir / "config.json").is_file()
    assert not (run_dir / PID_FILE).exists(), "the pid file outlived its holder's normal exit"


def test_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    """The same process may nest the lock of one folder; after the outer block another holder can take it."""
    run_dir = tmp_path / "run"
    with run_lock(run_dir):
        with run_lock(run_dir):
            assert (run_dir / PID_FILE).read_text().strip() == str(os.getpid())
        assert (run_dir / PID_FILE).exists(), "the inner block released the outer block's lock"
    holder = _start_holder(run_dir)
    try:
        with pytest.raises(RunFolderInUse, match=f"in use by process {holder.pid} "):
            with run_lock(run_dir):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_training_without_run_dir_takes_no_lock(tmp_path, monkeypatch):
    """A teacher trained without a run folder writes nothing and needs no lock."""
    monkeypatch.chdir(tmp_path)
    train_teacher(torch.randn(32, 2), config=TeacherConfig(width=8, depth=1, iters=1, batch=8), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_wrong_argument_names_the_locked_stage(tmp_path):
    """The lock's wrapper binds the arguments first: a wrong keyword is a TypeError naming the stage, not the wrapper."""
    import disback

    with pytest.raises(TypeError, match=r"^distill\(\): got an unexpected keyword argument 'method'"):
        disback.distill(None, None, tmp_path, method="foo")


def test_a_waiting_reader_takes_the_lock_once_the_holder_is_done(tmp_path):
    """Notebooks sharing a run wait (``wait`` > 0) for the process training it rather than stopping: the wait ends
    when the holder exits, and a wait that runs out names the holder as usual."""
    holder = _start_holder(tmp_path / "run")
    with pytest.raises(RunFolderInUse, match=f"in use by process {holder.pid}"):
        with run_lock(tmp_path / "run", wait=0.5):
            pass
    threading_kill = subprocess.Popen([sys.executable, "-c", f"import os, signal, time; time.sleep(1.0); "
                                       f"os.kill({holder.pid}, signal.SIGTERM)"])
    start = time.time()
    with run_lock(tmp_path / "run", wait=30):
        waited = time.time() - start
    threading_kill.wait(timeout=30)
    holder.wait(timeout=30)
    assert 0.5 < waited < 30
