"""Teachers: trained here on any data tensor by denoising score matching, saved and loaded as safetensors."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import (ArtifactError, TrainingState, check_finite, fingerprint, load_module, load_tensors, read_json,
                         save_tensors, tensor_digest, write_json)
from .config import TeacherConfig, check_config
from .runlock import locks_run_dir
from .diffusion import EDMPrecond, denoising_loss, sample_sigma
from .generator import EMA
from .networks import build_backbone
from .progress import bar as progress_bar
from .steps import adam


def build_denoiser(config: TeacherConfig, data_shape, sigma_data: float, label_dim: int = 0) -> EDMPrecond:
    """An untrained EDM-preconditioned denoiser of the configured architecture."""
    backbone = build_backbone(config.arch, tuple(data_shape), config.width, config.depth, label_dim)
    net = EDMPrecond(backbone, sigma_data, label_dim)
    net.data_shape = tuple(int(s) for s in data_shape)  # per-sample shape, used to draw generator noise
    return net


def _check_data(data, labels):
    if not isinstance(data, torch.Tensor) or data.ndim not in (2, 4) or not data.is_floating_point():
        raise ValueError(f"data: must be a float tensor [N, D] or [N, C, H, W]; got "
                         f"{getattr(data, 'shape', type(data).__name__)}")
    if data.dtype != torch.float32:  # the networks are float32: another float dtype fails deep inside a layer
        raise ValueError(f"data: must be float32 (the networks' dtype); got {data.dtype}: pass data.float()")
    if len(data) < 2 or not torch.isfinite(data).all():
        raise ValueError("data: must hold at least 2 samples, all finite")
    if bool((data == data[:1]).all()):  # sigma_data = std would be 0 and the first loss non-finite
        raise ValueError(f"data has zero spread (every sample identical / std 0): all {len(data)} samples equal "
                         f"the first; a diffusion model needs data that varies")
    if labels is not None and not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels: must be None or a non-negative int64 tensor of shape [{len(data)}]; got "
                         f"{type(labels).__name__}")
    if labels is not None and (labels.shape != (len(data),) or labels.dtype != torch.long or labels.min() < 0):
        raise ValueError(f"labels: must be a non-negative int64 tensor of shape [{len(data)}]; got "
                         f"{tuple(labels.shape)} {labels.dtype}")


def _data_hash(data: torch.Tensor, labels: torch.Tensor | None) -> str:
    """sha256 of the training data (and labels): a resumed run must see the same data."""
    return tensor_digest(data, labels, extra=str((tuple(data.shape), str(data.dtype))), shapes=False)


@locks_run_dir
def train_teacher(data: torch.Tensor, labels: torch.Tensor | None = None, config: TeacherConfig = TeacherConfig(),
                  progress: bool = True, *, run_dir=None) -> EDMPrecond:
    """Train a denoiser on ``data`` (``[N, D]`` or ``[N, C, H, W]``) by EDM score matching; returns its EMA weights.

    With ``run_dir``, the net, EMA, optimiser, LR schedule and RNG are checkpointed every ``config.ckpt_every``
    steps, and a rerun with the same config and data resumes from the last checkpoint.
    """
    check_config(config, TeacherConfig)
    _check_data(data, labels)
    torch.manual_seed(config.seed)
    rng = torch.Generator().manual_seed(config.seed)
    label_dim = 0 if labels is None else int(labels.max()) + 1
    sigma_data = float(data.std())
    net = build_denoiser(config, data.shape[1:], sigma_data, label_dim)
    ema = EMA(net, config.ema)
    opt = adam(net.parameters(), config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.iters, eta_min=config.lr * 0.05)
    modules, optimizers, state, start = {"net": net, "ema": ema.module}, {"net": opt}, None, 0
    if run_dir is not None:
        write_json(Path(run_dir) / "config.json", config.to_dict())
        state = TrainingState(run_dir, f"{config.hash()}-{_data_hash(data, labels)[:16]}")
        meta = state.load(modules, optimizers, rng)
        if meta:
            start = meta["step"]
            sched.load_state_dict(meta["extra"]["scheduler"])
    bar = progress_bar(range(start, config.iters), desc="teacher", disable=not progress, initial=start,
                       total=config.iters)
    for step in bar:
        idx = torch.randint(len(data), (config.batch,), generator=rng)
        sigma = sample_sigma(config.batch, config.p_mean, config.p_std, rng)
        loss = denoising_loss(net, data[idx], sigma, None if labels is None else labels[idx], rng).mean()
        check_finite(loss, step + 1, "teacher loss", run_dir)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema.update(net)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        done = step + 1
        if state is not None and config.ckpt_every and (done % config.ckpt_every == 0 or done == config.iters):
            state.save(done, modules, optimizers, rng, {"scheduler": sched.state_dict()})
    teacher = ema.module
    teacher.data_shape = net.data_shape
    teacher.config = config
    return teacher


def save_teacher(teacher: EDMPrecond, directory) -> Path:
    """Write ``teacher.safetensors`` and ``teacher.json`` (config, shapes, sha256) into ``directory``."""
    directory = Path(directory)
    sha = save_tensors(directory / "teacher.safetensors", teacher.state_dict())
    write_json(directory / "teacher.json", {
        "config": teacher.config.to_dict(), "data_shape": list(teacher.data_shape), "sigma_data": teacher.sigma_data,
        "label_dim": teacher.label_dim, "sha256": sha, "fingerprint": fingerprint(teacher)})
    return directory


def load_teacher(directory) -> EDMPrecond:
    """Strictly load a teacher saved by ``save_teacher``, or an EDM teacher converted by ``convert_teacher`` (a folder
    holding ``edm_teacher.json``); checks the weights' sha256."""
    from .edm_pickle import CONVERTED_JSON, load_converted_teacher

    if (Path(directory) / CONVERTED_JSON).is_file():
        return load_converted_teacher(directory)
    meta_file = Path(directory) / "teacher.json"
    if not meta_file.is_file():
        raise ArtifactError(f"no teacher at {directory}: {meta_file} is missing (run notebook 01 first)")
    meta = read_json(meta_file)
    config = TeacherConfig.from_dict(meta["config"])
    net = build_denoiser(config, meta["data_shape"], meta["sigma_data"], meta["label_dim"])
    weights = Path(directory) / "teacher.safetensors"
    tensors = load_tensors(weights, meta["sha256"])
    try:
        load_module(net, tensors)
    except ArtifactError as e:
        raise ArtifactError(f"{weights}: {e} (teacher.json describes another network)") from None
    net.config = config
    net.eval().requires_grad_(False)
    return net
