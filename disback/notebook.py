"""A notebook's setup from its parameters, and what every notebook then asks of it.

``setup`` turns the parameters every notebook shares (profile, setting, where results and runs go, the reference
and evaluation sizes) into one ``Notebook``: its folders, its setting, the figure style. The notebook then loads
the stage outputs, reads the records of the notebooks before it, trains shared runs, and saves its tables,
figures and record through it; ``Timer`` measures the ``*_seconds`` a record keeps.

A profile can build on another (``base_profile``): its notebooks then load that profile's teacher, path, records and
shared runs, and write only their own results (the ``cpu_extra`` profile: notebook 04's four methods on digits, on
top of a ``cpu`` reproduction). ``Notebook.side_by_side`` trains a notebook's runs in several processes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import multiprocessing
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import experiments, plots
from .config import DistillConfig
from .path import DegradationPath
from .results import save_table
from .settings import Setting, load_setting
from .teachers import load_teacher


class Timer:
    """Wall-clock seconds since the timer was made."""

    def __init__(self):
        self.start = time.time()

    def seconds(self) -> float:
        return time.time() - self.start


@dataclass
class Notebook:
    """One notebook's profile, folders and setting, with the calls that use them."""

    profile: str                # scale: results/<profile>/ and runs/<profile>/
    paths: experiments.Paths    # where this profile and setting keeps runs (the base profile's) and results
    data: Setting               # the setting's data, reference set and metrics
    num_eval: int               # generated samples per metric evaluation
    base: experiments.Paths | None = None  # the base profile's folders: records of earlier notebooks come from there
    spec: dict = field(default_factory=dict)  # setup's arguments: a helper process (side_by_side) rebuilds the setting
    base_records: dict = field(default_factory=dict)  # digest of each base record read (the report checks it)

    @property
    def metric(self) -> str:
        """The setting's headline metric (lower is better)."""
        return self.data.primary

    def teacher(self):
        """Notebook 01's teacher."""
        return load_teacher(self.paths.teacher)

    def stage(self):
        """Notebook 01's teacher and notebook 02's degradation path."""
        return experiments.load_stage(self.paths)

    def record(self, notebook: str) -> dict:
        """The summary of the record ``notebook`` wrote for this profile and setting (run it first); under a base
        profile, that profile's record (its digest is kept in ``base_records``)."""
        if self.base is None:
            return experiments.read_record(self.paths, notebook)["summary"]
        self.base_records[notebook] = record_digest(self.base.metrics(notebook))
        return experiments.read_record(self.base, notebook)["summary"]

    def teacher_metric(self) -> float:
        """The teacher's headline metric (notebook 01's record)."""
        return self.record("01_teacher_setup")["teacher"][self.metric]

    def threshold(self, factor: float) -> float:
        """A quality threshold: ``factor`` times the teacher's headline metric."""
        return factor * self.teacher_metric()

    def runs(self, teacher, config: DistillConfig, seeds, path: DegradationPath | None = None, **kwargs) -> list:
        """``experiments.shared_runs`` of ``config`` on this setting: per-seed results, trained or reused."""
        return experiments.shared_runs(self.paths, teacher, self.data, config, seeds, self.num_eval, path, **kwargs)

    @contextlib.contextmanager
    def side_by_side(self, teacher, configs, seeds, path: DegradationPath | None = None, jobs: int = 1):
        """Inside the block, ``jobs - 1`` helper processes train the shared runs of ``configs`` x ``seeds`` while the
        notebook's own ``runs`` calls, in the block, go through them from the first: helper ``j`` takes every
        ``(jobs - 1)``-th run from the last one backwards. ``configs``: ``DistillConfig``s (their runs use ``path``)
        or ``(config, path)`` pairs (notebook 05: each variant its own path). A run is trained once (its folder's lock: whoever comes
        second waits, then loads it) and is the same run bitwise whoever trains it (runs are deterministic and keyed
        by what they depend on). ``jobs=1`` does nothing. A helper that fails only costs time: the notebook then
        trains its runs itself (a warning says so)."""
        jobs = int(jobs)
        if jobs < 1:
            raise ValueError(f"jobs={jobs!r}: must be >= 1 (1 = the notebook trains its runs alone)")
        with_paths = [c if isinstance(c, tuple) else (c, path) for c in configs]
        pairs = [(cfg.to_dict(), None if p is None else str(p.root), int(seed)) for cfg, p in with_paths
                 for seed in seeds]
        helpers = []
        if jobs > 1 and pairs:
            import torch

            ctx = multiprocessing.get_context("spawn")
            for j in range(jobs - 1):
                share = pairs[::-1][j::jobs - 1]
                helpers.append(ctx.Process(target=_help_train, daemon=True,
                                           args=(self.spec, share, torch.get_num_threads())))
                helpers[-1].start()
        try:
            yield
        except BaseException:  # the notebook stopped (an error, an interrupt): so do its helpers
            for h in helpers:
                h.terminate()
            raise
        finally:
            for h in helpers:
                h.join()
        for code in [h.exitcode for h in helpers if h.exitcode]:
            warnings.warn(f"side_by_side: a helper process ended with exit code {code}; the notebook trained its "
                          f"runs itself", stacklevel=3)

    def table(self, rows: list[dict], name: str) -> list[Path]:
        """Save ``rows`` as ``tables/<name>__<setting>.csv`` and ``.md``, print the Markdown; returns both paths."""
        files = save_table(rows, self.paths.table(name))
        print(files[1].read_text())
        return files

    def figure(self, fig, name: str) -> list[Path]:
        """Save ``fig`` as ``figures/<name>__<setting>.png`` and ``.pdf``; returns both paths."""
        return plots.save_figure(fig, self.paths.figure(name))

    def save_record(self, notebook: str, summary: dict, figures=(), tables=(), primary: str | None = None) -> Path:
        """Write this notebook's record (``primary`` defaults to the setting's headline metric)."""
        if self.base is not None:
            summary = {**summary, "base_profile": self.spec["base_profile"], "base_records": dict(self.base_records)}
        return experiments.save_record(self.paths, notebook, self.profile, primary or self.metric, summary, figures,
                                       tables)


