"""Safe loading of NVIDIA's EDM network pickles, and the converted teachers every later run loads.

An EDM pickle (``edm-ffhq-64x64-uncond-vp.pkl`` ...) is ``pickle.dump`` of a dict whose ``"ema"`` entry is a
"persistent" object: ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta`` = {type: "class",
version, module_src (the Python source of the defining module), class_name, state (the object's __dict__)}.
Unpickling it normally executes ``module_src``. Our ``RestrictedUnpickler`` never executes anything from the
file: each global it meets must be on a short allow-list, where it maps to an inert function of ours
(a persistent object becomes a record of class name and state; tensors are rebuilt by torch's own
weights-only loader). We then read the constructor arguments and tensors, build ``networks.edm_precond``'s
denoiser and load strictly. ``convert_teacher`` does this once and writes safetensors plus a JSON.
"""
from __future__ import annotations

import inspect
import io
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checkpoint import ArtifactError, load_module, load_tensors, read_json, save_tensors, sha256_file, write_json
from .networks.edm_precond import PRECONDITIONERS, build_edm_denoiser

NETWORK_CLASSES = ("EDMPrecond", "VPPrecond", "SongUNet", "DhariwalUNet", "UNetBlock", "Conv2d", "Linear", "GroupNorm",
                   "PositionalEmbedding")
OTHER_CLASSES = ("EDMLoss", "VPLoss", "VELoss", "AugmentPipe")  # stored beside the network in training snapshots
CONTAINERS = ("ModuleDict", "ModuleList", "Sequential")
CONVERTED_JSON, CONVERTED_WEIGHTS = "edm_teacher.json", "edm_teacher.safetensors"


class EDMPickleError(ArtifactError):
    """An EDM pickle holds something the restricted unpickler refuses, or is not a complete pickle."""


# ---------------------------------------------------------------- inert stand-ins for the allowed globals

class PersistentObject:
    """What a persistent EDM object becomes: its class name, its state (``__dict__``) and its version."""

    def __init__(self, class_name: str, state: dict, version):
        self.class_name, self.state, self.version = class_name, state, version

    def __setstate__(self, state):
        raise EDMPickleError(f"persistent object {self.class_name!r} carries extra state (not EDM's wire format)")


def _reconstruct_persistent_obj(meta) -> PersistentObject:
    """Stand-in for ``torch_utils.persistence._reconstruct_persistent_obj``: reads meta, never runs module_src."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str) \
            or not isinstance(meta.get("state"), dict) or not isinstance(meta.get("module_src"), str):
        raise EDMPickleError(f"persistent object with meta keys {sorted(meta) if isinstance(meta, dict) else meta!r}: "
                             "not EDM's wire format (type='class', class_name, module_src, state)")
    name = meta["class_name"]
    if name not in NETWORK_CLASSES + OTHER_CLASSES:
        raise EDMPickleError(f"unknown class {name!r} (known: {', '.join(NETWORK_CLASSES + OTHER_CLASSES)})")
    return PersistentObject(name, meta["state"], meta.get("version"))


class Container:
    """What ``torch.nn.ModuleDict`` / ``ModuleList`` / ``Sequential`` become: their state only."""

    class_name = "container"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise EDMPickleError(f"{self.class_name} with state of type {type(state).__name__}: expected a dict")
        self.state = state


def _container(name: str) -> type:
    return type(name, (Container,), {"class_name": name})


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict)."""


class NumpyDType:
    """Stand-in for ``numpy.dtype(name, align, copy)``: only plain numeric kinds."""

    def __init__(self, name, align=False, copy=False):
        if not isinstance(name, str) or name not in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "b1"):
            raise EDMPickleError(f"numpy dtype {name!r}: only plain numeric scalars are allowed")
        self.name, self.order = name, "<"

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) > 1 and state[1] in "<>|=":
            self.order = state[1].replace("|", "=")


def _numpy_scalar(dtype, data=None):
    """Stand-in for ``numpy.core.multiarray.scalar``: a Python number decoded from its bytes."""
    if not isinstance(dtype, NumpyDType) or not isinstance(data, bytes):
        raise EDMPickleError(f"numpy scalar of {type(dtype).__name__} with {type(data).__name__} data: not allowed")
    return np.frombuffer(data, dtype=np.dtype(dtype.order + dtype.name), count=1)[0].item()


def _load_storage(data):
    """Stand-in for ``torch.storage._load_from_bytes``: torch's weights-only loader, which executes nothing."""
    if not isinstance(data, bytes):
        raise EDMPickleError(f"tensor storage given as {type(data).__name__}, expected bytes")
    try:
        storage = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's refusal or a corrupt storage, reported in one line
        raise EDMPickleError(f"tensor storage refused by torch's weights-only loader: {_first_line(e)}") from None
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise EDMPickleError(f"tensor storage decodes to {type(storage).__name__}, not a storage")
    return storage


def _rebuild_tensor(storage, offset, size, stride, requires_grad, hooks, metadata=None):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: a plain tensor; no hooks, no Python attributes."""
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)) or hooks or metadata:
        raise EDMPickleError("tensor with a non-storage source, backward hooks or Python attributes: not allowed")
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), False, OrderedDict())


def _rebuild_parameter(data, requires_grad, hooks):
    """Stand-in for ``torch._utils._rebuild_parameter``: the parameter's tensor."""
    if not isinstance(data, torch.Tensor) or hooks:
        raise EDMPickleError("parameter without a tensor, or with backward hooks: not allowed")
    return data


ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): OrderedDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): NumpyDType,
    ("dnnlib.util", "EasyDict"): EasyDict,
    **{("torch.nn.modules.container", name): _container(name) for name in CONTAINERS},
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose only globals are ``ALLOWED_GLOBALS`` (inert stand-ins); anything else is refused."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise EDMPickleError(f"global '{module}.{name}' is not in the allow-list "
                                 f"({len(ALLOWED_GLOBALS)} names: EDM persistent objects, torch tensors, "
                                 "OrderedDict, numpy scalars)") from None

    def persistent_load(self, pid):
        raise EDMPickleError(f"persistent id {pid!r}: an EDM network pickle has none (is this a torch.save file?)")


