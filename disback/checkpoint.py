"""Self-describing artifacts: atomic safetensors + JSON writes, sha256 checks, resumable training state.

Nothing here uses pickle. A training state is one safetensors file (module weights, optimiser moments,
RNG state) plus a JSON sidecar (step, config hash, optimiser hyperparameters, the file's sha256).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class ArtifactError(ValueError):
    """A checkpoint, node or manifest is missing, altered or does not match what it is loaded for."""


def sha256_file(path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensor_digest(*tensors, extra: bytes | str = b"", shapes: bool = True) -> str:
    """sha256 of ``extra``, then of each tensor's shape (unless ``shapes=False``) and raw bytes, in order.

    ``None`` is skipped; a mapping ``{name: tensor}`` is hashed in sorted name order, each name before its tensor.
    The dtype is not hashed (pass it in ``extra`` where it matters).
    """
    h = hashlib.sha256(extra.encode() if isinstance(extra, str) else extra)

    def add(t: torch.Tensor) -> None:
        if shapes:
            h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())

    for t in tensors:
        if isinstance(t, Mapping):
            for name, v in sorted(t.items()):
                h.update(name.encode())
                add(v)
        elif t is not None:
            add(t)
    return h.hexdigest()


def fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, shapes and bytes), independent of any file."""
    return tensor_digest(module.state_dict())


def _atomic(path: Path, write):
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_json(path, obj) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
    _atomic(path, w)


def read_json(path) -> dict:
    """Parse a JSON artifact, naming the file when it is missing, truncated or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ArtifactError(f"{path}: not valid JSON (truncated or altered): {e}") from None


def save_tensors(path, tensors: dict) -> str:
    """Atomically save ``{name: tensor}`` as safetensors; returns the file's sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(tensors, str(tmp)))
    return sha256_file(path)


def load_tensors(path, sha256: str | None = None) -> dict:
    """Load safetensors, first checking the file exists and (if given) its sha256."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"missing file {path}")
    if sha256 is not None and sha256_file(path) != sha256:
        raise ArtifactError(f"{path}: sha256 does not match its manifest (file altered or truncated)")
    return load_file(str(path))


def load_module(module: torch.nn.Module, tensors: dict, prefix: str = "") -> None:
    """Strict load of ``prefix``-named tensors into ``module``: a missing or extra key is an error."""
    own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        missing, unexpected = module.load_state_dict(own, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise ArtifactError(f"weights do not fit the module: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise ArtifactError(f"weights do not fit the module: missing {list(missing)[:5]}, "
                            f"unexpected {list(unexpected)[:5]}")


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Split an optimiser's state into tensors (for safetensors) and JSON-able hyperparameters."""
    sd = opt.state_dict()
    tensors = {f"{prefix}.{pid}.{k}": torch.as_tensor(v) for pid, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict, prefix: str) -> None:
    """Inverse of ``optimizer_tensors``: load the ``prefix``-named tensors and the hyperparameters into ``opt``."""
    state: dict = {}
    for key, v in tensors.items():
        if key.startswith(prefix + "."):
            pid, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class TrainingState:
    """Resumable state of one training loop in ``run_dir``: ``state.json`` naming its ``state_<step>.safetensors``.

    ``state.json`` is replaced last and is the commit point: a run killed at any moment, even between the two
    writes, leaves the previous state whole (the tensors of a state are never overwritten by the next one).
    """

    def __init__(self, run_dir, config_hash: str):
        self.dir = Path(run_dir)
        self.config_hash = config_hash

    @property
    def meta_file(self) -> Path:
        return self.dir / "state.json"

    def save(self, step: int, modules: dict, optimizers: dict, rng: torch.Generator, extra: dict | None = None):
        tensors, meta = {}, {"step": step, "config_hash": self.config_hash, "optimizers": {}, "extra": extra or {}}
        for name, m in modules.items():
            tensors.update({f"{name}.{k}": v for k, v in m.state_dict().items()})
        for name, opt in optimizers.items():
            t, m = optimizer_tensors(opt, f"opt_{name}")
            tensors.update(t)
            meta["optimizers"][name] = m
        tensors["rng"] = rng.get_state()
        meta["file"] = f"state_{step:08d}.safetensors"
        meta["sha256"] = save_tensors(self.dir / meta["file"], tensors)
        write_json(self.meta_file, meta)  # Commit; then remove older states and temporary files of killed writes.
        for old in [*self.dir.glob("state_*.safetensors"), *self.dir.glob(".state*.tmp*")]:
            if old.name != meta["file"]:
                old.unlink(missing_ok=True)

    def load(self, modules: dict, optimizers: dict, rng: torch.Generator) -> dict | None:
        """Restore in place and return the metadata, or ``None`` if there is no saved state."""
        jfile = self.meta_file
        if not jfile.is_file():
            return None
        meta = read_json(jfile)
        if meta.get("config_hash") != self.config_hash:
            raise ArtifactError(f"{jfile}: saved with config hash {meta.get('config_hash')}, this run has "
                                f"{self.config_hash} (the key covers the config, the teacher's weights, the data and "
                                f"the degradation path); use a fresh run directory or the same ones")
        tensors = load_tensors(self.dir / meta["file"], meta["sha256"])
        for name, m in modules.items():
            load_module(m, tensors, f"{name}.")
        for name, opt in optimizers.items():
            restore_optimizer(opt, tensors, meta["optimizers"][name], f"opt_{name}")
        rng.set_state(tensors["rng"])
        return meta


class RunLog:
    """Per-iteration JSONL log of a run; on resume, records after the resumed step are dropped.

    With ``write=False`` (the other processes of a parallel run) records are kept in memory only, from this run on.
    """

    def __init__(self, path, resume_step: int = 0, write: bool = True):
        self.path, self.records, self.writes = Path(path), [], write
        if not write:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_jsonl(self.path, torn_tail=True) if r["step"] <= resume_step] if resume_step else []
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self.records = kept

    def write(self, record: dict) -> None:
        self.records.append(record)
        if not self.writes:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_jsonl(path, torn_tail: bool = False) -> list[dict]:
    """Records of a JSONL file; ``torn_tail`` drops a half-written last line (a run killed mid-write)."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if torn_tail and lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()
    return [json.loads(line) for line in lines]


def check_finite(value: torch.Tensor, step: int, what: str, state_dir=None) -> None:
    """Stop on a non-finite loss or gradient, naming the step and the last good checkpoint."""
    if torch.isfinite(value).all():
        return
    last = None
    if state_dir is not None and (Path(state_dir) / "state.json").is_file():
        last = json.loads((Path(state_dir) / "state.json").read_text())["step"]
    where = f"last good checkpoint: step {last} in {state_dir}" if last is not None else "no checkpoint was saved"
    raise FloatingPointError(f"non-finite {what} at step {step}; {where}")
