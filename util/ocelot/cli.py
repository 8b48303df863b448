"""``python -m util.ocelot validate|download`` (see :mod:`util.ocelot`)."""
from __future__ import annotations

import argparse
import sys
import time

from util.ocelot.download import DownloadError, OCELOT_URL, download_ocelot
from util.ocelot.validate import validate_dataset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m util.ocelot", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check an OCELOT-layout folder; exit code 1 when it has problems")
    v.add_argument("root")
    v.add_argument("--max-problems", type=int, default=200, help="how many problems to print (default 200)")
    v.add_argument("--no-decode", action="store_true",
                   help="check images by header and end marker only, without decoding pixels (faster)")
    d = sub.add_parser("download", help="download, verify and extract the OCELOT 2023 archive")
    d.add_argument("dest")
    d.add_argument("--url", default=OCELOT_URL)
    d.add_argument("--sha256", default=None)
    d.add_argument("--md5", default=None)
    d.add_argument("--size", type=int, default=None, help="expected archive size in bytes")
    d.add_argument("--keep-archive", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "validate":
        rep = validate_dataset(args.root, decode=not args.no_decode)
        print(rep.format(args.max_problems))
        return 0 if rep.ok else 1
    last = [0.0]

    def progress(have: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] > 2 or (total and have >= total):
            last[0] = now
            pct = f" ({100 * have / total:.1f}%)" if total else ""
            print(f"\r  {have / 1e6:,.1f} MB{pct}", end="", file=sys.stderr, flush=True)

    print(f"downloading {args.url} → {args.dest} (OCELOT 2023, CC BY-NC-SA 4.0)", file=sys.stderr)
    try:
        rep = download_ocelot(args.dest, url=args.url, sha256=args.sha256, md5=args.md5, size=args.size,
                              keep_archive=args.keep_archive, progress=progress)
    except DownloadError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    print(rep.format(50))
    return 0 if rep.ok else 1
