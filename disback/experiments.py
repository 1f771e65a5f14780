"""What the notebooks share: run folders, loading stage outputs, multi-seed runs shared between notebooks, records."""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .checkpoint import ArtifactError, fingerprint, tensor_digest, write_json
from .config import DegradeConfig, DistillConfig
from .diffusion import edm_sampler, heun_nfe
from .distill import as_real_data, distill
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
    """Heun samples of a (multi-step) denoiser with per-seed noise; returns (samples, labels, nfe). (EDM's own
    samplers at the paper's NFE are ``diffusion.sample_edm_teacher``.)"""
    seeds = range(seed_offset, seed_offset + num)
    labels = seeded_labels(seeds, setting.label_dim)
    x = edm_sampler(denoiser, seeded_noise(seeds, setting.data_shape), labels, num_steps=steps, sigma_max=sigma_max)
    return x, labels, heun_nfe(steps)


# Modules that only analyse or present finished runs, or serve the paper-scale settings alone: editing them
# retrains nothing at the cpu scale.
PRESENTATION_MODULES = ("plots.py", "report.py", "analysis.py", "bench.py", "progress.py", "clean_notebook.py",
                        "runlock.py", "__main__.py", "edm.py", "edm_precond.py", "edm_pickle.py", "inception.py",
                        "download.py", "presets.py", "throughput.py", "edm_settings.py", "paper_runs.py",
                        "gpu_hours.py", "train.py", "notebook.py", "sd.py", "sd_stack.py", "sd_eval.py", "sd_bench.py",
                        "params.py", "run_notebook.py")


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of the ``disback`` package's sources: a shared run is only reused by the code that trained it."""
    return sources_digest(Path(__file__).parent)


def sources_digest(package: Path) -> str:
    """sha256 over a package's ``*.py`` files (names and bytes), leaving out the presentation modules
    (figures, REPORT.md): restyling a plot does not invalidate any training run."""
    h = hashlib.sha256()
    for f in sorted(Path(package).rglob("*.py")):
        if f.name in PRESENTATION_MODULES:
            continue
        h.update(f.relative_to(package).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _data_fingerprint(setting: Setting) -> str:
    return tensor_digest(setting.train, setting.train_labels, setting.reference, setting.reference_labels,
                         extra=setting.name)


def shared_runs(paths: Paths, teacher, setting: Setting, config: DistillConfig, seeds, num_eval: int,
                path: DegradationPath | None = None, progress: bool = True, probe_fn=None,
                probe_name: str | None = None, real_data=None) -> list:
    """``run_seeds`` in a folder named by everything the runs depend on, so notebooks share identical runs.

    The folder ``runs/<profile>/<setting>/distill/<key>`` is keyed by the config (seed aside), the teacher's and
    the path's weights, the data and reference set, ``num_eval`` and the library's source code. A finished seed
    found there is loaded instead of retrained (bitwise the same result: runs are deterministic), an interrupted
    one resumes. A run with a ``probe_fn`` logs the probe too: with a ``probe_name`` (part of the key) it is shared
    like any other run, without one it is retrained from scratch so that the probe sees every step. The key is
    also written to ``key.json`` there. Only the runs that need the path (backtracking, the control arm) key it;
    only those with DMD2's GAN term (``config.gan_weight`` > 0) use and key ``real_data`` (see ``distill``).
    """
    if not config.backtrack:  # iters_per_node is unused without a path: do not let it split identical runs
        config = config.replace(iters_per_node=DistillConfig.iters_per_node)
    if not (config.backtrack or config.fake_from_path):
        path = None
    real = as_real_data(real_data, teacher, config)
    config = config.replace(ckpt_every=config.ckpt_every or config.iters)  # a finished run keeps its final state
    key = {"config": config.replace(seed=0).to_dict(), "teacher": fingerprint(teacher),
           "path": None if path is None else {"config": path.config, "nodes": [n["sha256"] for n in path.nodes]},
           "data": _data_fingerprint(setting), "num_eval": int(num_eval), "code": code_fingerprint(),
           **({"probe": probe_name} if probe_name else {}), **({"real_data": real.digest} if real else {})}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    arm = "-disback" if config.backtrack else "-control" if config.fake_from_path else ""
    root = paths.runs / "distill" / f"{config.method}{arm}-{digest}"
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "key.json", key)
    return run_seeds(teacher, setting, config, seeds, root, num_eval, path, progress, probe_fn,
                     fresh=probe_fn is not None and probe_name is None, real_data=real)


