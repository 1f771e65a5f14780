"""What the notebooks share: run folders, loading stage outputs, multi-seed runs and their summaries."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import ArtifactError
from .config import DistillConfig
from .diffusion import edm_sampler, heun_nfe
from .distill import distill
from .generator import seeded_labels, seeded_noise
from .path import DegradationPath
from .settings import Setting
from .teachers import load_teacher


@dataclass(frozen=True)
class Paths:
    """Where one profile and setting keeps its runs (git-ignored) and its results (committed)."""

    runs: Path
    results: Path
    setting: str

    @classmethod
    def make(cls, runs_root, results_root, profile: str, setting: str) -> "Paths":
        results = Path(results_root) / profile
        for sub in ("metrics", "tables", "figures"):
            (results / sub).mkdir(parents=True, exist_ok=True)
        return cls(Path(runs_root) / profile / setting, results, setting)

    @property
    def teacher(self) -> Path:
        return self.runs / "teacher"

    @property
    def degradation(self) -> Path:
        return self.runs / "degradation"

    def fresh(self, name: str) -> Path:
        """An emptied run folder ``runs/<profile>/<setting>/<name>`` (a notebook re-run starts clean)."""
        d = self.runs / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def metrics(self, notebook: str) -> Path:
        return self.results / "metrics" / f"{notebook}__{self.setting}.json"

    def figure(self, name: str) -> Path:
        return self.results / "figures" / f"{name}__{self.setting}"

    def table(self, name: str) -> Path:
        return self.results / "tables" / f"{name}__{self.setting}"


def load_stage(paths: Paths):
    """The teacher (notebook 01) and the degradation path (notebook 02) of this profile and setting."""
    teacher = load_teacher(paths.teacher)
    path = DegradationPath.load(paths.degradation / "path")
    path.check_teacher(teacher)
    return teacher, path


@torch.no_grad()
def sample_teacher(denoiser, setting: Setting, num: int, steps: int, sigma_max: float, seed_offset: int = 10 ** 6):
    """Heun samples of a (multi-step) denoiser with per-seed noise; returns (samples, labels, nfe)."""
    seeds = range(seed_offset, seed_offset + num)
    labels = seeded_labels(seeds, setting.label_dim)
    x = edm_sampler(denoiser, seeded_noise(seeds, setting.data_shape), labels, num_steps=steps, sigma_max=sigma_max)
    return x, labels, heun_nfe(steps)


def run_seeds(teacher, setting: Setting, config: DistillConfig, seeds, run_root: Path, num_eval: int,
              path: DegradationPath | None = None, progress: bool = True, probe_fn=None) -> list:
    """``distill`` once per seed (into ``run_root/seed<k>``); returns the per-seed ``DistillResult``s."""
    if config.backtrack and path is None:
        raise ArtifactError("backtrack=True needs the degradation path (run notebook 02 first)")
    return [distill(teacher, config.replace(seed=int(seed)), Path(run_root) / f"seed{seed}", path=path,
                    metric_fn=lambda g: setting.evaluate(g, num_eval), progress=progress, probe_fn=probe_fn)
            for seed in seeds]


def metric_curve(logs: list[list[dict]], metric: str):
    """Steps and the ``[seeds, evals]`` array of ``metric`` at the evaluated steps common to all logs."""
    steps = sorted(set.intersection(*({r["step"] for r in log if "metrics" in r} for log in logs)))
    values = np.array([[next(r["metrics"][metric] for r in log if r["step"] == s) for s in steps] for log in logs])
    return np.array(steps), values


def final_summary(logs: list[list[dict]], metric: str) -> dict:
    """Mean, std (ddof=1), min and max over seeds of ``metric`` at the last evaluation."""
    _, values = metric_curve(logs, metric)
    last = values[:, -1]
    return {"mean": float(last.mean()), "std": float(last.std(ddof=1)) if len(last) > 1 else 0.0,
            "min": float(last.min()), "max": float(last.max()), "n": int(len(last)), "per_seed": last.tolist()}


@torch.no_grad()
def dsm_loss(denoiser, x0: torch.Tensor, labels=None, p_mean: float = -1.2, p_std: float = 1.2, seed: int = 0) -> float:
    """Mean EDM denoising loss of ``denoiser`` on ``x0`` with fixed seeded sigmas and noise (comparable across nets)."""
    from .diffusion import denoising_loss, sample_sigma

    g = torch.Generator().manual_seed(seed)
    return float(denoising_loss(denoiser, x0, sample_sigma(len(x0), p_mean, p_std, g), labels, g).mean())


def save_record(paths: Paths, notebook: str, profile: str, primary: str, summary: dict, figures=(), tables=()) -> Path:
    """Write ``metrics/<notebook>__<setting>.json``: what REPORT.md reads (figure/table paths relative to results)."""
    from .results import save_metrics

    rel = [str(Path(f).relative_to(paths.results)) for f in (*figures, *tables)]
    return save_metrics(paths.metrics(notebook), {
        "notebook": notebook, "setting": paths.setting, "profile": profile, "status": "ok", "primary": primary,
        "summary": summary, "figures": [r for r in rel if r.endswith(".png")],
        "tables": [r for r in rel if r.endswith(".md")]})


def stage1_nfe(path: DegradationPath) -> int:
    """Network evaluations spent recording ``path``: one G0 pass and one fake-score pass per sample and step."""
    from .distill import NFE_FAKE_STEP

    return int(path.config["iters"]) * int(path.config["batch"]) * NFE_FAKE_STEP


def convergence(results: list, metric: str, threshold: float, nfe_offset: int = 0) -> dict:
    """Curves of ``metric`` over seeds and each seed's time to ``threshold``, in updates and in network evaluations.

    ``nfe_offset`` is added to the evaluation count (the stage-1 cost, to charge DisBack for its path).
    """
    from .stats import times_to_threshold

    logs = [r.log for r in results]
    steps, values = metric_curve(logs, metric)
    nfe_by_step = {r["step"]: r["nfe"] for r in logs[0]}
    nfe = np.array([nfe_by_step[int(s)] for s in steps], np.float64) + nfe_offset
    t_steps, reached = times_to_threshold(steps, values, threshold)
    t_nfe, _ = times_to_threshold(nfe, values, threshold)
    return {"steps": steps, "nfe": nfe, "values": values, "threshold": threshold, "updates": t_steps,
            "evaluations": t_nfe, "reached": reached}
