"""Notebooks as papermill runs them: same seed and profile give identical metrics."""
import json
import sys
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
                  "runs_root": str(tmp_path / run / "runs"), "teacher_config": {"width": 16, "depth": 1, "iters": 30},
                  "num_eval": 200, "num_train": 1000, "num_reference": 200}
        pm.execute_notebook(str(ROOT / "notebooks" / f"{notebook}.ipynb"), str(tmp_path / f"{run}.ipynb"),
                            parameters=params, kernel_name="disback", cwd=str(ROOT / "notebooks"),
                            progress_bar=False)
        f = tmp_path / run / "results" / "smoke" / "metrics" / f"{notebook}__ring2d.json"
        records.append(_without_timings(json.loads(f.read_text())))
    assert records[0] == records[1]
    assert records[0]["summary"]["teacher"]["w2"] > 0


DIGITS_TINY = {  # every notebook on the digits setting through its parameters only, at a scale of seconds
    "01_teacher_setup": {"teacher_config": {"arch": "unet", "width": 8, "depth": 1, "iters": 20, "batch": 32},
                         "sampler_steps": 4, "sigma_max": 80.0},
    "02_degradation_recording": {"degrade_config": {"iters": 6, "num_nodes": 2, "batch": 16}, "sampler_steps": 4},
    "03_distribution_backtracking": {"distill_config": {"iters": 6, "batch": 16, "eval_every": 3, "snapshot_every": 3},
                                     "baseline_grid": {"lr_gen": [0.0002]}, "disback_grid": {"lr_gen": [0.0002], "share": [0.5]},
                                     "seeds": [0, 1], "snapshot_steps": [0, 6]},
    "04_baselines": {"methods": ["diff_instruct", "sid"], "seeds": [0, 1]},
    "05_ablation_nodes": {"shares": [0.5], "node_counts": {"diff_instruct": [2]}, "extra_rows": ["fitted"],
                          "seeds": [0, 1]},
    "06_score_mismatch": {"iters": 6, "eval_every": 3, "seeds": [0, 1], "num_probe": 50},
}
REPO_PATHS = (str(ROOT), sys.prefix, str(Path.home()))


def _check_clean(notebook: Path) -> None:
    """An executed notebook a reader can trust and diff: no path of this machine, no widget warning, no bar frames."""
    text = notebook.read_text()
    for path in REPO_PATHS:
        assert path not in text, f"{notebook.name} holds the machine path {path}"
    assert "IProgress" not in text and "TqdmWarning" not in text, notebook.name
    stderr = [o for c in json.loads(text)["cells"] for o in c.get("outputs", []) if o.get("name") == "stderr"]
    assert len(stderr) <= 3, f"{notebook.name}: {len(stderr)} stderr outputs"