def shared_path(paths: Paths, teacher, config: DegradeConfig, progress: bool = True) -> DegradationPath:
    """The degradation path of ``config``: notebook 02's when it was recorded with the same config and teacher,
    otherwise recorded (or resumed, or loaded when finished) under ``runs/<profile>/<setting>/paths/``."""
    try:
        path = DegradationPath.load(paths.degradation / "path")
        if DegradeConfig.from_dict(path.config).hash() == config.hash():
            path.check_teacher(teacher)
            return path
    except ArtifactError:
        pass
    from .degrade import record_degradation

    config = config.replace(ckpt_every=config.ckpt_every or config.iters)
    key = f"{config.hash()}-{fingerprint(teacher)[:12]}-{code_fingerprint()[:12]}"
    return record_degradation(teacher, config, paths.runs / "paths" / key, progress=progress)


SHARED_RUN_WAIT = 3600.0  # seconds a notebook waits for another that trains the same shared run


def run_seeds(teacher, setting: Setting, config: DistillConfig, seeds, run_root: Path, num_eval: int,
              path: DegradationPath | None = None, progress: bool = True, probe_fn=None, fresh: bool = False,
              real_data=None) -> list:
    """``distill`` once per seed (into ``run_root/seed<k>``); returns the per-seed ``DistillResult``s. ``fresh``
    retrains each seed from scratch (its folder emptied while holding the folder's lock)."""
    if (config.backtrack or config.fake_from_path) and path is None:
        raise ArtifactError("backtrack / fake_from_path need the degradation path (run notebook 02 first)")
    from .progress import RunCounter
    from .runlock import run_lock

    counter, results = RunCounter(len(seeds), f"{Path(run_root).name}"), []
    for seed in seeds:
        run_dir = Path(run_root) / f"seed{seed}"
        with run_lock(run_dir, wait=SHARED_RUN_WAIT):  # another notebook training this very run: wait, then load it
            if fresh:
                _empty_folder(run_dir)
            results.append(distill(teacher, config.replace(seed=int(seed)), run_dir, path=path,
                                   metric_fn=lambda g: setting.evaluate(g, num_eval), progress=progress,
                                   probe_fn=probe_fn, real_data=real_data))
        counter.step(f"seed {seed}")
    return results


def _empty_folder(folder: Path) -> None:
    """Remove everything inside a run folder except its lock files (held by the caller while it empties it)."""
    from .runlock import LOCK_FILE, PID_FILE

    for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if entry.name not in (LOCK_FILE, PID_FILE):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


@torch.no_grad()
def dsm_loss(denoiser, x0: torch.Tensor, labels=None, p_mean: float = -1.2, p_std: float = 1.2, seed: int = 0) -> float:
    """Mean EDM denoising loss of ``denoiser`` on ``x0`` with fixed seeded sigmas and noise (comparable across nets)."""
    from .diffusion import denoising_loss, sample_sigma

    g = torch.Generator().manual_seed(seed)
    return float(denoising_loss(denoiser, x0, sample_sigma(len(x0), p_mean, p_std, g), labels, g).mean())


def read_record(paths: Paths, notebook: str) -> dict:
    """The metrics record another notebook of this profile and setting wrote (run that notebook first)."""
    f = paths.metrics(notebook)
    if not f.is_file():
        raise ArtifactError(f"{f} is missing: run notebooks/{notebook}.ipynb for setting {paths.setting!r} first")
    return json.loads(f.read_text())


def save_record(paths: Paths, notebook: str, profile: str, primary: str, summary: dict, figures=(), tables=()) -> Path:
    """Write ``metrics/<notebook>__<setting>.json``: what REPORT.md reads (figure/table paths relative to results)."""
    from .results import save_metrics

    rel = [str(Path(f).relative_to(paths.results)) for f in (*figures, *tables)]
    return save_metrics(paths.metrics(notebook), {
        "notebook": notebook, "setting": paths.setting, "profile": profile, "status": "ok", "primary": primary,
        "summary": summary, "figures": [r for r in rel if r.endswith(".png")],
        "tables": [r for r in rel if r.endswith(".md")]})
