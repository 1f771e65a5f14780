"""``make download``: the paper-scale assets (EDM teachers, FID reference statistics, Inception weights), verified.

The manifest ``disback/assets.yaml`` lists each file's URL, its place in the cache and its sha256 where one is
known. A file is fetched into ``<file>.part`` (continued with an HTTP Range request after an interruption),
checked, and only then renamed to its own name: a file under its own name is always complete and checked. Where
the manifest has no sha256, the first complete download records the file's checksum in ``<file>.sha256`` (trust
on first use) and every later use is checked against that record; a sha256 committed to the manifest wins. Each
EDM pickle is then converted once (``edm_pickle.convert_teacher``, which never executes it). Every failure is
one ``AssetError`` line naming the file and what to do.

Cache layout (``asset_dir()``: $DISBACK_ASSETS, else $XDG_CACHE_HOME/disback, else ~/.cache/disback)::

    edm/edm-ffhq-64x64-uncond-vp.pkl           (+ .sha256 record)  teachers as published
    fid-refs/ffhq-64x64.npz                    (+ .sha256 record)  EDM's FID reference statistics
    inception/weights-inception-2015-12-05-6726825d.pth   (+ .sha256 record)
    teachers/ffhq64/edm_teacher.{safetensors,json}       converted teachers: what runs load (teacher_dir)
"""
from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml
from filelock import FileLock, Timeout
from tqdm import tqdm

from .checkpoint import ArtifactError, read_json, sha256_file
from .edm_pickle import CONVERTED_JSON, convert_teacher

MANIFEST = Path(__file__).with_name("assets.yaml")
ENV = "DISBACK_ASSETS"
KINDS = ("teacher", "fid-ref", "inception")
CHUNK = 1 << 20
TIMEOUT_S = 60
ACTION = "run `make download` again"


class AssetError(ArtifactError):
    """An asset is missing, cannot be fetched or does not match its checksum; the message says what to do."""


@dataclass(frozen=True)
class Asset:
    name: str            # the file's name as published: what `make download NAMES=...` and asset_path() take
    kind: str            # one of KINDS
    setting: str | None  # the setting it serves (teachers/<setting>/ for a teacher); None: every setting
    url: str             # where its publisher serves it
    path: str            # its place in the cache, relative to asset_dir()
    sha256: str          # 64 hex digits, or "" while unknown (trust on first use)


# ---------------------------------------------------------------- manifest and places

def load_manifest(path=None) -> dict[str, Asset]:
    """The manifest's assets by name, each field checked."""
    path = Path(path or MANIFEST)
    try:
        entries = (yaml.safe_load(path.read_text()) or {}).get("assets") or []
    except (OSError, yaml.YAMLError, AttributeError) as e:
        raise AssetError(f"{path}: not a readable manifest ({(str(e).splitlines() or [''])[0]})") from None
    assets = {}
    for entry in entries:
        try:
            asset = Asset(**{k: entry[k] for k in Asset.__dataclass_fields__})
        except (KeyError, TypeError) as e:
            fields = list(Asset.__dataclass_fields__)
            raise AssetError(f"{path}: entry {entry}: needs the fields {fields} ({e})") from None
        if asset.kind not in KINDS or not re.fullmatch(r"([0-9a-f]{64})?", asset.sha256 or "") \
                or (asset.kind == "teacher" and not asset.setting) or Path(asset.path).is_absolute():
            raise AssetError(f"{path}: {asset.name}: kind must be one of {KINDS} (a teacher names its setting), "
                             "sha256 64 lower-case hex digits or empty, path relative")
        assets[asset.name] = asset
    return assets


def _manifest(manifest) -> dict[str, Asset]:
    return manifest if isinstance(manifest, dict) else load_manifest(manifest)


