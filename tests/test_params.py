"""Papermill parameter files are checked against the notebook's parameters cell before any compute."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from disback import params

PARAMETERS_CELL = '''\
profile = "smoke"          # scale
num_eval = 500             # samples per evaluation
sigma_max = 20.0           # starting sigma
use_ema = True             # report the EMA generator
seeds = [0, 1]             # one run per seed
setting_options = {}       # extra options of load_setting
checkpoint = None          # anything goes
steps: int = 18            # annotated
teacher_config = {"width": 32, "depth": 1, "iters": 200}
degrade_config = {"iters": 60, "num_nodes": 4}
distill_config = {"iters": 60, "iters_per_node": 10}
'''


@pytest.fixture
def notebook(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A notebook"),
                nbformat.v4.new_code_cell(PARAMETERS_CELL, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(num_eval)")]
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Python 3"}
    f = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(f))
    return f


def run_cli(notebook, tmp_path, text: str, capsys=None):
    """Run the CLI on ``text`` as a YAML file: in-process through ``main`` with ``capsys``, else as a subprocess."""
    f = tmp_path / "p.yaml"
    f.write_text(text)
    if capsys is None:
        return subprocess.run([sys.executable, "-m", "disback.params", str(notebook), str(f)], capture_output=True,
                              text=True)
    code = params.main([str(notebook), str(f)])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess([], code, out, err)


def test_valid_file_passes_silently(notebook, tmp_path, capsys):
    """A file using every kind of parameter correctly exits 0 with no output."""
    out = run_cli(notebook, tmp_path, "profile: cpu\nnum_eval: 1000\nsigma_max: 40\nuse_ema: false\nseeds: [0, 1, 2]\n"
                                      "setting_options: {std: 0.2}\ncheckpoint: runs/x\nsteps: 40\n"
                                      "teacher_config: {width: 128, lr: 0.002}\ndegrade_config: {iters: 400, spacing: early}\n"
                                      "distill_config: {method: sid, backtrack: true}\n", capsys)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert run_cli(notebook, tmp_path, "", capsys).returncode == 0  # an empty file means the notebook's defaults


# (yaml line, the one message expected for it)
BAD = [
    ("bogus: 1", "bogus: unknown parameter; "),
    ("num_eval: 1000.0", "num_eval=1000.0: must be of type int like the default 500"),
    ("num_eval: true", "num_eval=True: must be of type int like the default 500"),
    ("sigma_max: fast", "sigma_max='fast': must be of type float like the default 20.0"),
    ("sigma_max: 1e-4", "sigma_max='1e-4': must be of type float like the default 20.0 (YAML reads 1e-4 as a string"),
    ("profile: 3", "profile=3: must be of type str like the default \"smoke\""),
    ("use_ema: 1", "use_ema=1: must be of type bool like the default True"),
    ("seeds: 3", "seeds=3: must be of type list like the default [0, 1]"),
    ("setting_options: [1]", "setting_options=[1]: must be of type dict like the default {}"),
    ("steps: 1.5", "steps=1.5: must be of type int like the default 18"),
    ("teacher_config: 32", "teacher_config=32: must be of type dict"),
    ("teacher_config: {widht: 32}", "teacher_config: TeacherConfig: unknown key(s) ['widht']; allowed keys are"),
    ("teacher_config: {lr: 1e-3}", "teacher_config: TeacherConfig.lr='1e-3': must be of type float (YAML reads 1e-3 as a string"),
    ("degrade_config: {iters: 10, num_nodes: 50}", "degrade_config: DegradeConfig.num_nodes=50: must be <= iters (10)"),
    ("degrade_config: {sigma_init: -2.5}", "degrade_config: DegradeConfig.sigma_init=-2.5: must be > 0"),
    ("distill_config: {method: gan}", "distill_config: DistillConfig.method='gan': must be one of ('diff_instruct', 'dmd'"),
    ("distill_config: {batch: 0}", "distill_config: DistillConfig.batch=0: must be > 0"),
]


@pytest.mark.parametrize("line, message", BAD, ids=[b[0] for b in BAD])
def test_each_bad_parameter_gives_one_message(notebook, tmp_path, line, message):
    """Each unknown key, wrong type or bad config value gives exactly one stderr line naming it, and exit code 2."""
    f = tmp_path / "p.yaml"
    f.write_text(line + "\n")
    problems = params.check_files(notebook, f)
    assert len(problems) == 1 and problems[0].startswith(f"{f}: {message}"), problems


def test_cli_reports_every_problem_and_exits_2(notebook, tmp_path):
    """`python -m disback.params` prints one stderr line per problem, all of them, and exits 2."""
    out = run_cli(notebook, tmp_path, "bogus: 1\nnum_eval: x\nteacher_config: {width: 0}\nprofile: cpu\n")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and out.stdout == "" and len(lines) == 3, out.stderr
    assert "bogus: unknown" in lines[0] and "num_eval='x'" in lines[1] and "TeacherConfig.width=0" in lines[2]


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "must be a mapping of parameter names to values; got list"),
    ("a: [1\n", "not valid YAML"),
])
def test_malformed_file_is_refused(notebook, tmp_path, text, message, capsys):
    """A YAML list or broken YAML is one clear message, not a traceback."""
    out = run_cli(notebook, tmp_path, text, capsys)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_missing_files_and_parameterless_notebook(notebook, tmp_path):
    """A missing notebook or parameter file, or a notebook without a parameters cell, is named in one message."""
    f = tmp_path / "p.yaml"
    f.write_text("num_eval: 3\n")
    assert params.check_files(tmp_path / "none.ipynb", f) == [f"{tmp_path / 'none.ipynb'}: no such notebook"]
    assert params.check_files(notebook, tmp_path / "none.yaml") == [f"{tmp_path / 'none.yaml'}: no such parameter file"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1")]
    plain = tmp_path / "plain.ipynb"
    nbformat.write(nb, str(plain))
    assert params.check_files(plain, f) == [f"{f}: {plain} has no cell tagged 'parameters'; it takes no parameters"]


def test_repository_parameter_files_are_valid():
    """Every pinned params/<profile>/<notebook>__<setting>.yaml passes against its notebook."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    files = sorted(root.glob("params/*/*.yaml"))
    assert files
    for f in files:
        nb = root / "notebooks" / f"{f.stem.split('__')[0]}.ipynb"
        if nb.is_file():
            assert params.check_files(nb, f) == [], f


def test_unparseable_parameter_line_is_reported(tmp_path):
    """papermill skips a parameters-cell line whose comment holds '='; the validator names it instead."""
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    cell = nbformat.v4.new_code_cell("a = 1  # fine\nb = 2  # b = twice a\n")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, str(path))
    problems = params.check(path, {"a": 3})
    assert len(problems) == 1 and "'b'" in problems[0] and "cannot parse" in problems[0]


# ---------------------------------------------------------------- disback.run_notebook: check, execute, scrub, move

def test_run_notebook_checks_executes_scrubs_and_only_then_writes(notebook, tmp_path, capsys):
    """One process does what `make reproduce` needs per notebook: a bad parameter file stops before any kernel
    starts (one line per problem, nothing written); a good one runs with the profile injected, the executed copy
    lands at OUT without machine paths; a failing cell returns 1 naming the cell and leaves no OUT."""
    from disback import run_notebook

    out, bad = tmp_path / "out" / "nb.ipynb", tmp_path / "bad.yaml"
    bad.write_text("num_evals: 3\n")
    with pytest.raises(SystemExit, match="num_evals: unknown parameter"):
        run_notebook.run(notebook, bad, out, "smoke", cwd=tmp_path)
    assert not out.exists()

    nb = nbformat.read(str(notebook), as_version=4)
    repo = str(Path(run_notebook.__file__).resolve().parents[1])
    nb.cells.append(nbformat.v4.new_code_cell("import pathlib, disback\n"
                                              "print(pathlib.Path(disback.__file__).resolve().parents[1], profile)"))
    nbformat.write(nb, str(notebook))
    good = tmp_path / "good.yaml"
    good.write_text("num_eval: 7\n")
    assert run_notebook.main([str(notebook), str(good), str(out), "--profile", "cpu", "--cwd", str(tmp_path)]) == 0
    text = out.read_text()
    outputs = "".join("".join(o.get("text", "")) for c in json.loads(text)["cells"] for o in c.get("outputs", []))
    assert "7\n" in outputs and "<repo> cpu" in outputs and repo not in text
    assert not list(out.parent.glob(".*.tmp.ipynb"))

    nb.cells.append(nbformat.v4.new_code_cell("raise RuntimeError('boom')"))
    nbformat.write(nb, str(notebook))
    out.unlink()
    assert run_notebook.main([str(notebook), str(good), str(out), "--profile", "cpu", "--cwd", str(tmp_path)]) == 1
    assert "RuntimeError: boom" in capsys.readouterr().err and not out.exists()
