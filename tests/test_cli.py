"""The two command-line tools the Makefile calls: parameter validation and REPORT.md generation."""
import json

import pytest

from disback import params, report


def test_params_reject_unknown_key_wrong_type_and_bad_config_value(tmp_path):
    bad = {"bogus": 1, "num_eval": "x", "teacher": {"width": 0}, "setting": "ring2d"}
    problems = params.check("notebooks/01_teacher_setup.ipynb", bad)
    assert len(problems) == 3
    assert any("bogus: unknown parameter" in p for p in problems)
    assert any("num_eval='x'" in p for p in problems)
    assert any("TeacherConfig.width=0: must be > 0" in p for p in problems)
    assert params.check("notebooks/01_teacher_setup.ipynb", {"setting": "ring2d", "num_eval": 100}) == []
    f = tmp_path / "p.yaml"
    f.write_text("teacher: {depth: -1}\n")
    assert params.main(["notebooks/01_teacher_setup.ipynb", str(f)]) == 2


def test_report_reads_numbers_from_results(tmp_path):
    metrics = tmp_path / "results" / "cpu" / "metrics"
    metrics.mkdir(parents=True)
    run = {"mean": 0.123456, "std": 0.01, "min": 0.11, "max": 0.14, "n": 3, "per_seed": [0.11, 0.12, 0.14]}
    rec = {"notebook": "03_distribution_backtracking", "setting": "ring2d", "profile": "cpu", "status": "ok",
           "primary": "w2", "figures": [], "tables": [],
           "summary": {"initial": {"w2": 1.5}, "teacher": {"w2": 0.2}, "seeds": [0, 1, 2], "iters": 10,
                       "config": {"method": "diff_instruct"}, "methods": {"DisBack": {"w2": run}}}}
    (metrics / "03_distribution_backtracking__ring2d.json").write_text(json.dumps(rec))
    text = report.render(tmp_path / "results", "cpu", tmp_path)
    assert "0.1235 ± 0.01" in text and "| initial generator G0 | 1.5 |" in text
    assert "Pending: no results" in text  # notebooks 01 and 02 have none here
    with pytest.raises(SystemExit):
        report.main(["--help"])
