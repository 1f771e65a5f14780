"""Command line: ``python -m disback convert-teacher PKL OUTDIR`` (EDM pickle -> safetensors + JSON, once);
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
    bench = sub.add_parser("sd-throughput", help="time DisBack updates on a random Stable Diffusion-sized stack")
    bench.add_argument("--size", choices=("tiny", "sd15"), default="tiny", help="tiny (CPU test) or SD 1.5's shapes")
    bench.add_argument("--updates", type=int, default=20, help="updates timed per row (after the warm-up)")
    bench.add_argument("--warmup", type=int, default=3, help="updates before timing starts")
    bench.add_argument("--precision", default="bf16,fp16", help="comma list of fp32, bf16, fp16 (UNet autocast)")
    bench.add_argument("--lora", default="on,off", help="comma list of on, off")
    bench.add_argument("--lora-rank", type=int, default=64)
    bench.add_argument("--batch", type=int, default=4, help="samples per update")
    bench.add_argument("--fake-steps", type=int, default=1, help="fake-score updates per generator update")
    bench.add_argument("--guidance", type=float, default=1.75, help="classifier-free guidance of the target")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--out", default=None, help="JSON file for the result")
    args = parser.parse_args(argv)
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


def _sd_throughput(args) -> int:
    from .sd_bench import PRECISIONS, sd_throughput

    precisions = args.precision.split(",")
    loras = [{"on": True, "off": False}.get(v) for v in args.lora.split(",")]
    if not set(precisions) <= set(PRECISIONS) or None in loras:
        print(f"sd-throughput: --precision from {tuple(PRECISIONS)}, --lora from on, off", file=sys.stderr)
        return 2
    result = sd_throughput(args.size, args.updates, precisions, loras, args.out, args.batch, args.warmup,
                           args.lora_rank, args.guidance, args.fake_steps, args.device)
    return 0 if all("error" not in r for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
