"""The degradation path (stage 1's checkpoints) and the target schedule that walks it backwards (stage 2).

On disk a path is a folder of ``node_XXX.safetensors`` files and a ``path.json`` manifest listing, per
node, its index, stage-1 step, file name and sha256, plus the recording config and the teacher's
fingerprint. Loading is strict: a missing, extra, renamed or altered file is an error naming it.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import ArtifactError, fingerprint, load_module, load_tensors, read_json, save_tensors, write_json
from .config import check_count, whole_number

MANIFEST = "path.json"
FORMAT = "disback-path/1"


class PathWriter:
    """Appends nodes to a new path folder, rewriting the manifest after each node.

    With ``write=False`` (the other processes of a parallel run) it only counts nodes and touches no file.
    """

    def __init__(self, root, config: dict, teacher_fingerprint: str, resume_step: int | None = None,
                 write: bool = True):
        self.root, self.writes = Path(root), write
        self.manifest = {"format": FORMAT, "config": config, "teacher_fingerprint": teacher_fingerprint, "nodes": []}
        if not write:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:  # Keep the nodes saved up to the resumed step; later ones are recorded again.
            old = read_json(self.root / MANIFEST)["nodes"] if (self.root / MANIFEST).is_file() else []
            self.manifest["nodes"] = [n for n in old if n["step"] <= resume_step]
        kept = {n["file"] for n in self.manifest["nodes"]}
        stale = sorted(p for p in self.root.glob("node_*.safetensors") if p.name not in kept)
        if resume_step is None and (stale or (self.root / MANIFEST).exists()):
            raise ArtifactError(f"{self.root} already holds a path; record into an empty folder")
        for p in stale:
            p.unlink()
        write_json(self.root / MANIFEST, self.manifest)

    def add(self, module: torch.nn.Module, step: int) -> None:
        index = len(self.manifest["nodes"])
        name = f"node_{index:03d}.safetensors"
        sha = save_tensors(self.root / name, module.state_dict()) if self.writes else None
        self.manifest["nodes"].append({"index": index, "step": int(step), "file": name, "sha256": sha})
        if self.writes:
            write_json(self.root / MANIFEST, self.manifest)


@dataclass(frozen=True)
class DegradationPath:
    """A verified degradation path: node 0 is the teacher, node N fits the initial generator."""

    root: Path
    nodes: tuple          # manifest entries, ordered by index
    config: dict          # the DegradeConfig it was recorded with
    teacher_fingerprint: str

    @classmethod
    def load(cls, root) -> "DegradationPath":
        """Read and verify a path folder: every listed file present with its sha256, nothing unlisted."""
        root = Path(root)
        mfile = root / MANIFEST
        if not mfile.is_file():
            hint = f" (record_degradation writes it to {root / 'path'})" if (root / "path" / MANIFEST).is_file() else ""
            raise ArtifactError(f"no degradation path at {root}: {MANIFEST} is missing{hint}")
        m = read_json(mfile)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise ArtifactError(f"{mfile}: format {m.get('format') if isinstance(m, dict) else m!r}, expected "
                                f"{FORMAT!r}")
        missing = [k for k in ("nodes", "config", "teacher_fingerprint") if k not in m]
        if missing or not isinstance(m["nodes"], list) or not isinstance(m["config"], dict):
            raise ArtifactError(f"{mfile}: needs a list 'nodes', a dict 'config' and 'teacher_fingerprint'"
                                + (f"; missing {missing}" if missing else ""))
        nodes = tuple(m["nodes"])
        if len(nodes) < 2:
            raise ArtifactError(f"{mfile}: a path needs at least 2 nodes (teacher and one more); has {len(nodes)}")
        for i, node in enumerate(nodes):
            if not isinstance(node, dict) or set(node) != {"index", "step", "file", "sha256"} \
                    or not isinstance(node["sha256"], str) or not re.fullmatch(r"[0-9a-f]{64}", node["sha256"]) \
                    or not isinstance(node["step"], int):
                raise ArtifactError(f"{mfile}: node {i} is listed as {node}; each node needs index, step (an "
                                    f"integer), file and sha256 (64 hex digits)")
            if node["index"] != i or node["file"] != f"node_{i:03d}.safetensors":
                raise ArtifactError(f"{mfile}: node {i} is listed as {node}; nodes must be numbered 0..N in order")
            if i and node["step"] <= nodes[i - 1]["step"]:
                raise ArtifactError(f"{mfile}: node steps must increase; node {i} has step {node['step']}")
        cfg = m["config"]  # a recording that died leaves the manifest of the nodes written so far: not a path
        if ("num_nodes" in cfg and len(nodes) - 1 != int(cfg["num_nodes"])) or \
                ("iters" in cfg and nodes[-1]["step"] != int(cfg["iters"])):
            raise ArtifactError(f"{mfile}: incomplete path: {len(nodes) - 1} of {cfg.get('num_nodes', '?')} nodes, "
                                f"the last at stage-1 step {nodes[-1]['step']} of {cfg.get('iters', '?')} (the "
                                f"recording was interrupted); rerun record_degradation on its run folder (it resumes "
                                f"when ckpt_every > 0) or record into an empty one")
        listed = {n["file"] for n in nodes}
        extra = sorted(p.name for p in root.glob("*.safetensors") if p.name not in listed)
        if extra:
            raise ArtifactError(f"{root}: files not in the manifest: {extra}")
        for node in nodes:
            f = root / node["file"]
            if not f.is_file():
                raise ArtifactError(f"{root}: node {node['index']} file {node['file']} is missing")
            load_tensors(f, node["sha256"])  # checks the hash
        return cls(root, nodes, m["config"], m["teacher_fingerprint"])

    @property
    def num_nodes(self) -> int:
        """N: the number of nodes after the teacher."""
        return len(self.nodes) - 1

    @property
    def digest(self) -> str:
        """sha256 of the nodes' sha256s in order: names the path's weights (a resumed stage-2 run must keep them)."""
        return hashlib.sha256("/".join(n["sha256"] for n in self.nodes).encode()).hexdigest()

    @property
    def steps(self) -> list[int]:
        return [n["step"] for n in self.nodes]

    def reversed(self) -> list[int]:
        """Node indices of the convergence trajectory: N, N-1, ..., 0 (the teacher)."""
        return list(range(self.num_nodes, -1, -1))

    def load_node(self, index: int, module: torch.nn.Module) -> torch.nn.Module:
        """Strictly load node ``index`` into ``module`` (re-checking the file's sha256)."""
        if not 0 <= index <= self.num_nodes:
            raise ValueError(f"index={index!r}: must be in [0, {self.num_nodes}]")
        node = self.nodes[index]
        load_module(module, load_tensors(self.root / node["file"], node["sha256"]))
        return module

    def check_teacher(self, teacher: torch.nn.Module) -> None:
        """Refuse a path recorded from a different teacher."""
        fp = fingerprint(teacher)
        if fp != self.teacher_fingerprint:
            raise ArtifactError(f"{self.root}: path was recorded from teacher {self.teacher_fingerprint[:12]}, "
                                f"this teacher is {fp[:12]}; record the path again for this teacher")


def node_steps(iters: int, num_nodes: int, spacing: str) -> list[int]:
    """Stage-1 steps at which nodes 0..N are saved: 0, ..., iters. ``early`` puts them densely near the teacher."""
    if spacing not in ("uniform", "early"):
        raise ValueError(f"spacing={spacing!r}: must be one of ('uniform', 'early')")
    if not 1 <= num_nodes <= iters:
        raise ValueError(f"num_nodes={num_nodes!r}: must be in [1, iters={iters}]")
    power = 1.0 if spacing == "uniform" else 2.0
    steps = [round(iters * (i / num_nodes) ** power) for i in range(num_nodes + 1)]
    for i in range(1, len(steps)):  # keep steps strictly increasing when rounding collides
        steps[i] = max(steps[i], steps[i - 1] + 1)
    return steps


@dataclass(frozen=True)
class TargetSchedule:
    """Which path node is the target at each generator update. Node 0 is the teacher."""

    nodes: tuple          # path node indices in the order they become the target; the last is 0
    switch_steps: tuple   # generator update at which each of ``nodes`` becomes active; the first is 0

    def __post_init__(self):
        for name in ("nodes", "switch_steps"):
            values = getattr(self, name)
            if not isinstance(values, (tuple, list)) or not all(
                    whole_number(v) for v in values):
                raise ValueError(f"TargetSchedule: {name}={values!r} must be a tuple of integers >= 0")
        if not self.nodes or self.nodes[-1] != 0 or len(self.nodes) != len(self.switch_steps):
            raise ValueError(f"TargetSchedule: nodes={self.nodes} must end on 0 (the teacher), one switch step each")
        if self.switch_steps[0] != 0 or list(self.switch_steps) != sorted(set(self.switch_steps)):
            raise ValueError(f"TargetSchedule: switch_steps={self.switch_steps} must start at 0 and increase")

    @classmethod
    def constant(cls) -> "TargetSchedule":
        """The baseline: the teacher from the first update."""
        return cls((0,), (0,))

    @classmethod
    def backtracking(cls, num_nodes: int, iters_per_node: int, iters: int) -> "TargetSchedule":
        """Targets N-1, ..., 1 for ``iters_per_node`` updates each, then the teacher until ``iters``."""
        for name, value in (("num_nodes", num_nodes), ("iters_per_node", iters_per_node), ("iters", iters)):
            check_count(name, value)
        nodes = tuple(range(num_nodes - 1, -1, -1))
        switch = tuple(i * iters_per_node for i in range(len(nodes)))
        if switch[-1] >= iters:
            raise ValueError(f"iters_per_node={iters_per_node!r}: with {num_nodes} nodes the teacher becomes the "
                             f"target at update {switch[-1]}, not before iters={iters}; must be < "
                             f"{-(-iters // max(len(nodes) - 1, 1))}")
        return cls(nodes, switch)

    def node_at(self, step: int) -> int:
        """The target node during generator update ``step`` (0-based)."""
        active = 0
        for i, s in enumerate(self.switch_steps):
            if step >= s:
                active = i
        return self.nodes[active]
