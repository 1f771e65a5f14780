"""`make download` against a small HTTP server on 127.0.0.1 (never the internet): checked downloads, resuming an
interrupted one with a Range request, trust on first use, the manifest winning over a record, one-line failures."""
import contextlib
import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from disback import download
from disback.__main__ import main
from disback.download import Asset, AssetError
from disback.edm_pickle import load_converted_teacher
from test_edm_pickle import _tiny_song, _write_edm_pickle, standin  # noqa: F401  (standin is a fixture)

GOOD = bytes(range(256)) * 400  # 100 KiB: several reads of the client, so a cut lands midway
SHA = hashlib.sha256(GOOD).hexdigest()


@contextlib.contextmanager
def serve(files: dict, cut: dict | None = None, ranges: bool = True):
    """Serve ``files`` {url path: bytes} with HTTP Range and If-Range support (the ETag is the body's sha256); ``cut``
    {url path: n} sends the full length header but closes the connection after n bytes, once. Yields (base URL,
    [(path, Range header) of each request], [If-Range header of each request])."""
    cut, seen, validators = dict(cut or {}), [], []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body, asked = files.get(self.path), self.headers.get("Range")
            seen.append((self.path, asked))
            validators.append(self.headers.get("If-Range"))
            if body is None:
                self.send_error(404)
                return
            etag = f'"{hashlib.sha256(body).hexdigest()}"'
            same = self.headers.get("If-Range") in (None, etag)
            start = int(re.fullmatch(r"bytes=(\d+)-", asked).group(1)) if asked and ranges and same else 0
            if start >= len(body) > 0:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            self.send_header("Content-Length", str(len(body) - start))
            self.send_header("ETag", etag)
            self.end_headers()
            n = cut.pop(self.path, None)
            self.wfile.write(body[start:] if n is None else body[start:start + n])
            self.close_connection = True

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen, validators
    finally:
        server.shutdown()
        server.server_close()


def one_asset(sha256: str = SHA, name: str = "ref.npz", kind: str = "fid-ref", setting: str | None = "tiny") -> dict:
    """A manifest of one asset, served from <base>/refs/<name> (its publisher URL is never reached)."""
    return {name: Asset(name=name, kind=kind, setting=setting, url=f"http://invalid.example/{name}",
                        path=f"refs/{name}", sha256=sha256)}


def fetch(cache, base, manifest, **kw):
    return download.download_all(cache=cache, base_url_override=base, manifest=manifest, progress=False, **kw)


def test_good_file_is_checked_renamed_and_later_only_verified(tmp_path, capsys):
    with serve({"/refs/ref.npz": GOOD}) as (base, seen, _):
        assert fetch(tmp_path, base, one_asset()) == {"ref.npz": SHA}
        assert fetch(tmp_path, base, one_asset()) == {"ref.npz": SHA}  # present: checked, not fetched again
    final = tmp_path / "refs" / "ref.npz"
    assert final.read_bytes() == GOOD and not Path(f"{final}.part").exists()
    assert len(seen) == 1 and "present" in capsys.readouterr().out.splitlines()[-1]
    assert download.verify("ref.npz", tmp_path, one_asset()) == SHA


def test_wrong_checksum_stops_with_one_line_and_leaves_no_file(tmp_path):
    with serve({"/refs/ref.npz": GOOD}) as (base, _, _), pytest.raises(AssetError) as e:
        fetch(tmp_path, base, one_asset(sha256="0" * 64))
    message = str(e.value)
    assert "\n" not in message and message.startswith("ref.npz: ") and SHA in message and "make download" in message
    assert list((tmp_path / "refs").iterdir()) == []  # neither the file nor a .part


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "server-ignores-range"])
def test_server_dying_midway_leaves_a_part_that_the_rerun_resumes(tmp_path, ranges):
    final = tmp_path / "refs" / "ref.npz"
    part = Path(f"{final}.part")
    with serve({"/refs/ref.npz": GOOD}, cut={"/refs/ref.npz": 40_000}) as (base, _, _), pytest.raises(AssetError) as e:
        fetch(tmp_path, base, one_asset())
    assert "interrupted at 40,000 of 102,400 bytes" in str(e.value) and "\n" not in str(e.value)
    assert not final.exists() and part.read_bytes() == GOOD[:40_000]  # never taken for a finished file
    with serve({"/refs/ref.npz": GOOD}, ranges=ranges) as (base, seen, validators):  # back, on another port
        assert fetch(tmp_path, base, one_asset()) == {"ref.npz": SHA}
    assert seen == [("/refs/ref.npz", "bytes=40000-")] and validators == [f'"{SHA}"']
    assert final.read_bytes() == GOOD and list(final.parent.iterdir()) == [final]


