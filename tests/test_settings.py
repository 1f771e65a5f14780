"""The settings registry: every setting listed, a clear error for an unknown one, a new setting in one module,
no import cycle, and the paper settings' assets (missing ones named with what to do)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from disback import settings
from disback.checkpoint import ArtifactError, save_tensors, sha256_file, write_json
from disback.edm_pickle import CONVERTED_JSON, CONVERTED_WEIGHTS
from disback.networks.presets import edm_teacher_kwargs, random_edm_teacher
from disback.settings import Setting, available_settings, load_setting, register_setting

ROOT = Path(__file__).resolve().parents[1]


def test_registry_lists_every_setting():
    assert set(available_settings()) >= {"ring2d", "digits", "ffhq64", "afhqv2_64", "imagenet64"}


def test_unknown_setting_names_the_choices():
    with pytest.raises(ValueError) as e:
        load_setting("cifar10")
    assert "setting='cifar10': must be one of (" in str(e.value)
    assert all(repr(n) in str(e.value) for n in ("afhqv2_64", "digits", "ffhq64", "imagenet64", "ring2d"))


def test_a_new_setting_is_one_registered_builder():
    @register_setting("test_line")
    def build(num_train, num_reference, seed, slope=1.0):
        x = torch.linspace(-1, 1, num_train)[:, None] * torch.tensor([[1.0, slope]])
        return Setting("test_line", x, None, x[:num_reference], None, lambda s, _l: {"mean": float(s.mean())}, "mean")

    try:
        s = load_setting("test_line", num_train=10, num_reference=4, slope=2.0)
        assert s.data_shape == (2,) and s.label_dim == 0 and "test_line" in available_settings()
        with pytest.raises(ValueError, match="already registered"):
            register_setting("test_line")(lambda **kw: None)
    finally:
        settings._BUILDERS.pop("test_line")


def test_settings_module_does_not_import_any_setting_module():
    """No cycle: the registry imports digits (or the EDM settings) only when asked, and digits imports it first."""
    code = ("import sys, disback.settings as s\n"
            "assert 'disback.digits' not in sys.modules and 'disback.edm_settings' not in sys.modules\n"
            "s.load_setting('ring2d', num_train=8, num_reference=4)\n"
            "assert 'disback.digits' not in sys.modules\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for program in (code, "import disback.digits, disback.settings as s; assert 'digits' in s._BUILDERS"):
        res = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr


def test_paper_setting_without_assets_says_what_is_missing(tmp_path, monkeypatch):
    from disback.edm_settings import asset_paths, paper_asset_dir

    monkeypatch.setenv("DISBACK_ASSETS", str(tmp_path))
    assert paper_asset_dir() == tmp_path
    assert asset_paths("imagenet64")["fid_ref"] == tmp_path / "fid-refs" / "imagenet-64x64.npz"
    with pytest.raises(ArtifactError) as e:
        load_setting("imagenet64")
    msg = str(e.value)
    assert "make download" in msg and "fid-refs/imagenet-64x64.npz" in msg and "edm_teacher.json" in msg
    assert str(tmp_path) in msg
    with pytest.raises(ValueError, match="unknown option"):
        load_setting("ffhq64", tiny=True, colour=True)


@pytest.mark.parametrize("name, classes", [("ffhq64", 0), ("imagenet64", 1000)])
def test_tiny_paper_setting_runs_every_path_without_assets(name, classes):
    s = load_setting(name, tiny=True, resolution=8, num_reference=16)
    assert s.train is None and s.data_shape == (3, 8, 8) and s.label_dim == classes and s.primary == "fid"
    teacher = s.teacher_fn()
    from disback.generator import make_generator

    out = s.evaluate(make_generator(teacher, 2.5), 8)
    assert set(out) == {"fid"} and out["fid"] >= 0
    assert s.info["teacher_nfe"] == (511 if name == "imagenet64" else 79)


def test_load_teacher_reads_a_converted_edm_teacher(tmp_path):
    """teachers.load_teacher dispatches on the folder: a converted EDM teacher (edm_teacher.json) loads strictly."""
    from disback.teachers import load_teacher

    net = random_edm_teacher("ffhq64", "tiny", resolution=8, seed=3)
    kwargs = edm_teacher_kwargs("ffhq64", "tiny", 8)
    sha = save_tensors(tmp_path / CONVERTED_WEIGHTS, net.state_dict())
    write_json(tmp_path / CONVERTED_JSON, {"class_name": "EDMPrecond", "kwargs": kwargs, "sha256": sha,
                                           "source": {"file": "test", "sha256": sha256_file(tmp_path / CONVERTED_WEIGHTS)}})
    loaded = load_teacher(tmp_path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(loaded(x, torch.ones(2)), net(x, torch.ones(2)))


def test_paper_settings_read_the_layout_make_download_writes(tmp_path, monkeypatch):
    """Every path a paper setting reads is where disback.download puts it (one cache folder, one layout)."""
    from disback import download
    from disback.edm_settings import PAPER_ASSETS, asset_paths

    monkeypatch.setenv("DISBACK_ASSETS", str(tmp_path))
    for name in PAPER_ASSETS:
        p = asset_paths(name)
        assert p["teacher"] == download.teacher_dir(name) and p["fid_ref"] == download.fid_reference(name)
        assert p["inception"] == download.inception_weights()
        assert p["pickle"] in {download.asset_path(n) for n in download.load_manifest()}


def test_cache_dir_reaches_only_settings_that_train_something(tmp_path):
    """``load_setting(cache_dir=)``: digits keeps its classifier there (a second load reads it: same metric values,
    no retraining), ring2d trains nothing and ignores it; an explicit ``classifier_dir`` wins."""
    from disback.settings import load_setting

    load_setting("ring2d", num_train=100, num_reference=50, cache_dir=tmp_path / "ring")
    assert not (tmp_path / "ring").exists()
    a = load_setting("digits", num_reference=50, cache_dir=tmp_path / "cache")
    (saved,) = (tmp_path / "cache").glob("digits*/classifier.safetensors")
    stamp = saved.stat().st_mtime_ns
    b = load_setting("digits", num_reference=50, cache_dir=tmp_path / "cache")
    assert saved.stat().st_mtime_ns == stamp and a.info == b.info
    x = torch.rand(64, *a.data_shape) * 2 - 1
    assert a.metric_fn(x, None) == b.metric_fn(x, None)
    load_setting("digits", num_reference=50, cache_dir=tmp_path / "unused", classifier_dir=tmp_path / "own")
    assert list((tmp_path / "own").glob("digits*/classifier.json")) and not (tmp_path / "unused").exists()