def test_every_notebook_runs_on_digits_through_parameters(tmp_path, monkeypatch):
    """Notebooks 01-06 run on the class-conditional digits setting with parameters only (no notebook copies),
    each writes its metrics record with the setting's primary metric, FID, and, run as `make reproduce` runs them
    (`disback.run_notebook`: parameters checked, progress to a log, paths scrubbed), each executed notebook is
    clean: no machine path, no widget warning, at most a handful of stderr outputs; the log names every run, and the
    digits classifier is trained once into the runs' cache and loaded by the notebooks after the first."""
    import yaml

    from disback.run_notebook import run

    log = tmp_path / "progress.log"
    monkeypatch.setenv("DISBACK_PROGRESS_LOG", str(log))
    common = {"setting": "digits", "results_root": str(tmp_path / "results"),
              "runs_root": str(tmp_path / "runs"), "num_eval": 100, "num_reference": 100}  # classifier: runs/.../cache
    for notebook, params in DIGITS_TINY.items():
        (tmp_path / f"{notebook}.yaml").write_text(yaml.safe_dump({**common, **params}))
        run(ROOT / "notebooks" / f"{notebook}.ipynb", tmp_path / f"{notebook}.yaml", tmp_path / f"{notebook}.ipynb",
            "smoke", cwd=ROOT / "notebooks")
        _check_clean(tmp_path / f"{notebook}.ipynb")
        record = json.loads((tmp_path / "results" / "smoke" / "metrics" / f"{notebook}__digits.json").read_text())
        assert record["status"] == "ok" and record["setting"] == "digits", notebook
        assert record["figures"] and all((tmp_path / "results" / "smoke" / f).is_file() for f in record["figures"])
    teacher = json.loads((tmp_path / "results" / "smoke" / "metrics" / "01_teacher_setup__digits.json").read_text())
    assert teacher["primary"] == "fid" and teacher["summary"]["teacher"]["fid"] > 0
    assert "run 2/2 (seed 1) done" in log.read_text()
    assert len(list((tmp_path / "runs" / "smoke" / "digits" / "cache").glob("digits*/classifier.json"))) == 1
    # A profile built on this one (as cpu_extra on cpu): notebook 04 with a method more, two processes side by side
    # inside the kernel; it writes its own results only, keeps what it was built on, and adds no runs folder.
    extra = {**common, **DIGITS_TINY["04_baselines"], "methods": ["diff_instruct", "sid", "dmd"],
             "base_profile": "smoke", "jobs": 2}
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
    run(ROOT / "notebooks" / "04_baselines.ipynb", tmp_path / "extra.yaml", tmp_path / "extra.ipynb", "smoke_extra",
        cwd=ROOT / "notebooks")
    record = json.loads((tmp_path / "results" / "smoke_extra" / "metrics" / "04_baselines__digits.json").read_text())
    assert set(record["summary"]["methods"]) == {"diff_instruct", "sid", "dmd"}
    assert record["summary"]["base_profile"] == "smoke"
    assert set(record["summary"]["base_records"]) == {"01_teacher_setup", "03_distribution_backtracking"}
    assert not (tmp_path / "runs" / "smoke_extra").exists()
    assert "helper process ended" not in (tmp_path / "extra.ipynb").read_text()  # no helper failed (it warns)
    # Notebook 05 built on it too, with DMD2's options on every arm of its grid (baseline, control, DisBack).
    extra = {**common, **DIGITS_TINY["05_ablation_nodes"], "node_counts": {"dmd2": [2]}, "extra_rows": [],
             "method_options": {"dmd2": {"fake_steps": 2}}, "base_profile": "smoke"}
    (tmp_path / "extra05.yaml").write_text(yaml.safe_dump(extra))
    run(ROOT / "notebooks" / "05_ablation_nodes.ipynb", tmp_path / "extra05.yaml", tmp_path / "extra05.ipynb",
        "smoke_extra", cwd=ROOT / "notebooks")
    record = json.loads((tmp_path / "results" / "smoke_extra" / "metrics" / "05_ablation_nodes__digits.json")
                        .read_text())
    assert {v["group"] for v in record["summary"]["variants"]} == {"baseline", "control", "N=2"}
    keys = [json.loads(f.read_text())["config"]
            for f in (tmp_path / "runs" / "smoke").glob("digits/distill/dmd2*/key.json")]
    assert len(keys) == 3 and all(k["fake_steps"] == 2 for k in keys)


def test_notebook_setup_gives_folders_setting_records_and_outputs(tmp_path, capsys):
    """``notebook.setup``: the folders and setting a notebook's parameters name; records round-trip through it,
    a threshold is a factor of the teacher's metric, tables are saved and shown, and the timer counts up."""
    from disback import notebook

    ctx = notebook.setup("smoke", "ring2d", tmp_path / "results", tmp_path / "runs", 100, 50, {"std": 0.3},
                         num_train=200)
    assert ctx.metric == "w2" and ctx.num_eval == 50 and ctx.data.info["std"] == 0.3
    assert tuple(ctx.data.train.shape) == (200, 2) and tuple(ctx.data.reference.shape) == (100, 2)
    assert all((tmp_path / "results" / "smoke" / sub).is_dir() for sub in ("metrics", "tables", "figures"))
    ctx.save_record("01_teacher_setup", {"teacher": {"w2": 0.2}})
    assert ctx.record("01_teacher_setup") == {"teacher": {"w2": 0.2}}
    assert ctx.threshold(1.5) == pytest.approx(0.3)
    csv, md = ctx.table([{"a": 1, "b": 0.5}], "00_test")
    assert csv.read_text().splitlines() == ["a,b", "1,0.5"] and md.read_text() in capsys.readouterr().out
    timer = notebook.Timer()
    assert 0 <= timer.seconds() < 60