def test_a_file_changed_between_tries_is_fetched_whole_not_spliced(tmp_path, capsys):
    """If-Range: the server sends the new version from its first byte, so trust on first use records a real file."""
    other = GOOD[::-1]
    with serve({"/refs/ref.npz": GOOD}, cut={"/refs/ref.npz": 40_000}) as (base, _, _), pytest.raises(AssetError):
        fetch(tmp_path, base, one_asset(sha256=""))
    with serve({"/refs/ref.npz": other}) as (base, seen, _):
        fetch(tmp_path, base, one_asset(sha256=""))
    assert seen == [("/refs/ref.npz", "bytes=40000-")]
    assert (tmp_path / "refs/ref.npz").read_bytes() == other
    assert hashlib.sha256(other).hexdigest() in capsys.readouterr().out


def test_complete_part_is_finished_without_fetching_bytes_again(tmp_path):
    part = tmp_path / "refs" / "ref.npz.part"
    part.parent.mkdir()
    part.write_bytes(GOOD)  # killed after the last byte, before the rename
    with serve({"/refs/ref.npz": GOOD}) as (base, seen, _):
        fetch(tmp_path, base, one_asset())
    assert seen == [("/refs/ref.npz", f"bytes={len(GOOD)}-")]  # answered 416: nothing left to send
    assert (tmp_path / "refs" / "ref.npz").read_bytes() == GOOD
    (tmp_path / "refs" / "ref.npz").unlink()
    part.write_bytes(GOOD + b"junk")  # longer than the file: no prefix of it, fetched whole again
    with serve({"/refs/ref.npz": GOOD}) as (base, seen, _):
        fetch(tmp_path, base, one_asset())
    assert seen == [("/refs/ref.npz", f"bytes={len(GOOD) + 4}-"), ("/refs/ref.npz", None)]
    assert (tmp_path / "refs" / "ref.npz").read_bytes() == GOOD


def test_a_second_download_into_the_same_cache_is_refused(tmp_path):
    from filelock import FileLock

    with FileLock(tmp_path / ".download.lock"), pytest.raises(AssetError, match="another `make download` is writing"):
        fetch(tmp_path, "http://127.0.0.1:9", one_asset())


def test_trust_on_first_use_records_then_detects_a_tampered_file(tmp_path, capsys):
    with serve({"/refs/ref.npz": GOOD}) as (base, _, _):
        fetch(tmp_path, base, one_asset(sha256=""))
    final = tmp_path / "refs" / "ref.npz"
    assert download.record_path(final).read_text() == f"{SHA}  ref.npz\n"
    assert f"sha256 {SHA} recorded in" in capsys.readouterr().out  # printed for the user to commit
    assert download.verify("ref.npz", tmp_path, one_asset(sha256="")) == SHA
    final.write_bytes(GOOD[:-1] + b"x")
    for check in (lambda: download.verify("ref.npz", tmp_path, one_asset(sha256="")),
                  lambda: fetch(tmp_path, "http://127.0.0.1:9", one_asset(sha256=""))):
        with pytest.raises(AssetError, match=r"ref\.npz: .* the record .* altered or replaced; delete it") as e:
            check()
        assert "\n" not in str(e.value)


def test_manifest_checksum_wins_over_the_record(tmp_path):
    final = tmp_path / "refs" / "ref.npz"
    final.parent.mkdir()
    final.write_bytes(GOOD)
    download.record_path(final).write_text(f"{'1' * 64}  ref.npz\n")  # a stale record
    assert download.verify("ref.npz", tmp_path, one_asset()) == SHA
    download.record_path(final).write_text(f"{SHA}  ref.npz\n")
    with pytest.raises(AssetError, match="the manifest assets.yaml says 2222"):
        download.verify("ref.npz", tmp_path, one_asset(sha256="2" * 64))


