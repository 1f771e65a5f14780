"""pyproject.toml and environment.yml pin the same packages and versions."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    dev = set(extras["dev"]) - {"disback[t2i]"} | set(extras["t2i"])  # dev includes the text-to-image extra
    wanted = set(project["dependencies"]) | dev
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {p for p in pip if not p.startswith("-e")}
    assert listed == wanted, f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    assert "torch==2.14.1" in listed and "torchvision==0.29.1" in listed
