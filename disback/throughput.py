"""Throughput of the paper-scale loops on full-size EDM networks with random weights: updates per second, peak memory.

Each arm runs the real step functions (``steps.fake_score_step``, ``steps.generator_step``) on networks of the
released teachers' architectures (``networks.presets``), with a CUDA random generator so every draw stays on the GPU:

- the baseline (``diff_instruct``, or any method of ``config.METHODS``): the teacher as constant target, as in
  ``distill``; one update = ``fake_steps`` fake-score steps + one generator step.
- ``disback``: stage 1 (the fake-score step alone against the frozen G0) for the same number of steps, with a
  degradation path of ``path_nodes`` nodes written to disk (``path.PathWriter``) and read back verified, then
  stage 2 from the path's last node; one target switch (``distill``'s own) is timed on its own. A stage-2 update
  costs what the baseline's does: only the target's weights differ.

Times are measured after ``warmup`` untimed updates, between CUDA synchronisations; an arm stops early after
``max_seconds``. Precisions: "fp32" (PyTorch's defaults; cuDNN may use TF32 for convolutions, recorded in the
output) and "bf16" (autocast around both steps, weights and optimiser state in fp32). Only torch, numpy and
safetensors are imported, so ``python -m disback throughput`` runs on a bare GPU machine.
"""
from __future__ import annotations

import contextlib
import datetime
import tempfile
import time
from pathlib import Path

import torch

from .checkpoint import write_json
from .config import METHODS, DistillConfig
from .distill import _switch_target
from .generator import frozen_copy, make_generator, trainable_copy
from .networks.presets import EDM_TEACHERS, SIZES, forward_flops, random_edm_teacher
from .path import DegradationPath, PathWriter
from .steps import COST_FAKE_STEP, adam, NFE_FAKE_STEP, NFE_GEN_STEP, cost_gen_step, fake_score_step, generator_step

PRECISIONS = ("fp32", "bf16")
ARMS = METHODS + ("disback",)  # "disback" = backtracking with the Diff-Instruct loss
GIB = 2 ** 30


def arm_config(arm: str, batch: int) -> DistillConfig:
    """The stage-2 configuration an arm runs: the method's defaults (DMD2: 5 fake-score steps per update)."""
    if arm not in ARMS:
        raise ValueError(f"method={arm!r}: must be one of {ARMS}")
    if arm == "disback":
        return DistillConfig(method="diff_instruct", backtrack=True, batch=batch, lr_gen=2e-6, lr_fake=2e-6)
    return DistillConfig(method=arm, batch=batch, lr_gen=2e-6, lr_fake=2e-6, fake_steps=5 if arm == "dmd2" else 1)


def _autocast(precision: str, device: torch.device):
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: must be one of {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, updates: int, warmup: int, max_seconds: float, device: torch.device) -> dict:
    """Run ``step()`` ``warmup`` times untimed, then up to ``updates`` times (fewer past ``max_seconds``)."""
    for _ in range(warmup):
        step()
    _sync(device)
    start, done = time.perf_counter(), 0
    while done < updates and (done == 0 or time.perf_counter() - start < max_seconds):
        step()
        done += 1
    _sync(device)
    seconds = time.perf_counter() - start
    return {"timed_updates": done, "seconds": seconds, "updates_per_s": done / seconds, "s_per_update": seconds / done}


class _Stage2:
    """Generator, fake score, target and their optimisers, as ``distill`` builds them."""

    def __init__(self, teacher, config: DistillConfig, rng: torch.Generator):
        self.config, self.rng = config, rng
        self.generator = make_generator(teacher, config.sigma_init).train()
        self.fake = trainable_copy(teacher).train().requires_grad_(True)
        self.target = frozen_copy(teacher)
        self.opt_gen = adam(self.generator.parameters(), config.lr_gen)
        self.opt_fake = adam(self.fake.parameters(), config.lr_fake)
        self.step_count = 0

    def update(self) -> None:
        """One generator update of ``distill``: the fake-score step(s), then the generator step."""
        c = self.config
        self.step_count += 1
        for _ in range(c.fake_steps):
            fake_score_step(self.fake, self.opt_fake, self.generator, c.batch, c.p_mean, c.p_std, self.rng,
                            self.step_count, sigma_dist=c.fake_score_sigma_dist)
        generator_step(self.generator, self.opt_gen, self.target, self.fake, c, self.rng, self.step_count)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device: torch.device) -> dict:
    return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / GIB} if device.type == "cuda" else {}


