"""Notebooks as papermill runs them: same seed and profile give identical metrics."""
import json
from pathlib import Path

import papermill as pm
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _without_timings(obj):
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    return obj


@pytest.mark.parametrize("notebook", ["01_teacher_setup"])
def test_smoke_notebook_is_deterministic(notebook, tmp_path):
    """Running a smoke notebook twice with the same parameters writes identical metrics JSON (timings aside)."""
    records = []
    for run in ("a", "b"):
        params = {"profile": "smoke", "results_root": str(tmp_path / run / "results"),
                  "runs_root": str(tmp_path / run / "runs"), "teacher": {"width": 16, "depth": 1, "iters": 30},
                  "num_eval": 200, "num_train": 1000, "num_reference": 200}
        pm.execute_notebook(str(ROOT / "notebooks" / f"{notebook}.ipynb"), str(tmp_path / f"{run}.ipynb"),
                            parameters=params, kernel_name="disback", cwd=str(ROOT / "notebooks"),
                            progress_bar=False)
        f = tmp_path / run / "results" / "smoke" / "metrics" / f"{notebook}__ring2d.json"
        records.append(_without_timings(json.loads(f.read_text())))
    assert records[0] == records[1]
    assert records[0]["summary"]["teacher"]["w2"] > 0
