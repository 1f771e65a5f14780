"""Throughput of DisBack on a Stable Diffusion-sized stack with random weights: updates per second and peak memory.

``python -m disback sd-throughput --size sd15 --updates 20 --precision bf16,fp16 --lora on,off --out ...``
builds the stack once (no download), then for each precision and LoRA choice records a short degradation path
and runs ``backtrack`` through the shared loops, timing the updates after a warm-up on the teacher target (the
switch from node 1 to the teacher happens before the timed window). Each row is a separate run; a failure is written in its row.
"""
from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from .config import DegradeConfig, DistillConfig
from .degrade import record_degradation
from .distill import backtrack
from .results import save_metrics
from .sd_stack import decode, make_teacher, random_stack

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_prompts(n: int) -> list[str]:
    """``n`` short generated prompts."""
    things = ["cat", "dog", "house", "tree", "car", "boat", "bird", "clock"]
    looks = ["red", "small", "old", "bright", "wooden", "blue"]
    return [f"a {looks[i % len(looks)]} {things[(i // len(looks)) % len(things)]} photo {i}" for i in range(n)]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_disback(stack, precision: str, lora_rank: int, updates: int, warmup: int, batch: int, guidance: float,
                 fake_steps: int, device, work_dir) -> dict:
    """One row: seconds per DisBack update (mean over ``updates`` after ``warmup``) and peak memory."""
    teacher = make_teacher(stack, bench_prompts(16), guidance, lora_rank, PRECISIONS[precision], device)
    sigma_init = teacher.sigma_at(399)
    common = dict(batch=batch, sigma_init=sigma_init, p_mean=-0.4, p_std=1.6, seed=0)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    path = record_degradation(teacher, DegradeConfig(iters=2, num_nodes=2, lr=1e-5, **common), work_dir / "degrade",
                              progress=False)
    _sync(device)
    degrade_s = time.perf_counter() - t0
    stamps = []

    def clock(_generator) -> dict:  # called at step 0, every `warmup` updates and at the end
        _sync(device)
        stamps.append(time.perf_counter())
        return {}

    config = DistillConfig(method="dmd", iters=warmup + updates, iters_per_node=max(warmup - 1, 1), lr_gen=1e-5,
                           lr_fake=1e-5, fake_steps=fake_steps, eval_every=warmup, **common)
    backtrack(teacher, path, config, work_dir / "distill", metric_fn=clock, progress=False)
    seconds = (stamps[-1] - stamps[1]) / updates  # from the end of the warm-up to the last update
    row = {"precision": precision, "lora_rank": lora_rank, "batch": batch, "fake_steps": fake_steps,
           "updates_timed": updates, "sec_per_update": seconds, "updates_per_s": 1 / seconds,
           "samples_per_s": batch / seconds, "degrade_s": degrade_s,
           "trainable_parameters": sum(p.numel() for p in teacher.parameters())}
    if torch.device(device).type == "cuda":
        row["max_memory_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return row


def sd_throughput(size: str, updates: int, precisions, loras, out, batch: int = 4, warmup: int = 3,
                  lora_rank: int = 64, guidance: float = 1.75, fake_steps: int = 1, device: str = "auto") -> dict:
    """Rows of ``time_disback`` for every precision x LoRA choice, written to ``out`` as JSON."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    work = Path(tempfile.mkdtemp(prefix="sd_bench_"))
    t0 = time.perf_counter()
    stack = random_stack(work / "stack", size, "sd15", device=device)
    build_s = time.perf_counter() - t0
    stack.vae.to(device)
    t0 = time.perf_counter()
    decode(stack, torch.randn(1, *stack.latent_shape, device=device))
    _sync(device)
    decode_s = time.perf_counter() - t0
    rows = []
    for precision in precisions:
        for lora in loras:
            rank = lora_rank if lora else 0
            run = work / f"{precision}_lora{rank}"
            try:
                rows.append(time_disback(stack, precision, rank, updates, warmup, batch, guidance, fake_steps,
                                         device, run))
            except Exception as e:  # noqa: BLE001 - a failed row (e.g. out of memory, fp16 overflow) is a result
                rows.append({"precision": precision, "lora_rank": rank, "batch": batch,
                             "error": f"{type(e).__name__}: {e}"[:500]})
            shutil.rmtree(run, ignore_errors=True)
            print(rows[-1], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    import diffusers
    import transformers

    result = {"size": size, "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
              "torch": torch.__version__, "diffusers": diffusers.__version__, "transformers": transformers.__version__,
              "unet_parameters": sum(p.numel() for p in stack.unet.parameters()),
              "guidance_scale": guidance, "stack_build_s": build_s, "vae_decode_1_image_s": decode_s,
              "method": "dmd loss, DisBack (backtrack) on a 2-node path: node 1 during the warm-up, then the teacher", "rows": rows}
    if out:
        save_metrics(out, result)
    return result
