"""Command line: ``python -m disback convert-teacher PKL OUTDIR`` (EDM pickle -> safetensors + JSON, once) and
``python -m disback download`` (the paper-scale assets into the asset cache, checked, teachers converted)."""
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
    args = parser.parse_args(argv)
    if args.command == "download":
        return _download(args)
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


if __name__ == "__main__":
    sys.exit(main())
