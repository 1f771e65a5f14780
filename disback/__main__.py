"""Command line: ``python -m disback convert-teacher PKL OUTDIR`` (EDM pickle -> safetensors + JSON, once),
``python -m disback download`` (the paper-scale assets into the asset cache, checked, teachers converted),
``python -m disback throughput ...`` (updates per second and peak memory on full-size random-weight EDM networks) and
``python -m disback sd-throughput ...`` (DisBack updates per second and peak memory on a random SD-sized stack)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status (2 for a refused or broken input)."""
    parser = argparse.ArgumentParser(prog="python -m disback")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert-teacher", help="convert an EDM network pickle, never executing its code")
    convert.add_argument("pkl", help="a downloaded EDM pickle, e.g. edm-ffhq-64x64-uncond-vp.pkl")
    convert.add_argument("outdir", help="folder for edm_teacher.safetensors and edm_teacher.json")
    download = sub.add_parser("download", help="fetch and check the paper-scale assets, convert the teachers")
    download.add_argument("names", nargs="*", help="asset file names from the manifest (default: all)")
    download.add_argument("--setting", help="only what this setting needs (ffhq64, afhqv2_64, imagenet64)")
    download.add_argument("--cache", help="the asset folder (default: $DISBACK_ASSETS, else ~/.cache/disback)")
    download.add_argument("--base-url", help="a mirror laid out like the cache, instead of the publishers' URLs")
    download.add_argument("--manifest", help="another manifest (default: disback/assets.yaml)")
    download.add_argument("--no-convert", action="store_true", help="leave the teacher pickles unconverted")
    download.add_argument("--list", action="store_true", help="list the assets and what is missing; fetch nothing")
    speed = sub.add_parser("throughput", help="updates/s and peak memory of stage 1 and 2 on random-weight EDM nets")
    speed.add_argument("--setting", default="imagenet64,ffhq64", help="comma list of ffhq64, afhqv2_64, imagenet64")
    speed.add_argument("--random-weights", action="store_true", required=True,
                       help="networks of the teachers' architecture with random weights (the only mode)")
    speed.add_argument("--methods", default="diff_instruct,disback", help="comma list of baselines and disback")
    speed.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (autocast)")
    speed.add_argument("--batch", default="32", help="one batch for all, or per setting: imagenet64=32,ffhq64=64")
    speed.add_argument("--updates", type=_at_least(1), default=20, help="timed updates per arm (after --warmup)")
    speed.add_argument("--warmup", type=_at_least(0), default=3, help="untimed updates per arm")
    speed.add_argument("--max-seconds", type=float, default=60.0, help="stop an arm's timed loop after this long")
    speed.add_argument("--size", default="full", help="full (the teachers' size) or tiny (CPU tests)")
    speed.add_argument("--resolution", type=_at_least(4), default=16, help="image size of --size tiny (even)")
    speed.add_argument("--path-nodes", type=_at_least(1), default=2, help="DisBack path nodes written and read per arm")
    speed.add_argument("--sampling-batch", type=_at_least(0), default=0,
                       help="also time one-step sampling against the teacher's EDM sampler (NFE 79 / 511) at this batch")
    speed.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    speed.add_argument("--out", required=True, help="JSON record, e.g. results/paper/throughput_imagenet64.json")
    bench = sub.add_parser("sd-throughput", help="time DisBack updates on a random Stable Diffusion-sized stack")
    bench.add_argument("--size", choices=("tiny", "sd15"), default="tiny", help="tiny (CPU test) or SD 1.5's shapes")
    bench.add_argument("--updates", type=_at_least(1), default=20, help="updates timed per row (after the warm-up)")
    bench.add_argument("--warmup", type=_at_least(0), default=3, help="updates before timing starts")
    bench.add_argument("--precision", default="bf16,fp16", help="comma list of fp32, bf16, fp16 (UNet autocast)")
    bench.add_argument("--lora", default="on,off", help="comma list of on, off")
    bench.add_argument("--lora-rank", type=_at_least(1), default=64)
    bench.add_argument("--batch", type=_at_least(1), default=4, help="samples per update")
    bench.add_argument("--fake-steps", type=_at_least(1), default=1, help="fake-score updates per generator update")
    bench.add_argument("--guidance", type=float, default=1.75, help="classifier-free guidance of the target")
    bench.add_argument("--checkpointing", action="store_true", help="UNet gradient checkpointing (memory for time)")
    bench.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    bench.add_argument("--out", default=None, help="JSON file for the result")
    args = parser.parse_args(argv)
    if getattr(args, "device", None) == "cuda" and not _cuda():
        parser.error(f"{args.command} --device cuda: no CUDA GPU here (use --device cpu)")
    if args.command == "download":
        return _download(args)
    if args.command == "throughput":
        return _throughput(args)
    if args.command == "sd-throughput":
        return _sd_throughput(args)
    from .checkpoint import read_json
    from .edm_pickle import CONVERTED_JSON, convert_teacher

    try:
        outdir = convert_teacher(args.pkl, args.outdir)
    except ValueError as e:  # ArtifactError, EDMPickleError, or arguments our networks do not implement
        print(f"convert-teacher: {e}", file=sys.stderr)
        return 2
    meta = read_json(outdir / CONVERTED_JSON)
    print(f"{args.pkl} -> {outdir}: {meta['class_name']} with {meta['kwargs'].get('model_type')}, "
          f"{meta['parameters']:,} parameters, data {meta['data_shape']}, {meta['label_dim']} classes, "
          f"weights sha256 {meta['sha256']}")
    return 0


