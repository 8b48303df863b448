"""util.ocelot.download_ocelot against a local HTTP server on 127.0.0.1 (Range resume, checksum, corrupt zip)."""
from __future__ import annotations

import hashlib
import http.server
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO
from util.ocelot import DownloadError, download_ocelot


class _Server:
    """Serves one archive; can cut the first ``cut_times`` transfers after ``cut_at`` bytes; logs Range headers."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.cut_at: int | None = None
        self.cut_times = 0
        self.ignore_range = False
        self.ranges: list[str | None] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                data = outer.payload
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = 0
                if rng and not outer.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if outer.cut_times > 0 and outer.cut_at is not None and start < outer.cut_at:
                    outer.cut_times -= 1
                    self.wfile.write(body[: outer.cut_at - start])
                    self.wfile.flush()
                    self.close_connection = True
                    return  # connection closes with the body incomplete
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/ocelot2023_v1.0.1.zip"

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def archive(tiny_ocelot_root: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The tiny synthetic set zipped like the real archive (one top folder holding the OCELOT layout)."""
    out = tmp_path_factory.mktemp("zip") / "ocelot.zip"
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in sorted(tiny_ocelot_root.rglob("*")):
            if p.is_file():
                zf.write(p, f"ocelot2023_v1.0.1/{p.relative_to(tiny_ocelot_root)}")
    return out.read_bytes()


def _leftovers(parent: Path, dest: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p != dest)


def test_resume_after_interrupted_transfer(archive: bytes, tmp_path: Path) -> None:
    sha = hashlib.sha256(archive).hexdigest()
    dest = tmp_path / "ocelot"
    with _Server(archive) as srv:
        srv.cut_at, srv.cut_times = len(archive) // 3, 1
        rep = download_ocelot(dest, url=srv.url, sha256=sha, size=len(archive), chunk=4096)
    assert srv.ranges[0] is None and srv.ranges[1] == f"bytes={len(archive) // 3}-"  # resumed where it stopped
    assert rep.ok, rep.format()
    assert (dest / "metadata.json").is_file() and len(list((dest / "images" / "train" / "cell").iterdir())) == 4
    assert _leftovers(tmp_path, dest) == []  # no .part, no archive, no temporary folder


def test_resume_from_partial_file_of_an_earlier_run(archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "ocelot"
    with _Server(archive) as srv:
        srv.cut_at, srv.cut_times = len(archive) // 2, 10  # every try from the start is cut: first call fails
        with pytest.raises(DownloadError, match="partial file kept"):
            download_ocelot(dest, url=srv.url, max_retries=0, chunk=4096)
        assert (tmp_path / "ocelot.zip.part").stat().st_size == len(archive) // 2
        assert not dest.exists()
        srv.cut_times = 0
        rep = download_ocelot(dest, url=srv.url, sha256=hashlib.sha256(archive).hexdigest())
    assert srv.ranges[-1] == f"bytes={len(archive) // 2}-" and rep.ok


def test_server_without_range_support_restarts_cleanly(archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "ocelot"
    with _Server(archive) as srv:
        srv.cut_at, srv.cut_times, srv.ignore_range = len(archive) // 2, 1, True
        rep = download_ocelot(dest, url=srv.url, sha256=hashlib.sha256(archive).hexdigest(), chunk=4096)
    assert srv.ranges[1] is not None  # it asked to resume, the server sent everything again (200)
    assert rep.ok and _leftovers(tmp_path, dest) == []


def test_checksum_mismatch_is_refused(archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "ocelot"
    with _Server(archive) as srv:
        with pytest.raises(DownloadError, match="sha256 mismatch"):
            download_ocelot(dest, url=srv.url, sha256="0" * 64)
    assert not dest.exists() and _leftovers(tmp_path, dest) == []


def test_corrupt_archive_is_refused_and_nothing_half_written(archive: bytes, tmp_path: Path) -> None:
    bad = bytearray(archive)
    mid = len(bad) // 2
    bad[mid:mid + 64] = bytes(64)  # damage member data: the CRC test must catch it
    dest = tmp_path / "ocelot"
    with _Server(bytes(bad)) as srv:
        with pytest.raises(DownloadError, match="corrupt archive"):
            download_ocelot(dest, url=srv.url)
    assert not dest.exists() and _leftovers(tmp_path, dest) == []
    with _Server(b"this is not a zip file at all" * 10) as srv:
        with pytest.raises(DownloadError, match="corrupt archive"):
            download_ocelot(dest, url=srv.url)
    assert not dest.exists() and _leftovers(tmp_path, dest) == []


def test_refuses_non_empty_destination(archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "ocelot"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(DownloadError, match="not empty"):
        download_ocelot(dest, url="http://127.0.0.1:9/never")
    assert (dest / "keep.txt").read_text() == "mine"


def test_cli_download(archive: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "cli"
    with _Server(archive) as srv:
        res = subprocess.run([sys.executable, "-m", "util.ocelot", "download", str(dest), "--url", srv.url,
                              "--sha256", hashlib.sha256(archive).hexdigest()], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "no problems" in res.stdout and (dest / "metadata.json").is_file()
    shutil.rmtree(dest)
