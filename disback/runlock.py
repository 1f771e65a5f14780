"""One writer per run folder: a stage that trains into a folder holds its lock until it returns.

The lock is ``filelock``'s OS lock (``flock`` on Linux and macOS) on ``<run_dir>/.lock``; the kernel drops it
when the holder exits or is killed, so a stale lock file from a killed process never blocks a rerun. The
holder's process id is written beside it in ``<run_dir>/.lock.pid``, only so that the refusal can name it.
Within one process the lock is re-entrant (``backtrack`` calls ``distill``, a notebook may nest stages).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE, PID_FILE = ".lock", ".lock.pid"


class RunFolderInUse(RuntimeError):
    """Another process is training into the same run folder."""


def _holder(run_dir: Path) -> str:
    """The process id the holder wrote, or ``unknown`` if it has not written it yet."""
    try:
        return (run_dir / PID_FILE).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def check_run_dir(run_dir, argument: str = "run_dir") -> Path:
    """``run_dir`` as a ``Path``: a folder, or a path where one can be made (not ``None``, not an existing file)."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"{argument}: must be a folder path (str or os.PathLike); got {type(run_dir).__name__}")
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{argument}={str(run_dir)!r}: is a file, not a folder; must be a folder (made if missing)")
    return run_dir


@contextlib.contextmanager
def run_lock(run_dir, wait: float = 0.0):
    """Hold ``run_dir``'s lock for the body. If another process holds it: raise ``RunFolderInUse`` at once, or with
    ``wait`` > 0 wait up to that many seconds for it first (notebooks sharing a run wait for the one training it)."""
    run_dir = check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE, is_singleton=True)  # one instance per path: re-entrant in a process
    outermost = not lock.is_locked
    try:
        lock.acquire(timeout=wait) if wait > 0 else lock.acquire(blocking=False)
    except Timeout:
        raise RunFolderInUse(f"{run_dir} is in use by process {_holder(run_dir)} (lock file {run_dir / LOCK_FILE}); "
                             f"wait for it or stop it") from None
    try:
        if outermost:
            (run_dir / PID_FILE).write_text(f"{os.getpid()}\n")
        yield
    finally:
        if outermost:
            (run_dir / PID_FILE).unlink(missing_ok=True)
        lock.release()


def locks_run_dir(fn):
    """Decorate a stage whose ``run_dir`` argument names its folder: the call holds that folder's lock (in a parallel
    run, the main process holds it for all: the others write nothing there)."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .parallel import is_main  # here, so that run_lock works in a file loaded on its own

        try:
            run_dir = signature.bind(*args, **kwargs).arguments.get("run_dir")
        except TypeError as e:  # name the function: bind's message alone does not ("got an unexpected keyword ...")
            raise TypeError(f"{fn.__name__}(): {e}") from None
        if run_dir is None or not is_main():
            return fn(*args, **kwargs)
        with run_lock(run_dir):
            return fn(*args, **kwargs)
    return wrapper
