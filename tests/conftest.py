import pytest
import torch

# The nets in tests are tiny: one thread is as fast as two, and far faster on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """Run the test body single-threaded (like the subprocesses of the kill tests), so results compare bitwise."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def gaussian():
    """A 2-D Gaussian N(mu, s^2 I): one-mode mixture, an exact denoiser."""
    from disback.data import GaussianMixture

    return GaussianMixture(torch.tensor([[0.5, -1.0]]), torch.tensor([1.0]), 0.7)


@pytest.fixture
def tiny_paper_pipeline(tmp_path, monkeypatch):
    """``run(setting, device)``: notebook 07's cells in mode "tiny" on ``device`` (seconds); returns what they made."""
    from disback import paper_runs

    monkeypatch.setenv("DISBACK_ASSETS", str(tmp_path / "cache"))

    def run(setting: str = "imagenet64", device: str = "cpu") -> dict:
        root = tmp_path / device.replace(":", "")
        run = paper_runs.start(setting, "smoke", "tiny", root / "results", root / "runs", 8, num_reference=32,
                               device=device)
        teacher = paper_runs.teacher_fid(run, 12, 3, batch=5)  # three batches, the last one short
        path = paper_runs.degradation(run, {"iters": 4, "num_nodes": 2, "batch": 4, "lr": 1e-05})
        arms = paper_runs.train_arms(run, path, {"iters": 4, "batch": 4, "lr_gen": 1e-05, "lr_fake": 1e-05,
                                                 "eval_every": 2}, ["diff_instruct"], 0.25, [0], 8)
        final = paper_runs.final_fid(run, arms, 2, 6, batch=4)
        tables = paper_runs.comparison_table(run, final, teacher)
        record = paper_runs.save(run, {"teacher": teacher, "final": final}, [], tables)
        return {"run": run, "teacher": teacher, "path": path, "arms": arms, "final": final, "record": record}

    return run
