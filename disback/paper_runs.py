"""Notebook 07 (settings ffhq64, afhqv2_64, imagenet64): one pipeline for the paper's three EDM settings.

Each step is a call to the stages the cpu notebooks use (``shared_path`` for stage 1, ``shared_runs`` for the
baselines and DisBack, ``Setting.evaluate`` for FID during training), plus what only paper scale needs: the
teacher's FID with EDM's own sampler and NFE, the final FID over seed sets with a named protocol, and a table beside
the published numbers (``paper/claims.yaml``, ``paper_scale``). Three modes:

- ``tiny`` (smoke scale, the notebooks' defaults): tiny random EDM-architecture networks, random features, no asset;
- ``status`` (cpu profile): nothing is trained; a record with status "pending" says what a paper run needs;
- ``full`` (paper profile): the converted EDM teacher, Inception, EDM's reference; refuses to start, with one line,
  when an asset or the GPU is missing.

When a run is pending every step returns at once, so a notebook's cells stay plain calls.

Devices: ``start`` puts the teacher and the feature extractor on ``device`` ("auto": the GPU in mode "full", else the
CPU); stages 1 and 2 train where the teacher is, and every sample is drawn there from per-seed noise made on the CPU
(the same numbers on any device), ``batch`` seeds at a time, then measured on the extractor's device. Samples come
back to the CPU chunk by chunk, so 50k of them never sit on the GPU; metrics are floats.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .analysis import iters_per_node_for_share, metric_curve
from .config import DegradeConfig, DistillConfig
from .diffusion import EDM_TEACHER_SAMPLERS, edm_sampler, edm_stochastic_sampler, heun_nfe
from .edm_settings import ASSETS_ENV, missing_assets, paper_asset_dir
from .experiments import Paths, shared_path, shared_runs
from .generator import generate, module_device, seeded_labels, seeded_noise
from .results import save_metrics, save_table
from .settings import load_setting

NOTEBOOK = "07_paper_scale"  # one notebook, run once per setting
NOTEBOOKS = dict.fromkeys(("ffhq64", "afhqv2_64", "imagenet64"), NOTEBOOK)
MODES = ("tiny", "status", "full")
CLAIMS = Path(__file__).resolve().parents[1] / "paper" / "claims.yaml"
DEVICES = ("auto", "cpu", "cuda")  # start(device=...): "auto" = the GPU in mode "full", else the CPU (or "cuda:<i>")
GAN_ARM = "dmd2"  # the arm that takes DMD2's GAN term when train_arms gets gan_weight > 0
# Per-method settings every paper-scale arm of that method takes, as its authors run it: DMD2's two time-scale
# update rule, 5 fake-score updates per generator update (Yin et al. 2024; notebook 04 passes the same option).
METHOD_OPTIONS = {"dmd2": {"fake_steps": 5}}


class PaperRunRefused(RuntimeError):
    """A paper-profile run cannot start here (an asset or the GPU is missing)."""


@dataclass
class PaperRun:
    name: str                 # the setting: ffhq64, afhqv2_64 or imagenet64
    notebook: str             # 07_paper_scale
    profile: str
    mode: str                 # one of MODES
    paths: Paths
    pending: str | None       # why nothing runs here (mode "status"), else None
    setting: object = None    # the loaded Setting (None when pending)
    teacher: object = None    # on ``device``: the stages train where it is
    device: str = "cpu"       # where the teacher, the training and the feature extractor run


def paper_needs(name: str, assets=None) -> list[str]:
    """What a full run of setting ``name`` needs that this machine lacks (empty: ready)."""
    missing = missing_assets(name, assets)
    needs = [f"the assets of `make download` in the cache folder (${ASSETS_ENV}, default ~/.cache/disback; missing: "
             f"{', '.join(missing)})"] if missing else []
    if not torch.cuda.is_available():
        needs.append("a CUDA GPU")
    return needs


def resolve_device(device: str, mode: str) -> str:
    """``device`` of ``start``: "auto" is the GPU in mode "full" (when there is one), else the CPU."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise ValueError(f"device={device!r}: must be one of {DEVICES} or 'cuda:<index>'")
    if device == "auto":
        return "cuda" if mode == "full" and torch.cuda.is_available() else "cpu"
    if device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: this machine has no CUDA GPU; use 'cpu' or 'auto'")
    return device