def _at_least(least: int):
    """argparse type: an integer >= ``least``, refused with the option's name otherwise."""
    def count(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}; got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}; got {value}")
        return value
    return count


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _download(args) -> int:
    """``download``: one line per asset; any failure one line on stderr and exit status 2."""
    from . import download

    try:
        if args.list:
            root = download.asset_dir(args.cache)
            for a in download.select(args.names, args.setting, args.manifest):
                state = "present" if (root / a.path).is_file() else "missing"
                print(f"{a.name}: {state} at {root / a.path} (sha256 {a.sha256 or 'not in the manifest'})")
            lacking = download.missing(args.setting, args.cache, args.manifest)
            print("missing: " + (", ".join(map(str, lacking)) if lacking else "nothing"))
            return 0
        download.download_all(args.names, args.cache, args.base_url, setting=args.setting, manifest=args.manifest,
                              convert=not args.no_convert)
    except download.AssetError as e:
        print(f"download: {e}", file=sys.stderr)
        return 2
    return 0


def _throughput(args) -> int:
    from .throughput import run_throughput

    settings = args.setting.split(",")
    try:
        try:
            pairs = [item.split("=") for item in args.batch.split(",")] if "=" in args.batch else None
            batches = {k: int(v) for k, v in pairs} if pairs else dict.fromkeys(settings, int(args.batch))
        except ValueError:
            raise ValueError(f"--batch {args.batch!r}: must be an integer, or setting=integer pairs such as "
                             f"imagenet64=32,ffhq64=64") from None
        if min(batches.values()) < 1:
            raise ValueError(f"--batch {args.batch!r}: batches must be >= 1")
        missing = [s for s in settings if s not in batches]
        if missing:
            raise ValueError(f"--batch {args.batch!r}: no batch for {missing}")
        run_throughput(settings, args.methods.split(","), args.precision.split(","), batches, args.updates,
                       args.warmup, args.max_seconds, args.size, args.resolution, args.device, args.path_nodes,
                       args.out, sampling_batch=args.sampling_batch)
    except ValueError as e:
        print(f"throughput: {e}", file=sys.stderr)
        return 2
    print(f"throughput: wrote {args.out}")
    return 0


def _sd_throughput(args) -> int:
    from .sd_bench import PRECISIONS, sd_throughput

    precisions = args.precision.split(",")
    loras = [{"on": True, "off": False}.get(v) for v in args.lora.split(",")]
    if not set(precisions) <= set(PRECISIONS) or None in loras:
        print(f"sd-throughput: --precision from {tuple(PRECISIONS)}, --lora from on, off", file=sys.stderr)
        return 2
    result = sd_throughput(args.size, args.updates, precisions, loras, args.out, args.batch, args.warmup,
                           args.lora_rank, args.guidance, args.fake_steps, args.device, args.checkpointing)
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
