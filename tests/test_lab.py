"""JupyterLab as a way in: the server starts headless on the repo, serves a notebook and offers the `disback` kernel."""
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_teacher_setup.ipynb"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 at a free port with a random token; config and runtime files in tmp_path."""
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed (it is in the dev extras: make setup)")
    port, token = _free_port(), secrets.token_hex(16)
    home = tmp_path / "home"
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / "config"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "IPYTHONDIR": str(home / "ipython")}
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                             f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}", "--MappingKernelManager.default_kernel_name=disback",
                             f"--ServerApp.root_dir={ROOT}", *(["--allow-root"] if os.geteuid() == 0 else [])],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(f"{base}/api/status", token)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer on {base} within 90 s (exit {proc.poll()}):\n"
                                + (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_lab_serves_a_notebook_and_the_disback_kernel(lab):
    """JupyterLab started as `make lab` does serves notebooks/01_teacher_setup.ipynb, default kernel `disback`."""
    base, token = lab
    nb = _get(f"{base}/api/contents/{NOTEBOOK}", token)
    assert nb["type"] == "notebook" and nb["content"]["nbformat"] == 4
    assert any("parameters" in c["metadata"].get("tags", []) for c in nb["content"]["cells"])
    specs = _get(f"{base}/api/kernelspecs", token)
    kernels = specs["kernelspecs"]
    assert "disback" in kernels, f"no `disback` kernel (make setup installs it); found {sorted(kernels)}"
    assert specs["default"] == "disback" and "disback" in kernels["disback"]["spec"]["display_name"]
    page = urllib.request.urlopen(urllib.request.Request(f"{base}/lab", headers={"Authorization": f"token {token}"}),
                                  timeout=10).read().decode()
    assert re.search(r"<title>JupyterLab</title>", page)


def test_make_help_lists_every_target():
    """A bare `make` prints the targets, one line each, and every phony target of the Makefile is among them."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    out = subprocess.run([make, "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    listed = {line.split()[1] for line in out.stdout.splitlines() if line.startswith("make ")}
    missing = {t for t in phony if "%" not in t and t != "help"} - listed
    assert not missing, f"`make help` does not list: {sorted(missing)}"
