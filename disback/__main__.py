"""Command line: ``python -m disback convert-teacher PKL OUTDIR`` (EDM pickle -> safetensors + JSON, once)."""
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