def measure_arm(teacher, arm: str, precision: str, batch: int, updates: int, warmup: int, max_seconds: float,
                device: torch.device, path_nodes: int = 2, seed: int = 0) -> dict:
    """Time one arm (``ARMS``) at one precision; returns rates, per-update network passes and peak memory."""
    config = arm_config(arm, batch)
    rng = torch.Generator(device).manual_seed(seed)
    out = {"method": arm, "precision": precision, "batch": batch, "loss": config.method,
           "fake_steps": config.fake_steps,
           "nfe_per_update": batch * (config.fake_steps * NFE_FAKE_STEP + NFE_GEN_STEP),
           "forward_equivalents_per_update": batch * (config.fake_steps * COST_FAKE_STEP + cost_gen_step(config.method))}
    with _autocast(precision, device), tempfile.TemporaryDirectory(prefix="disback-throughput-") as tmp:
        path = None
        if arm == "disback":  # Stage 1, with the path written to disk and read back verified.
            _reset_peak(device)
            out["stage1"], path = _stage1(teacher, config, rng, updates, warmup, max_seconds, device, path_nodes,
                                          Path(tmp) / "path")
            out["stage1"].update(_peak(device))
        _reset_peak(device)
        run = _Stage2(teacher, config, rng)
        if path is not None:  # Stage 2 from the last node; the target moves one node on (distill's switch), timed.
            path.load_node(path.num_nodes, run.fake)
            path.load_node(path.num_nodes, run.target)
            _sync(device)
            t0 = time.perf_counter()
            _switch_target(path.num_nodes - 1, path.num_nodes, run.target, teacher, path)
            _sync(device)
            out["switch_s"] = time.perf_counter() - t0
        out["stage2"] = {**_timed(run.update, updates, warmup, max_seconds, device), **_peak(device)}
    return out


def _stage1(teacher, config: DistillConfig, rng, updates: int, warmup: int, max_seconds: float, device,
            path_nodes: int, root: Path):
    """Stage 1 as ``record_degradation`` runs it (the fake-score step against the frozen G0), then a path of
    ``path_nodes`` nodes after the teacher saved and loaded; returns (timings, the path)."""
    generator0 = frozen_copy(make_generator(teacher, config.sigma_init))
    degraded = trainable_copy(teacher).train().requires_grad_(True)
    opt = adam(degraded.parameters(), config.lr_fake)
    count = iter(range(1, 10 ** 9))
    timing = _timed(lambda: fake_score_step(degraded, opt, generator0, config.batch, config.p_mean, config.p_std, rng,
                                            next(count)), updates, warmup, max_seconds, device)
    t0 = time.perf_counter()
    writer = PathWriter(root, {"sigma_init": config.sigma_init}, "random-weights")
    for i in range(path_nodes + 1):  # node 0 is the teacher; the others hold the degraded copy's weights
        writer.add(teacher if i == 0 else degraded, i)
    t1 = time.perf_counter()
    path = DegradationPath.load(root)  # verifies every node's sha256
    timing.update(path_nodes=path_nodes, node_save_s=(t1 - t0) / (path_nodes + 1),
                  path_load_verify_s=time.perf_counter() - t1)
    return timing, path


@torch.no_grad()
def measure_sampling(teacher, setting: str, batch: int, precision: str, device: torch.device, repeats: int = 3,
                     sigma_init: float = 2.5, seed: int = 0) -> dict:
    """Samples per second of a one-step generator (the teacher's network, one evaluation) against the teacher's own
    sampler at EDM's settings for ``setting`` (``diffusion.EDM_TEACHER_SAMPLERS``: NFE 79 or 511), same network,
    same batch; the sampler runs once (timed) after one untimed call of each."""
    from .diffusion import EDM_TEACHER_SAMPLERS, heun_nfe, sample_edm_teacher

    kind, kwargs = EDM_TEACHER_SAMPLERS[setting]
    nfe = heun_nfe(kwargs["num_steps"])
    g = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((batch, *teacher.data_shape), generator=g, device=device)
    labels = torch.randint(teacher.label_dim, (batch,), generator=g, device=device) if teacher.label_dim else None
    onestep = make_generator(teacher, sigma_init).eval().requires_grad_(False)
    with _autocast(precision, device):
        one = lambda: onestep(noise, labels)  # noqa: E731
        _reset_peak(device)
        t_one = _timed(one, repeats, 1, 60.0, device)["s_per_update"]
        teacher_kwargs = {"generators": [torch.Generator().manual_seed(i) for i in range(batch)]} \
            if kind == "stochastic" else {}
        many = lambda: sample_edm_teacher(teacher, noise, setting, labels, **teacher_kwargs)  # noqa: E731
        t_many = _timed(many, 1, 0, 600.0, device)["s_per_update"]
    del onestep
    return {"setting": setting, "precision": precision, "batch": batch, "sampler": kind, "teacher_nfe": nfe,
            "onestep_samples_per_s": batch / t_one, "teacher_samples_per_s": batch / t_many,
            "throughput_ratio": t_many / t_one, "nfe_ratio": nfe, **_peak(device)}


