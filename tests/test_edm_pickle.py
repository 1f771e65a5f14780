"""Safe loading of EDM pickles: a tiny pickle in EDM's persistent-object wire format loads into our network
and reproduces the stand-in's outputs; hostile pickles are refused before anything runs."""
import importlib.util
import os
import pickle
import sys
import textwrap

import numpy as np
import pytest
import torch

from disback.__main__ import main
from disback.checkpoint import ArtifactError
from disback.edm_pickle import (CONVERTED_JSON, EDMPickleError, convert_teacher, load_converted_teacher,
                                network_from_pickle)
from disback.networks import EDMDenoiser, VPDenoiser

# The stand-in of EDM's torch_utils.persistence: the same wire format (a reduce to _reconstruct_persistent_obj
# with meta = type, version, module_src, class_name, state). Loading must never need it.
PERSISTENCE_SRC = textwrap.dedent('''
    def _reconstruct_persistent_obj(meta):
        raise RuntimeError("the stand-in persistence module was called while loading")

    def make_persistent(obj, class_name, module_src, init_kwargs=None):
        """Pickle ``obj`` as EDM does: its class name, the module source and its __dict__ as state."""
        def reduce(self):
            state = dict(self.__dict__, _init_args=(), _init_kwargs=init_kwargs)
            meta = dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)
            return _reconstruct_persistent_obj, (meta,), None
        obj.__class__ = type(class_name, (type(obj),), {"__reduce__": reduce})
        return obj
''')
DNNLIB_SRC = "class EasyDict(dict):\n    pass\n"
EDM_NAMES = {"EDMDenoiser": "EDMPrecond", "VPDenoiser": "VPPrecond"}


@pytest.fixture
def standin(tmp_path):
    """Import stand-in ``torch_utils.persistence`` and ``dnnlib.util`` from a temp dir; removed again after use."""
    root = tmp_path / "standin"
    for pkg, src in (("torch_utils", PERSISTENCE_SRC), ("dnnlib", DNNLIB_SRC)):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text("")
        (root / pkg / ("persistence.py" if pkg == "torch_utils" else "util.py")).write_text(src)
    sys.path.insert(0, str(root))
    import dnnlib.util
    import torch_utils.persistence

    def remove():
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] in ("torch_utils", "dnnlib")]:
            del sys.modules[name]
        assert importlib.util.find_spec("torch_utils") is None

    yield torch_utils.persistence, dnnlib.util, remove
    if str(root) in sys.path:
        remove()


def _write_edm_pickle(path, net, kwargs, persistence, dnnlib_util, marker, class_names=None):
    """Write ``net`` as EDM's training loop does: {ema, loss_fn, augment_pipe, dataset_kwargs}, every layer persistent."""
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('module_src was executed')\n"
    for m in list(net.modules()):
        name = (class_names or {}).get(type(m).__name__, EDM_NAMES.get(type(m).__name__, type(m).__name__))
        if type(m).__module__.startswith("disback"):
            persistence.make_persistent(m, name, src, kwargs if m is net else {})
    loss = persistence.make_persistent(torch.nn.Module(), "EDMLoss", src, {"P_mean": -1.2})
    data = {"ema": net, "loss_fn": loss, "augment_pipe": None,
            "dataset_kwargs": dnnlib_util.EasyDict(path="ffhq-64x64.zip", xflip=np.float64(1.0))}
    path.write_bytes(pickle.dumps(data))


def _tiny_song(**extra):
    torch.manual_seed(0)
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="SongUNet", model_channels=8,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], augment_dim=9, dropout=np.float64(0.05),
                  **extra)
    return EDMDenoiser(**kwargs).eval(), {k: (float(v) if isinstance(v, np.floating) else v) for k, v in kwargs.items()}


