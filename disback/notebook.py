"""A notebook's setup from its parameters, and what every notebook then asks of it.

``setup`` turns the parameters every notebook shares (profile, setting, where results and runs go, the reference
and evaluation sizes) into one ``Notebook``: its folders, its setting, the figure style. The notebook then loads
the stage outputs, reads the records of the notebooks before it, trains shared runs, and saves its tables,
figures and record through it; ``Timer`` measures the ``*_seconds`` a record keeps.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
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
    paths: experiments.Paths    # where this profile and setting keeps runs and results
    data: Setting               # the setting's data, reference set and metrics
    num_eval: int               # generated samples per metric evaluation

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
        """The summary of the record ``notebook`` wrote for this profile and setting (run it first)."""
        return experiments.read_record(self.paths, notebook)["summary"]

    def teacher_metric(self) -> float:
        """The teacher's headline metric (notebook 01's record)."""
        return self.record("01_teacher_setup")["teacher"][self.metric]

    def threshold(self, factor: float) -> float:
        """A quality threshold: ``factor`` times the teacher's headline metric."""
        return factor * self.teacher_metric()

    def runs(self, teacher, config: DistillConfig, seeds, path: DegradationPath | None = None, **kwargs) -> list:
        """``experiments.shared_runs`` of ``config`` on this setting: per-seed results, trained or reused."""
        return experiments.shared_runs(self.paths, teacher, self.data, config, seeds, self.num_eval, path, **kwargs)

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
        return experiments.save_record(self.paths, notebook, self.profile, primary or self.metric, summary, figures,
                                       tables)


def setup(profile: str, setting: str, results_root, runs_root, num_reference: int, num_eval: int,
          setting_options: dict, **setting_kwargs) -> Notebook:
    """The ``Notebook`` of these parameters: folders made, the setting loaded (``setting_options`` and
    ``setting_kwargs`` such as ``num_train`` go to ``load_setting``; what it trains to measure with is cached under
    ``runs/<profile>/<setting>/cache/``), the figure style set."""
    plots.setup_style()
    paths = experiments.Paths.make(runs_root, results_root, profile, setting)
    data = load_setting(setting, num_reference=num_reference, cache_dir=paths.runs / "cache", **setting_kwargs,
                        **setting_options)
    return Notebook(profile, paths, data, int(num_eval))
