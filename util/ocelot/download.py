"""Download of the OCELOT 2023 archive: resumable, verified, extracted."""
from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path
from typing import Callable

from util.ocelot.validate import ValidationReport, validate_dataset

#: Public OCELOT 2023 archive (Zenodo record 8417503), CC BY-NC-SA 4.0.


OCELOT_URL = "https://zenodo.org/records/8417503/files/ocelot2023_v1.0.1.zip?download=1"



class DownloadError(RuntimeError):
    """Download, verification or extraction of an archive failed; nothing half-written is left in place."""



def _file_digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



def _fetch_with_resume(url: str, part: Path, *, timeout: float, max_retries: int, chunk: int,
                       progress: Callable[[int, int | None], None] | None) -> int | None:
    """Download ``url`` into ``part``, resuming with HTTP Range after interruptions. Returns the total size."""
    total: int | None = None
    failures = 0
    while True:
        have = part.stat().st_size if part.exists() else 0
        if total is not None and have >= total:
            return total
        req = urllib.request.Request(url, headers={"User-Agent": "equivariant-ocelot/0.1"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = resp.status
                if status == 206:
                    cr = resp.headers.get("Content-Range", "")
                    try:
                        start = int(cr.split()[1].split("-")[0])
                        tot = cr.split("/")[-1]
                        total = int(tot) if tot != "*" else total
                    except (IndexError, ValueError):
                        raise DownloadError(f"{url}: bad Content-Range header {cr!r}") from None
                    if start != have:
                        raise DownloadError(f"{url}: asked to resume at byte {have}, server sent from {start}")
                    mode = "ab"
                else:  # 200: the server ignored Range (or nothing was there yet): start again
                    cl = resp.headers.get("Content-Length")
                    total = int(cl) if cl is not None else None
                    mode = "wb"
                    have = 0
                with open(part, mode) as f:
                    while True:
                        buf = resp.read(chunk)
                        if not buf:
                            break
                        f.write(buf)
                        have += len(buf)
                        if progress:
                            progress(have, total)
            if total is None or have >= total:
                return total if total is not None else have
            raise http.client.IncompleteRead(b"", total - have)  # connection closed early
        except urllib.error.HTTPError as e:
            if e.code == 416 and have and total is None:
                return have  # the file was already complete
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (http.client.IncompleteRead, ConnectionError, TimeoutError, urllib.error.URLError,
                http.client.HTTPException, OSError) as e:
            if isinstance(e, DownloadError):
                raise
            failures += 1
            if failures > max_retries:
                raise DownloadError(f"{url}: transfer failed after {max_retries} retries "
                                    f"({type(e).__name__}: {e}); partial file kept at {part} for a later resume") \
                    from None
            time.sleep(min(2.0 ** (failures - 1) * 0.1, 5.0))



def _dataset_root_in(folder: Path) -> Path:
    """The folder holding ``metadata.json`` and ``images/`` inside an extracted archive."""
    cands = sorted({p.parent for p in folder.rglob("metadata.json") if (p.parent / "images").is_dir()},
                   key=lambda p: len(p.parts))
    if not cands:
        raise DownloadError(f"the archive holds no folder with metadata.json and images/ (OCELOT layout)")
    return cands[0]



def download_ocelot(dest: str | Path, url: str = OCELOT_URL, sha256: str | None = None, size: int | None = None,
                    md5: str | None = None, timeout: float = 60.0, max_retries: int = 5, chunk: int = 1 << 20,
                    keep_archive: bool = False, progress: Callable[[int, int | None], None] | None = None
                    ) -> ValidationReport:
    """Download, verify and extract the OCELOT 2023 archive into ``dest``; return its validation report.

    * The archive is fetched to ``<dest>.zip.part`` next to ``dest``; an interrupted transfer is resumed with an
      HTTP ``Range`` request (also on a later call).
    * Its size (``size``, else the server's) and checksum (``sha256`` and/or ``md5`` when given) are checked and
      every zip member's CRC is tested: a corrupt archive raises :class:`DownloadError` and is deleted.
    * It is extracted into a temporary folder next to ``dest`` which is renamed to ``dest`` only when complete, so
      ``dest`` either does not exist or holds the whole data set.
    * ``validate_dataset(dest)`` runs at the end (its report is returned and printed when it has problems).
    """
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise DownloadError(f"{dest} exists and is not empty; remove it or choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f"{dest.name}.zip.part"
    archive = dest.parent / f"{dest.name}.zip"
    if not archive.exists():
        total = _fetch_with_resume(url, part, timeout=timeout, max_retries=max_retries, chunk=chunk,
                                   progress=progress)
        got = part.stat().st_size
        expected = size if size is not None else total
        if expected is not None and got != expected:
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: downloaded {got} bytes but expected {expected}; the partial file was "
                                f"removed, run again to restart")
        os.replace(part, archive)
    for algo, want in (("sha256", sha256), ("md5", md5)):
        if want:
            have = _file_digest(archive, algo)
            if have.lower() != want.lower():
                archive.unlink(missing_ok=True)
                raise DownloadError(f"{archive.name}: {algo} mismatch (expected {want}, got {have}): the archive is "
                                    f"corrupt or not the expected file; it was deleted")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise DownloadError(f"{archive.name}: corrupt archive (CRC error in member {bad!r}); deleted")
                for name in zf.namelist():
                    target = (tmp / name).resolve()
                    if not str(target).startswith(str(tmp.resolve()) + os.sep) and target != tmp.resolve():
                        raise DownloadError(f"{archive.name}: member {name!r} would extract outside the folder")
                zf.extractall(tmp)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
            raise DownloadError(f"{archive.name}: corrupt archive, cannot be read as a zip ({e}); deleted") from None
        src = _dataset_root_in(tmp)
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(src, dest)
    except DownloadError:
        archive.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)
    report = validate_dataset(dest)
    if not report.ok:
        warnings.warn(f"downloaded data set has problems:\n{report.format(50)}", stacklevel=2)
    return report