def _refused_port() -> int:
    with socket.socket() as s:  # bound, then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_is_one_clear_line_and_the_cli_returns_2(tmp_path, capsys):
    base = f"http://127.0.0.1:{_refused_port()}"
    with pytest.raises(AssetError) as e:
        fetch(tmp_path, base, one_asset())
    assert re.fullmatch(r"ref\.npz: cannot reach 127\.0\.0\.1:\d+ \(.*refused.*\): connect to the internet and run "
                        r"`make download` again, or fetch \S+ by hand to \S+ref\.npz", str(e.value))
    with serve({}) as (empty, _, _), pytest.raises(AssetError, match=r"^ref\.npz: \S+ answered HTTP 404 .* moved"):
        fetch(tmp_path, empty, one_asset())
    manifest = tmp_path / "assets.yaml"
    manifest.write_text(yaml.safe_dump({"assets": [vars(a) for a in one_asset().values()]}))
    args = ["download", "--cache", str(tmp_path / "c"), "--manifest", str(manifest)]
    capsys.readouterr()
    assert main(args + ["--base-url", base]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("download: ref.npz: cannot reach") and "Traceback" not in err
    with serve({"/refs/ref.npz": GOOD}) as (good, _, _):
        assert main(args + ["--base-url", good]) == 0
    assert main(args + ["--list"]) == 0 and "missing: nothing" in capsys.readouterr().out
    assert main(args + ["unknown.pkl"]) == 2
    assert main(["download", "--manifest", str(tmp_path / "none.yaml")]) == 2


def test_teacher_is_converted_into_its_setting_folder_once(tmp_path, standin, capsys):
    persistence, dnnlib_util, remove = standin
    net, kwargs = _tiny_song()
    x, sigma = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        expected = net(x, sigma, None)
    pkl = tmp_path / "tiny.pkl"
    _write_edm_pickle(pkl, net, kwargs, persistence, dnnlib_util, tmp_path / "marker")
    remove()
    body = pkl.read_bytes()
    manifest = {**one_asset(hashlib.sha256(body).hexdigest(), "edm-tiny.pkl", "teacher"), **one_asset(),
                **one_asset("", "weights.pth", "inception", None)}
    cache = tmp_path / "cache"
    assert download.missing("tiny", cache, manifest) == [cache / "teachers/tiny/edm_teacher.json",
                                                         cache / "refs/ref.npz", cache / "refs/weights.pth"]
    with pytest.raises(AssetError, match=r"^tiny: missing .*: run `make download SETTING=tiny`"):
        download.require("tiny", cache, manifest)
    files = {"/refs/edm-tiny.pkl": body, "/refs/ref.npz": GOOD, "/refs/weights.pth": b"w"}
    with serve(files) as (base, seen, _):
        fetch(cache, base, manifest, setting="tiny")
        meta = cache / "teachers/tiny/edm_teacher.json"
        written = meta.stat().st_mtime_ns
        fetch(cache, base, manifest, setting="tiny")
        (cache / "refs/edm-tiny.pkl").unlink()  # kept only its conversion: nothing is fetched again
        fetch(cache, base, manifest, setting="tiny")
    assert seen.count(("/refs/edm-tiny.pkl", None)) == 1
    out = capsys.readouterr().out
    assert meta.stat().st_mtime_ns == written and "converted before" in out and "pickle not kept" in out
    assert download.teacher_dir("tiny", cache) == meta.parent and download.missing("tiny", cache, manifest) == []
    assert download.fid_reference("tiny", cache, manifest) == cache / "refs/ref.npz"
    assert download.inception_weights(cache, manifest) == cache / "refs/weights.pth"
    teacher = load_converted_teacher(download.teacher_dir("tiny", cache))
    with torch.no_grad():
        assert torch.equal(teacher(x, sigma, None), expected)
    assert not (tmp_path / "marker").exists()


def test_cache_folder_follows_one_variable_and_the_manifest_is_complete(tmp_path, monkeypatch):
    monkeypatch.delenv(download.ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert download.asset_dir() == tmp_path / "home/.cache/disback"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert download.asset_dir() == tmp_path / "xdg/disback"
    monkeypatch.setenv(download.ENV, str(tmp_path / "assets"))
    assert download.asset_dir() == tmp_path / "assets"
    assert download.asset_dir(tmp_path / "given") == tmp_path / "given"
    assets = download.load_manifest()
    assert sorted(a.setting for a in assets.values() if a.kind == "teacher") == ["afhqv2_64", "ffhq64", "imagenet64"]
    assert download.inception_weights().name == "weights-inception-2015-12-05-6726825d.pth"
    assert download.fid_reference("imagenet64") == tmp_path / "assets/fid-refs/imagenet-64x64.npz"
    assert all(a.url.startswith("https://") and a.url.endswith(a.name) for a in assets.values())
    with pytest.raises(AssetError, match="setting 'ring2d' needs no download"):
        download.select(setting="ring2d")