def test_tiny_edm_pickle_loads_without_its_code_and_reproduces_outputs(tmp_path, standin):
    persistence, dnnlib_util, remove = standin
    torch.manual_seed(1)
    x, sigma = torch.randn(3, 3, 8, 8), torch.tensor([0.02, 1.0, 40.0])
    marker = tmp_path / "marker"
    cases = [(*_tiny_song(), None)]
    torch.manual_seed(2)
    adm_kwargs = dict(img_resolution=8, img_channels=3, label_dim=5, model_type="DhariwalUNet", model_channels=8,
                      channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0.1)
    cases.append((VPDenoiser(**adm_kwargs).eval(), adm_kwargs, torch.tensor([0, 4, 2])))
    expected, files = [], []
    for i, (net, kwargs, labels) in enumerate(cases):
        with torch.no_grad():
            expected.append(net(x, sigma, labels))
        files.append(tmp_path / f"net{i}.pkl")
        _write_edm_pickle(files[-1], net, kwargs, persistence, dnnlib_util, marker)
    remove()  # from here on, nothing named torch_utils or dnnlib can be imported

    for path, want, (_, kwargs, labels) in zip(files, expected, cases):
        net, class_name, read_kwargs = network_from_pickle(path)
        assert read_kwargs == kwargs
        assert class_name == ("EDMPrecond" if labels is None else "VPPrecond")
        with torch.no_grad():
            assert torch.equal(net(x, sigma, labels), want)
    assert not marker.exists()
    assert "torch_utils" not in sys.modules


def test_convert_teacher_writes_safetensors_and_json_that_load_alone(tmp_path, standin, capsys):
    persistence, dnnlib_util, remove = standin
    net, kwargs = _tiny_song()
    _write_edm_pickle(tmp_path / "t.pkl", net, kwargs, persistence, dnnlib_util, tmp_path / "marker")
    remove()
    assert main(["convert-teacher", str(tmp_path / "t.pkl"), str(tmp_path / "out")]) == 0
    assert "EDMPrecond with SongUNet" in capsys.readouterr().out
    (tmp_path / "t.pkl").unlink()  # later runs read only the converted files
    teacher = load_converted_teacher(tmp_path / "out")
    assert teacher.data_shape == (3, 8, 8) and teacher.label_dim == 0 and teacher.sigma_data == 0.5
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(teacher(x, 2.0), net(x, 2.0))
    meta = (tmp_path / "out" / CONVERTED_JSON).read_text()
    assert '"source"' in meta and '"sha256"' in meta
    # A converted file that no longer fits its JSON is refused.
    convert = tmp_path / "out" / "edm_teacher.safetensors"
    convert.write_bytes(convert.read_bytes()[:-8])
    with pytest.raises(ArtifactError, match="sha256"):
        load_converted_teacher(tmp_path / "out")


class _SystemCall:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _refusal(path) -> str:
    with pytest.raises(EDMPickleError) as info:
        network_from_pickle(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_hostile_pickles_are_refused_without_running_anything(tmp_path, standin, capsys):
    persistence, dnnlib_util, remove = standin
    marker = tmp_path / "marker"
    # 1. A reduce that calls os.system.
    (tmp_path / "system.pkl").write_bytes(pickle.dumps({"ema": _SystemCall(marker)}))
    # 2. A persistent object of a class we do not know.
    net, kwargs = _tiny_song()
    _write_edm_pickle(tmp_path / "unknown.pkl", net, kwargs, persistence, dnnlib_util, marker, {"Conv2d": "EvilConv"})
    # 3. A global outside the allow-list (a torch module pickled as itself).
    (tmp_path / "global.pkl").write_bytes(pickle.dumps({"ema": torch.nn.Linear(2, 2)}))
    # 4. A truncated file.
    net, kwargs = _tiny_song()
    _write_edm_pickle(tmp_path / "good.pkl", net, kwargs, persistence, dnnlib_util, marker)
    good = (tmp_path / "good.pkl").read_bytes()
    (tmp_path / "truncated.pkl").write_bytes(good[:len(good) // 2])
    remove()

    assert "global 'posix.system' is not in the allow-list" in _refusal(tmp_path / "system.pkl")
    assert "unknown class 'EvilConv'" in _refusal(tmp_path / "unknown.pkl")
    assert "global 'torch.nn.modules.linear.Linear' is not in the allow-list" in _refusal(tmp_path / "global.pkl")
    assert "not a complete EDM pickle (truncated or corrupt)" in _refusal(tmp_path / "truncated.pkl")
    assert not marker.exists()
    # The CLI reports the refusal in one line and exits 2.
    assert main(["convert-teacher", str(tmp_path / "system.pkl"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "posix.system" in err and not (tmp_path / "out").exists()
