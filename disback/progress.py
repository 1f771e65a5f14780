"""Progress for people: tqdm bars in a terminal or notebook, or, under ``make reproduce``, lines in a log file.

When ``DISBACK_PROGRESS_LOG`` names a file (the Makefile sets it for the notebooks it runs under papermill),
bars are off and a line per finished run (with elapsed and estimated remaining time) goes to that file, which
the Makefile shows at the terminal; the executed notebooks keep no progress-bar frames and no widget warnings.
Otherwise bars are ``tqdm.auto`` bars as usual.
"""
from __future__ import annotations

import os
import time

from tqdm import tqdm

ENV = "DISBACK_PROGRESS_LOG"


def _log_file():
    name = os.environ.get(ENV)
    return open(name, "a", buffering=1) if name else None


def bar(iterable=None, disable: bool = False, **kwargs):
    """A tqdm.auto progress bar over ``iterable``; silent when a progress log is set (``make reproduce`` notes each
    finished run there instead, so parallel notebooks do not interleave bars)."""
    if os.environ.get(ENV):
        return tqdm(iterable, disable=True, **kwargs)
    from tqdm.auto import tqdm as auto_tqdm  # imported here: in a kernel without widgets it warns on import

    return auto_tqdm(iterable, disable=disable, **kwargs)


def note(message: str) -> None:
    """One line in the progress log (when set), prefixed with the notebook label the Makefile gives."""
    f = _log_file()
    if f is not None:
        with f:
            f.write(f"{time.strftime('%H:%M:%S')} {os.environ.get('DISBACK_PROGRESS_LABEL', '')} {message}\n")


class RunCounter:
    """Counts runs done in one notebook step and notes each with elapsed and estimated remaining time."""

    def __init__(self, total: int, what: str):
        self.total, self.what, self.done, self.start = int(total), what, 0, time.time()

    def step(self, label: str) -> None:
        self.done += 1
        elapsed = time.time() - self.start
        left = elapsed / self.done * (self.total - self.done)
        note(f"{self.what}: run {self.done}/{self.total} ({label}) done; elapsed {elapsed / 60:.1f} min, "
             f"about {left / 60:.1f} min left")