def asset_dir(cache=None) -> Path:
    """The asset cache: ``cache`` if given, else $DISBACK_ASSETS, else $XDG_CACHE_HOME/disback (~/.cache/disback)."""
    if cache is not None:
        return Path(cache).expanduser()
    if os.environ.get(ENV):
        return Path(os.environ[ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "disback"


def asset_path(name: str, cache=None, manifest=None) -> Path:
    """Where the asset ``name`` (a file name of the manifest) lies in the cache once downloaded."""
    assets = _manifest(manifest)
    if name not in assets:
        raise AssetError(f"unknown asset {name!r}; the manifest lists {', '.join(assets)}")
    return asset_dir(cache) / assets[name].path


def teacher_dir(setting: str, cache=None) -> Path:
    """The converted teacher of ``setting`` (``edm_pickle.load_converted_teacher`` reads it)."""
    return asset_dir(cache) / "teachers" / setting


def _one(kind: str, setting: str | None, manifest) -> Asset:
    found = [a for a in _manifest(manifest).values() if a.kind == kind and a.setting in (setting, None)]
    if not found:
        raise AssetError(f"no {kind} asset for setting {setting!r} in the manifest")
    return found[0]


def fid_reference(setting: str, cache=None, manifest=None) -> Path:
    """EDM's FID reference statistics (``.npz``) of ``setting``."""
    return asset_dir(cache) / _one("fid-ref", setting, manifest).path


def inception_weights(cache=None, manifest=None) -> Path:
    """The Inception weights file ``inception.inception_extractor`` loads."""
    return asset_dir(cache) / _one("inception", None, manifest).path


def select(names=None, setting: str | None = None, manifest=None) -> list[Asset]:
    """The assets named (default all), or those ``setting`` needs (its own and the shared ones)."""
    assets = _manifest(manifest)
    unknown = [n for n in names or () if n not in assets]
    if unknown:
        raise AssetError(f"unknown asset {', '.join(unknown)}; the manifest lists {', '.join(assets)}")
    chosen = [assets[n] for n in names] if names else list(assets.values())
    if setting is not None:
        chosen = [a for a in chosen if a.setting in (setting, None)]
        if not any(a.setting == setting for a in chosen):
            settings = sorted({a.setting for a in assets.values() if a.setting})
            raise AssetError(f"setting {setting!r} needs no download; settings with assets: {', '.join(settings)}")
    return chosen


def missing(setting: str | None = None, cache=None, manifest=None) -> list[Path]:
    """What ``setting`` (default: every setting) still lacks in the cache: converted teachers, references, weights.

    Only presence is checked (no hashing); ``verify`` checks contents.
    """
    out = []
    for a in select(setting=setting, manifest=manifest):
        path = teacher_dir(a.setting, cache) / CONVERTED_JSON if a.kind == "teacher" else asset_dir(cache) / a.path
        if not path.is_file():
            out.append(path)
    return out


def require(setting: str, cache=None, manifest=None) -> None:
    """Raise one ``AssetError`` line naming what ``setting`` lacks and the command that fetches it."""
    lacking = missing(setting, cache, manifest)
    if lacking:
        raise AssetError(f"{setting}: missing {', '.join(map(str, lacking))}: run `make download SETTING={setting}` "
                         f"(or point {ENV} / make's ASSETS to the folder that holds them)")


# ---------------------------------------------------------------- checksums

def record_path(path) -> Path:
    """The trust-on-first-use record beside a cached file."""
    return Path(f"{path}.sha256")


def _expected(asset: Asset, final: Path) -> tuple[str | None, str | None]:
    """(sha256, where it comes from): the manifest's, else the record beside ``final``, else (None, None)."""
    if asset.sha256:
        return asset.sha256, f"the manifest {MANIFEST.name}"
    record = record_path(final)
    if record.is_file():
        return (record.read_text().split() or [""])[0], f"the record {record}"
    return None, None


def _trust(asset: Asset, final: Path, digest: str) -> None:
    """First use of a file the manifest has no checksum for: record it, and say so."""
    record_path(final).write_text(f"{digest}  {final.name}\n")
    print(f"{asset.name}: sha256 {digest} recorded in {record_path(final)} (trust on first use; compare it and "
          f"commit it to disback/{MANIFEST.name} to pin it)")


def verify(name: str, cache=None, manifest=None) -> str:
    """sha256 of the cached asset ``name``, checked against the manifest, else against its record (made on first
    use); raises ``AssetError`` if it is missing or differs."""
    assets = _manifest(manifest)
    asset, final = assets.get(name), asset_path(name, cache, assets)
    if not final.is_file():
        raise AssetError(f"{name}: missing {final}: run `make download`")
    digest = sha256_file(final)
    expected, source = _expected(asset, final)
    if expected is None:
        _trust(asset, final, digest)
    elif digest != expected:
        raise AssetError(f"{name}: {final} has sha256 {digest}, {source} says {expected}: the file was altered or "
                         f"replaced; delete it and {ACTION}")
    return digest


# ---------------------------------------------------------------- download

def _validator_path(part: Path) -> Path:
    """Beside a ``.part``: the ETag (or Last-Modified) of the response it came from, sent back as If-Range."""
    return Path(f"{part}.validator")


def _fetch(url: str, part: Path, name: str, progress: bool) -> None:
    """Append ``url``'s bytes to ``part``, asking only for what it lacks (HTTP Range, If-Range: the same version of
    the file, else the server sends all of it again); raise on any interruption."""
    offset = part.stat().st_size if part.is_file() else 0
    stamp = _validator_path(part)
    headers = {"User-Agent": "disback-download"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if stamp.is_file():
            headers["If-Range"] = stamp.read_text()
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # nothing left to send
            if e.headers.get("Content-Range") == f"bytes */{offset}":
                return  # the .part holds the whole file, checked next
            part.unlink()  # the .part is no prefix of this file: start again
            return _fetch(url, part, name, progress)
        todo = f"{ACTION} later" if e.code >= 500 else f"the file may have moved (disback/{MANIFEST.name} has its URL)"
        raise AssetError(f"{name}: {url} answered HTTP {e.code} {e.reason}; {todo}, or fetch it by hand to "
                         f"{part.with_suffix('')}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise AssetError(f"{name}: cannot reach {urllib.parse.urlsplit(url).netloc} ({reason}): connect to the "
                         f"internet and {ACTION}, or fetch {url} by hand to {part.with_suffix('')}") from None
    except ValueError as e:  # not a URL urllib can open
        raise AssetError(f"{name}: cannot fetch {url!r}: {e}") from None
    with response:
        if offset and response.status != 206:  # the Range was ignored, or the file changed: start from byte 0
            offset = 0
        if not offset:
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if validator:
                stamp.write_text(validator)
            else:
                stamp.unlink(missing_ok=True)
        elif not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            raise AssetError(f"{name}: {url} resumed at the wrong place ({response.headers.get('Content-Range')}); "
                             f"delete {part} and {ACTION}")
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length else None
        received, interrupted = 0, False
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                   disable=not progress)
        with open(part, "ab" if offset else "wb") as f, bar:
            try:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException):  # what arrived stays in the .part
                interrupted = True
    if interrupted or (total is not None and offset + received < total):
        size = f"{total:,}" if total is not None else "?"
        raise AssetError(f"{name}: download interrupted at {offset + received:,} of {size} bytes; {ACTION} to resume "
                         f"it from {part}")


def _download(asset: Asset, root: Path, base_url: str | None, progress: bool) -> tuple[str, str]:
    """(sha256, what happened) for one asset: checked in place if present, else fetched, checked and renamed."""
    final = root / asset.path
    if final.is_file():
        return verify(asset.name, root, {asset.name: asset}), "present"
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    url = f"{base_url.rstrip('/')}/{asset.path}" if base_url else asset.url
    _fetch(url, part, asset.name, progress)
    digest = sha256_file(part)
    _validator_path(part).unlink(missing_ok=True)
    expected, source = _expected(asset, final)
    if expected is None:
        _trust(asset, final, digest)
    elif digest != expected:
        part.unlink()
        raise AssetError(f"{asset.name}: the download from {url} has sha256 {digest}, {source} says {expected}; "
                         f"removed it. {ACTION[0].upper() + ACTION[1:]}; if it differs again, the published file "
                         "changed: check with its publisher before changing the checksum")
    os.replace(part, final)
    return digest, "downloaded"


def _converted_from(asset: Asset, root: Path) -> str | None:
    """sha256 of the pickle that teachers/<setting>/ was converted from, if it holds a converted teacher."""
    meta = teacher_dir(asset.setting, root) / CONVERTED_JSON
    return read_json(meta).get("source", {}).get("sha256") if meta.is_file() else None


def _convert(asset: Asset, root: Path, digest: str) -> str:
    """Convert a downloaded teacher pickle into teachers/<setting>/ unless that already holds this very pickle."""
    out = teacher_dir(asset.setting, root)
    if _converted_from(asset, root) == digest:
        return "converted before"
    try:
        convert_teacher(root / asset.path, out)
    except ValueError as e:  # EDMPickleError, ArtifactError, or arguments our networks do not implement
        raise AssetError(f"{asset.name}: cannot convert it: {e}") from None
    return f"converted into {out}"


def _kept_conversion(asset: Asset, root: Path) -> str | None:
    """sha256 of a teacher pickle deleted after its checked conversion (nothing to fetch again), else None."""
    expected = _expected(asset, root / asset.path)[0]
    if asset.kind != "teacher" or (root / asset.path).is_file() or not expected:
        return None
    return expected if _converted_from(asset, root) == expected else None


def download_all(names=None, cache=None, base_url_override: str | None = None, *, setting: str | None = None,
                 manifest=None, convert: bool = True, progress: bool = True) -> dict[str, str]:
    """Fetch and check the named assets (default all, or those ``setting`` needs) into the cache, converting the
    teachers; returns {name: sha256}. ``base_url_override``: a mirror laid out like the cache (``<url>/<path>``)."""
    assets = select(names, setting, manifest)
    root = asset_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(root / ".download.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise AssetError(f"another `make download` is writing {root}; wait for it to finish") from None
    digests = {}
    try:
        for asset in assets:
            kept = _kept_conversion(asset, root) if convert else None
            if kept:
                digest, done = kept, "converted before, pickle not kept"
            else:
                digest, done = _download(asset, root, base_url_override, progress)
                if convert and asset.kind == "teacher":
                    done += ", " + _convert(asset, root, digest)
            digests[asset.name] = digest
            print(f"{asset.name}: {done} ({root / asset.path}, sha256 {digest})")
    finally:
        lock.release()
    return digests