def start(name: str, profile: str, mode: str, results_root, runs_root, resolution: int = 16, seed: int = 0,
          num_reference: int = 64, device: str = "auto") -> PaperRun:
    """The first cell: load the setting and its teacher on ``device`` (see ``resolve_device``); in mode "status"
    write the pending record instead; in mode "full" raise ``PaperRunRefused`` (one line) when something is missing."""
    if name not in NOTEBOOKS:
        raise ValueError(f"setting={name!r}: must be one of {tuple(NOTEBOOKS)}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: must be one of {MODES}")
    paths = Paths.make(runs_root, results_root, profile, name)
    run = PaperRun(name, NOTEBOOKS[name], profile, mode, paths, None)
    if mode in ("status", "full"):
        needs = paper_needs(name)
        if mode == "full" and needs:
            raise PaperRunRefused(f"{run.notebook} at profile {profile!r} needs " + "; ".join(needs)
                                  + f" (cache folder here: {paper_asset_dir()})")
        if mode == "status":
            run.pending = (f"paper scale only: `make download`, then `make reproduce PROFILE=paper SETTING={name}` on a "
                           f"GPU; " + ("this machine lacks " + "; ".join(needs) if needs else "this machine has all"))
            save_metrics(paths.metrics(run.notebook), {
                "notebook": run.notebook, "setting": name, "profile": profile, "status": "pending", "primary": "fid",
                "missing": run.pending, "needs": needs, "summary": {}, "figures": [], "tables": []})
            print(f"pending: {run.pending}")
            return run
    run.device = resolve_device(device, mode)
    run.setting = load_setting(name, seed=seed, num_reference=num_reference, device=run.device,
                               **({"tiny": True, "resolution": resolution} if mode == "tiny" else {}))
    run.teacher = run.setting.teacher_fn()
    return run


def _fid(run: PaperRun, sample_fn, seeds, batch: int) -> float:
    """FID of ``sample_fn(seeds_chunk)`` (images in [-1, 1], any device) over ``seeds``, ``batch`` seeds at a time."""
    from .inception import frechet_distance, sample_statistics

    metric_fn = run.setting.metric_fn
    return frechet_distance(sample_statistics(sample_fn, seeds, metric_fn.extractor(), batch), metric_fn.reference)


def teacher_fid(run: PaperRun, num_samples: int, num_steps: int = 0, seed_offset: int = 10 ** 6,
                batch: int = 250) -> dict | None:
    """FID of the teacher sampled as EDM reports it (Heun 40 steps, NFE 79; ImageNet: stochastic 256, NFE 511), or
    with ``num_steps`` steps of the same sampler when it is not 0 (smoke scale); ``batch`` samples at a time."""
    if run.pending:
        return None
    s, device = run.setting, module_device(run.teacher)
    kind, kwargs = EDM_TEACHER_SAMPLERS[run.name]
    kwargs = {**kwargs, **({"num_steps": num_steps} if num_steps else {})}

    def sample(seeds):  # [len(seeds), *data_shape] on the teacher's device, from per-seed noise drawn on the CPU
        noise, labels = seeded_noise(seeds, s.data_shape, device), seeded_labels(seeds, s.label_dim)
        labels = None if labels is None else labels.to(device)
        if kind == "heun":
            return edm_sampler(run.teacher, noise, labels, **kwargs)
        return edm_stochastic_sampler(run.teacher, noise, labels, generators=[  # per-seed churn noise (on the CPU)
            torch.Generator().manual_seed(k + 17) for k in seeds], **kwargs)

    fid = _fid(run, sample, range(seed_offset, seed_offset + num_samples), batch)
    return {"fid": fid, "nfe": heun_nfe(kwargs["num_steps"]), "sampler": kind, "num_samples": num_samples,
            "edm_nfe": not num_steps}


def degradation(run: PaperRun, degrade_config: dict):
    """Stage 1 (shared with the other notebooks of this profile and setting)."""
    return None if run.pending else shared_path(run.paths, run.teacher, DegradeConfig.from_dict(degrade_config))


def train_arms(run: PaperRun, path, distill_config: dict, methods, share: float, seeds, num_eval: int,
               gan_weight: float = 0.0, real_images: str = "") -> dict:
    """The baselines (``methods``, teacher as constant target) and DisBack (Diff-Instruct loss along ``path`` with
    ``share`` of the updates on intermediate nodes); FID of ``num_eval`` samples every ``eval_every`` updates.

    ``gan_weight`` > 0 adds DMD2's GAN term to the ``GAN_ARM`` ("dmd2", which must be in ``methods``) and to no other
    arm: its config (and so its ``config.json`` and key) carries ``gan_weight``. The term trains on real images:
    ``real_images``, an ``.npz`` of the dataset (``data.load_image_npz``), or else the setting's own training data
    when it has some. The paper settings have none here: ``make download`` fetches no dataset images."""
    if gan_weight and GAN_ARM not in methods:
        raise ValueError(f"gan_weight={gan_weight!r}: DMD2's GAN term goes on the {GAN_ARM!r} arm; add it to methods "
                         f"(now {list(methods)})")
    if run.pending:
        return {}
    base = DistillConfig.from_dict({**distill_config, "sigma_init": float(path.config["sigma_init"])})
    ipn = iters_per_node_for_share(share, path.num_nodes, base.iters)
    configs = arm_configs(base, methods, gan_weight, ipn)
    real = _real_images(run, real_images, gan_weight) if gan_weight else None
    return {arm: shared_runs(run.paths, run.teacher, run.setting, cfg, seeds, num_eval, path,
                             real_data=real if cfg.gan_weight else None)
            for arm, cfg in configs.items()}