def record_digest(f: Path) -> str | None:
    """sha256 of a record file (``None`` when it is missing): a record built on it keeps this, and the report uses
    it only while the file is unchanged."""
    return hashlib.sha256(Path(f).read_bytes()).hexdigest() if Path(f).is_file() else None


def _help_train(spec: dict, pairs: list, threads: int) -> None:
    """A ``side_by_side`` helper process: rebuild the notebook's setting and teacher, and train ``pairs`` (config
    dict, path folder or ``None``, seed) as the notebook's ``runs`` would, quietly."""
    import torch

    torch.set_num_threads(threads)
    ctx = setup(**spec, style=False)
    teacher, paths = ctx.teacher(), {}
    for cfg, path_dir, seed in pairs:
        if path_dir is not None and path_dir not in paths:
            paths[path_dir] = DegradationPath.load(path_dir)
        ctx.runs(teacher, DistillConfig.from_dict(cfg), [seed], paths.get(path_dir), progress=False)


def setup(profile: str, setting: str, results_root, runs_root, num_reference: int, num_eval: int,
          setting_options: dict, base_profile: str | None = None, style: bool = True, **setting_kwargs) -> Notebook:
    """The ``Notebook`` of these parameters: folders made, the setting loaded (``setting_options`` and
    ``setting_kwargs`` such as ``num_train`` go to ``load_setting``; what it trains to measure with is cached under
    ``runs/<profile>/<setting>/cache/``), the figure style set. With ``base_profile``, the teacher, path, shared runs
    and records of earlier notebooks are that profile's (``runs/<base_profile>/``, ``results/<base_profile>/``): run
    it first; results go to ``results/<profile>/``."""
    if style:
        plots.setup_style()
    spec = dict(profile=profile, setting=setting, results_root=str(results_root), runs_root=str(runs_root),
                num_reference=num_reference, num_eval=num_eval, setting_options=dict(setting_options),
                base_profile=base_profile, **setting_kwargs)
    paths, base = experiments.Paths.make(runs_root, results_root, profile, setting), None
    if base_profile:
        if base_profile == profile:
            raise ValueError(f"base_profile={base_profile!r}: a profile cannot build on itself (leave it None)")
        base = experiments.Paths.make(runs_root, results_root, base_profile, setting)
        if not base.runs.is_dir():
            raise FileNotFoundError(f"base_profile={base_profile!r}: {base.runs} is missing; run that profile first "
                                    f"(make reproduce PROFILE={base_profile})")
        paths = dataclasses.replace(paths, runs=base.runs)
    data = load_setting(setting, num_reference=num_reference, cache_dir=paths.runs / "cache", **setting_kwargs,
                        **setting_options)
    return Notebook(profile, paths, data, int(num_eval), base, spec)