def read_edm_pickle(path):
    """Unpickle ``path`` with ``RestrictedUnpickler``: the top-level object with persistent objects as records."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing file {path}")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except EDMPickleError as e:
            raise EDMPickleError(f"{path}: refused: {_first_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - any failure of the pickle machinery means a bad file
            raise EDMPickleError(f"{path}: not a complete EDM pickle (truncated or corrupt): "
                                 f"{type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


# ---------------------------------------------------------------- records -> our network

def _tensors(record, prefix: str, ours: nn.Module, out: dict) -> None:
    """Collect the parameters and persistent buffers of ``record`` into ``out``, checking classes against ``ours``."""
    expected = "EDMPrecond" if type(ours).__name__ == "EDMDenoiser" else "VPPrecond" \
        if type(ours).__name__ == "VPDenoiser" else type(ours).__name__
    if record.class_name != expected:
        raise ArtifactError(f"{prefix or 'top level'}: the pickle has a {record.class_name}, our network a {expected}")
    state = record.state
    skipped = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, t in (state.get(kind) or {}).items():
            if t is None or name in skipped:
                continue
            if not isinstance(t, torch.Tensor):
                raise EDMPickleError(f"{prefix}{name}: a {type(t).__name__} where a tensor belongs")
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (PersistentObject, Container)):
            raise EDMPickleError(f"{prefix}{name}: submodule of type {type(child).__name__} is not allowed")
        if not hasattr(ours, name):
            raise ArtifactError(f"{prefix}{name}: in the pickle but not in our network")
        _tensors(child, f"{prefix}{name}.", getattr(ours, name), out)


def _constructor_kwargs(record: PersistentObject) -> dict:
    """The keyword arguments the persistent object was built with (positional ones bound by name)."""
    args, kwargs = record.state.get("_init_args") or (), record.state.get("_init_kwargs")
    if not isinstance(kwargs, dict):
        raise ArtifactError(f"{record.class_name}: no recorded constructor arguments (_init_kwargs) in the pickle")
    try:
        bound = inspect.signature(PRECONDITIONERS[record.class_name]).bind(*args, **kwargs)
    except TypeError as e:
        raise ArtifactError(f"{record.class_name} arguments {list(args)}, {sorted(kwargs)}: {e}") from None
    extra = bound.arguments.pop("model_kwargs", {})
    return _plain({**bound.arguments, **extra})


def _plain(value):
    """Constructor arguments as JSON-able Python values (lists, dicts, numbers, strings)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ArtifactError(f"constructor argument of type {type(value).__name__} is not a plain value")


def network_from_pickle(path):
    """Our denoiser with the weights of an EDM pickle's ``"ema"`` network; returns (net, class_name, kwargs)."""
    top = read_edm_pickle(path)
    record = top.get("ema") if isinstance(top, dict) else top
    if not isinstance(record, PersistentObject) or record.class_name not in PRECONDITIONERS:
        found = record.class_name if isinstance(record, PersistentObject) else type(record).__name__
        raise ArtifactError(f"{path}: expected an 'ema' network of class {' or '.join(PRECONDITIONERS)}; found {found}")
    kwargs = _constructor_kwargs(record)
    net = build_edm_denoiser(record.class_name, kwargs)
    tensors: dict = {}
    _tensors(record, "", net, tensors)
    try:
        load_module(net, tensors)
    except ArtifactError as e:
        raise ArtifactError(f"{path}: {e}") from None
    return net.eval().requires_grad_(False), record.class_name, kwargs


def convert_teacher(pkl, outdir) -> Path:
    """Convert an EDM pickle once into ``edm_teacher.safetensors`` + ``edm_teacher.json`` (architecture, sha256s)."""
    net, class_name, kwargs = network_from_pickle(pkl)
    outdir = Path(outdir)
    sha = save_tensors(outdir / CONVERTED_WEIGHTS, net.state_dict())
    write_json(outdir / CONVERTED_JSON, {
        "class_name": class_name, "kwargs": kwargs, "sha256": sha, "data_shape": list(net.data_shape),
        "label_dim": net.label_dim, "sigma_data": net.sigma_data, "parameters": sum(p.numel() for p in net.parameters()),
        "source": {"file": Path(pkl).name, "sha256": sha256_file(pkl)}})
    return outdir


def load_converted_teacher(directory) -> nn.Module:
    """Strictly load a teacher written by ``convert_teacher`` (checks the weights' sha256); never reads a pickle."""
    meta = read_json(Path(directory) / CONVERTED_JSON)
    net = build_edm_denoiser(meta["class_name"], meta["kwargs"])
    weights = Path(directory) / CONVERTED_WEIGHTS
    try:
        load_module(net, load_tensors(weights, meta["sha256"]))
    except ArtifactError as e:
        raise ArtifactError(f"{weights}: {e}") from None
    net.source = meta["source"]
    return net.eval().requires_grad_(False)