def arm_configs(base: DistillConfig, methods, gan_weight: float = 0.0, iters_per_node: int | None = None) -> dict:
    """Each arm's configuration: every method of ``methods`` with its ``METHOD_OPTIONS`` (the ``GAN_ARM`` with
    ``gan_weight`` when it is > 0), and DisBack (the Diff-Instruct loss along the path, ``iters_per_node`` a node)."""
    configs = {m: base.replace(method=m, **METHOD_OPTIONS.get(m, {})) for m in methods}
    configs["DisBack"] = base.replace(method="diff_instruct", backtrack=True,
                                      **({} if iters_per_node is None else {"iters_per_node": iters_per_node}))
    if gan_weight and GAN_ARM in configs:
        configs[GAN_ARM] = configs[GAN_ARM].replace(gan_weight=float(gan_weight))
    return configs


def _real_images(run: PaperRun, real_images: str, gan_weight: float):
    """The GAN term's real data: the ``real_images`` .npz, else the setting's training data; a clear error if none."""
    if real_images:
        from .data import load_image_npz

        return load_image_npz(real_images)
    if run.setting.train is not None:
        return run.setting.train, run.setting.train_labels
    raise ValueError(f"gan_weight={gan_weight!r}: DMD2's GAN term needs the real images of {run.name}, which this "
                     f"repository does not download; pass real_images= an .npz of them (uint8 'images' [N, H, W, C], "
                     f"optional 'labels'; see disback.data.load_image_npz), or use gan_weight=0")


def final_fid(run: PaperRun, arms: dict, seed_sets: int, num_samples: int, protocol: str = "edm-min",
              batch: int = 250) -> dict:
    """One-step FID of each arm's final generator (first seed) over ``seed_sets`` disjoint sets of seeds, ``batch``
    samples at a time on the generator's device."""
    if run.pending:
        return {}
    from .inception import fid_over_seed_sets

    s, out = run.setting, {}
    sets = [range(k * num_samples, (k + 1) * num_samples) for k in range(seed_sets)]
    for arm, results in arms.items():
        gen = results[0].generator
        out[arm] = fid_over_seed_sets(lambda seeds: generate(gen, seeds, s.data_shape, s.label_dim, batch=batch)[0],
                                      s.metric_fn.reference, s.metric_fn.extractor(), sets, protocol, batch)
    return out


def convergence_figure(run: PaperRun, arms: dict, teacher: dict | None) -> list:
    """FID against generator updates per arm (mean and band over seeds), the teacher's FID as a line."""
    if run.pending:
        return []
    import matplotlib.pyplot as plt

    from .plots import log_axis, plot_band, save_figure, setup_style

    setup_style()
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, results in arms.items():
        plot_band(ax, *metric_curve([r.log for r in results], "fid"), arm)
    ax.axhline(teacher["fid"], ls="--", color="0.3", label=f"teacher (NFE {teacher['nfe']})")
    ax.set(xlabel="generator update", ylabel="FID", title=f"{run.name}: one-step generator FID ({run.mode})")
    log_axis(ax)
    ax.legend(fontsize=8)
    return save_figure(fig, run.paths.figure(f"{run.notebook}_convergence"))


def comparison_table(run: PaperRun, final: dict, teacher: dict | None) -> list:
    """Ours (teacher, each arm) beside the published numbers of ``paper/claims.yaml`` for this setting."""
    if run.pending:
        return []
    import yaml

    rows = [{"method": f"EDM teacher ({teacher['sampler']})", "nfe": teacher["nfe"], "fid": teacher["fid"],
             "source": f"ours, {teacher['num_samples']} samples"}]
    rows += [{"method": arm, "nfe": 1, "fid": f["fid"],
              "source": f"ours, {f['protocol']} over {len(f['per_set'])} x {f['num_samples'][0]} samples"}
             for arm, f in final.items()]
    published = yaml.safe_load(CLAIMS.read_text()).get("paper_scale", {}).get(run.name, [])
    rows += [{"method": p["method"], "nfe": p["nfe"], "fid": p["fid"], "source": f"published: {p['source']}"}
             for p in published]
    return save_table(rows, run.paths.table(f"{run.notebook}_fid"))


def save(run: PaperRun, summary: dict, figures=(), tables=()):
    """The notebook's record (status "ok"); a pending run keeps the record ``start`` wrote."""
    if run.pending:
        return run.paths.metrics(run.notebook)
    from .experiments import save_record

    summary = {"mode": run.mode, "setting_info": run.setting.info, **summary}
    return save_record(run.paths, run.notebook, run.profile, "fid", summary, figures, tables)
