"""Converters of public cell-point data sets to the OCELOT 2023 layout (see ``util.ocelot``).

``CONVERTERS`` maps a name to ``convert(src, out, force=False) -> summary``. Each one reads an upstream
checkout, writes an OCELOT-layout folder (images, cell CSVs, ``metadata.json``, ``README.md``) and runs
``util.ocelot.validate_dataset`` on it.

CLI::

    python -m util.convert brca_m2c SRC OUT [--force]          # TopoXLab/Dataset-BRCA-M2C checkout -> OCELOT layout
    python -m util.convert resample SRC OUT --mpp 0.25 [--limit N]   # an OCELOT-layout folder at another µm/px

One module a converter: :mod:`util.convert_brca`, :mod:`util.convert_resample` (shared: :mod:`util.convert_common`).
``OUT`` must be empty or absent. With ``--force`` the files a previous conversion wrote there (listed in its
``.convert_manifest.json``) are deleted first; other files are never touched.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from util.convert_brca import (BRCA_CLASS_MAP, BRCA_LABEL_SUFFIX, BRCA_MPP_NOTE, BRCA_URL,  # noqa: F401
                               BrcaSource, _brca_readme, _git_commit, _read_split_list, _sig5, brca_entry,
                               convert_brca_m2c, crop_brca_points, parse_brca_name, read_brca_labels,
                               scan_brca_source)
from util.convert_common import MANIFEST, ConversionError, _prepare_out, _Writer  # noqa: F401
from util.convert_resample import convert_resample

CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {"brca_m2c": convert_brca_m2c, "resample": convert_resample}


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m util.convert", description=__doc__.split("\n")[0])
    ap.add_argument("name", choices=sorted(CONVERTERS), help="which public data set to convert")
    ap.add_argument("src", help="upstream checkout (e.g. a clone of TopoXLab/Dataset-BRCA-M2C), or for "
                                "'resample' an OCELOT-layout folder")
    ap.add_argument("out", help="output folder (empty or absent)")
    ap.add_argument("--force", action="store_true", help="replace an earlier conversion in OUT")
    ap.add_argument("--mpp", type=float, default=None, help="resample: the target resolution in µm/px")
    ap.add_argument("--limit", type=int, default=None, help="resample: only the first N samples of each split")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.name == "resample":
        extra = {"mpp": args.mpp, "limit": args.limit}
    elif args.mpp is not None or args.limit is not None:
        ap.error(f"--mpp and --limit belong to 'resample', not to {args.name!r}")
    try:
        summary = CONVERTERS[args.name](args.src, args.out, force=args.force, **extra)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not summary.get("license_copied", True):
        print(f"warning: no LICENSE in {args.src}; the upstream licence notice must accompany any copy",
              file=sys.stderr)
    for split, c in summary["counts"].items():
        print(f"{split}: {c['patches']} patches, {c['cells']} cells (class 1: {c['class1']}, "
              f"class 2: {c['class2']})")
    if summary["skipped_too_small"]:
        print(f"skipped (too small): {', '.join(summary['skipped_too_small'])}")
    rep = summary["report"]
    print(rep.format(50))
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