def run_throughput(settings, methods, precisions, batches: dict, updates: int, warmup: int = 3,
                   max_seconds: float = 60.0, size: str = "full", resolution: int = 16, device=None,
                   path_nodes: int = 2, out=None, log=print, sampling_batch: int = 0) -> dict:
    """Measure every (setting, precision, method) arm, and with ``sampling_batch`` > 0 one-step against the teacher's
    sampler (``measure_sampling``); writes and returns the record (a throughput, not an FID)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    for s in settings:
        if s not in EDM_TEACHERS:
            raise ValueError(f"setting={s!r}: must be one of {tuple(EDM_TEACHERS)}")
    if size not in SIZES:
        raise ValueError(f"size={size!r}: must be one of {SIZES}")
    for m in methods:
        arm_config(m, 1)
    for p in precisions:
        _autocast(p, device)
    record = {"kind": "throughput", "what": "stage-1 / stage-2 updates per second on random-weight EDM networks",
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "size": size, "updates": updates, "warmup": warmup,
              "max_seconds": max_seconds, "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                                   "cudnn": torch.backends.cudnn.allow_tf32},
              "settings": {}, "arms": [], "sampling": []}
    for setting in settings:
        teacher = random_edm_teacher(setting, size, resolution, device=device)
        record["settings"][setting] = {
            "architecture": teacher.model_type, "parameters": sum(p.numel() for p in teacher.parameters()),
            "data_shape": list(teacher.data_shape), "label_dim": teacher.label_dim,
            "forward_flops_per_sample": forward_flops(setting, size, resolution)}
        for precision in precisions:
            for method in methods:
                batch = batches[setting]
                log(f"throughput: {setting} {method} {precision} batch {batch} ...")
                try:
                    arm = measure_arm(teacher, method, precision, batch, updates, warmup, max_seconds, device,
                                      path_nodes)
                    arm["status"] = "ok"
                except torch.OutOfMemoryError as e:
                    arm = {"method": method, "precision": precision, "batch": batch, "status": "out of memory",
                           "error": str(e).splitlines()[0]}
                arm["setting"] = setting
                record["arms"].append(arm)
                log("  " + _summary(arm))
                if out:
                    write_json(out, record)  # after every arm: a killed run keeps what it measured
        for precision in precisions if sampling_batch else ():
            log(f"sampling: {setting} {precision} batch {sampling_batch} ...")
            try:
                sampled = measure_sampling(teacher, setting, sampling_batch, precision, device)
                sampled["status"] = "ok"
                log(f"  one-step {sampled['onestep_samples_per_s']:.4g} samples/s, teacher "
                    f"{sampled['teacher_samples_per_s']:.4g} samples/s: {sampled['throughput_ratio']:.0f}x "
                    f"(NFE {sampled['teacher_nfe']})")
            except torch.OutOfMemoryError as e:
                sampled = {"setting": setting, "precision": precision, "batch": sampling_batch,
                           "status": "out of memory", "error": str(e).splitlines()[0]}
            record["sampling"].append(sampled)
            if out:
                write_json(out, record)
        del teacher
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if out:
        write_json(out, record)
    return record


def _summary(arm: dict) -> str:
    if arm["status"] != "ok":
        return arm["status"]
    parts = []
    for stage in ("stage1", "stage2"):
        if stage in arm:
            t = arm[stage]
            peak = f", peak {t['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in t else ""
            parts.append(f"{stage} {t['updates_per_s']:.3g} updates/s ({t['timed_updates']} timed){peak}")
    if "switch_s" in arm:
        parts.append(f"node save {arm['stage1']['node_save_s']:.2g} s, target switch {arm['switch_s']:.2g} s")
    return "; ".join(parts)
