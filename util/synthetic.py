"""Synthetic OCELOT-layout data set: the embedded default (``data/synthetic_ocelot``).

``make_synthetic_ocelot(root, n_train, n_val, n_test, size, seed)`` writes H&E-like cell patches, tissue patches,
cell CSVs, tissue masks and ``metadata.json`` in exactly the OCELOT 2023 layout (see ``util.ocelot``).

What is drawn (all in µm, converted with the patch resolution; cell patches at ``mpp`` µm/px, tissue patches at
4 × ``mpp`` so a cell patch covers the central-ish quarter of its tissue patch's width, as in OCELOT):

* a smooth random "cancer field" at tissue level; above a per-sample threshold it is a cancer region
  (tissue label 2, else 1). The cell patch is a window of that field, so the tissue patch is real context;
* stroma: eosin-pink with randomly oriented collagen fibres and fine texture;
* **tumour cells** (class 2): only inside cancer regions, densely packed in nests (nuclei often touch), with a
  pale-purple cytoplasm halo; nuclei round to slightly oval, vesicular (pale centre, dark rim, granular
  chromatin, 1–2 nucleoli);
* **background cells** (class 1): scattered in stroma (some lymphocytes also infiltrate cancer regions):
  small round, solid, very dark lymphocytes (partly in small clusters) and elongated solid fibroblasts.

Sizes are chosen so that nuclear **area overlaps** between the classes (elongated fibroblasts are as large as
small tumour nuclei, lymphocytes as large as the smallest) and each image has its own **stain variation**
(stain vectors, concentrations, illumination), so a colour-threshold + blob-size rule does not separate the
classes (see ``benchmarks/baseline_rule.py``); shape, texture and context do. Orientations are uniformly random
(the distribution is rotation- and reflection-symmetric). Files are byte-identical for the same arguments:
every sample draws from its own ``numpy`` generator seeded by ``(seed, index)``, JPEGs and PNGs are written with
fixed encoder settings and JSON with sorted keys.

CLI: ``python -m util.synthetic ROOT [--n-train 40 --n-val 8 --n-test 8 --size 512 --seed 0 --force]``.
``--force`` replaces only an earlier synthetic set: it deletes exactly the files that set's ``metadata.json``
lists (and says which), and refuses, deleting nothing, a folder that holds anything else.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from util.manifest import describe, plan_removal, remove_owned
from util.ocelot import SPLITS, write_cells_csv
from util.synthetic_render import (_E_VEC, _H_VEC, DEFAULT_MPP, TISSUE_FACTOR, _place,  # noqa: F401
                                   _render_cell_patch, _render_nucleus, _render_tissue_patch, _smooth_noise, _unit,
                                   make_sample)

JPEG_QUALITY = 90


def _jpeg_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0, optimize=False,
                                     progressive=False)
    return buf.getvalue()


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "L").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _own_files(root: Path) -> list[str] | None:
    """The files an earlier run wrote to ``root``, rebuilt from its ``metadata.json`` (the marker:
    ``generator.module == "util.synthetic"``); None when ``root`` holds no set written by this module."""
    try:
        meta = json.loads((root / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    gen = meta.get("generator") if isinstance(meta, dict) else None
    pairs = meta.get("sample_pairs") if isinstance(meta, dict) else None
    if not isinstance(gen, dict) or gen.get("module") != "util.synthetic" or not isinstance(pairs, dict):
        return None
    files = ["metadata.json"]
    for sid, entry in pairs.items():
        split = entry.get("subset") if isinstance(entry, dict) else None
        if split not in SPLITS:
            return None
        files += [f"images/{split}/cell/{sid}.jpg", f"images/{split}/tissue/{sid}.jpg",
                  f"annotations/{split}/cell/{sid}.csv", f"annotations/{split}/tissue/{sid}.png"]
    return files


def _replaceable(root: Path) -> list[str]:
    """The files of an earlier synthetic set in ``root`` (what ``overwrite`` deletes); raise when ``root`` is
    not such a set or holds anything else (nothing is deleted)."""
    own = _own_files(root)
    if own is None:
        raise FileExistsError(f"{root}: not a synthetic set (no metadata.json with generator.module "
                              f"'util.synthetic'), so overwrite/--force will not delete it; nothing was deleted. "
                              f"Remove it yourself or choose another folder")
    return plan_removal(root, own, tool="util.synthetic", error=FileExistsError)


def _new_temp_dir(root: Path) -> Path:
    """An empty hidden folder next to ``root`` made with a plain ``mkdir``, so its mode follows the umask."""
    while True:
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def make_synthetic_ocelot(root: str | Path, n_train: int = 40, n_val: int = 8, n_test: int = 8, size: int = 512,
                          seed: int = 0, mpp: float = DEFAULT_MPP, overwrite: bool = False,
                          log: Callable[[str], None] | None = None) -> Path:
    """Write a synthetic OCELOT-layout data set to ``root`` and return its path.

    ``size`` is the side of the (square) cell and tissue patches in pixels; cell patches are at ``mpp`` µm/px,
    tissue patches at ``4 × mpp``. Splits with no samples get no folders. The set is written to a temporary
    folder next to ``root`` and renamed into place when complete; folders and files follow the umask.

    An existing non-empty ``root`` raises ``FileExistsError`` unless ``overwrite``. With ``overwrite`` only an
    earlier synthetic set is replaced: exactly the files its ``metadata.json`` lists are deleted (``log``, when
    given, is told which); a folder holding anything else raises ``FileExistsError`` naming those files, before
    any work, and nothing is deleted.
    """
    root = Path(root)
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if int(n) < 0:
            raise ValueError(f"{name} must be ≥ 0, got {n}")
    if int(size) < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    if not mpp > 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    replace = root.is_dir() and any(root.iterdir())
    if replace:
        if not overwrite:
            raise FileExistsError(f"{root} exists and is not empty (pass overwrite=True / --force to replace a "
                                  f"synthetic set written there earlier)")
        _replaceable(root)  # refuse before any work
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_dir(root)
    try:
        counts = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        total = sum(counts.values())
        width = max(3, len(str(total)))
        pairs: dict[str, Any] = {}
        index = 0
        for split in SPLITS:
            if counts[split] == 0:
                continue
            for kind in ("cell", "tissue"):
                (tmp / "images" / split / kind).mkdir(parents=True, exist_ok=True)
                (tmp / "annotations" / split / kind).mkdir(parents=True, exist_ok=True)
            for _ in range(counts[split]):
                index += 1
                sid = f"{index:0{width}d}"
                s = make_sample(seed, index, size, mpp)
                (tmp / "images" / split / "cell" / f"{sid}.jpg").write_bytes(_jpeg_bytes(s["cell_image"]))
                (tmp / "images" / split / "tissue" / f"{sid}.jpg").write_bytes(_jpeg_bytes(s["tissue_image"]))
                write_cells_csv(tmp / "annotations" / split / "cell" / f"{sid}.csv", s["points"])
                (tmp / "annotations" / split / "tissue" / f"{sid}.png").write_bytes(_png_bytes(s["tissue_mask"]))
                pairs[sid] = {"subset": split, **s["meta"]}
        meta = {
            "dataset": "synthetic OCELOT-layout set (util.synthetic)",
            "generator": {"module": "util.synthetic", "version": 1, "seed": int(seed), "size": int(size),
                          "mpp": mpp, "tissue_mpp": mpp * TISSUE_FACTOR, "counts": counts},
            "license": "generated data, no restrictions",
            "sample_pairs": pairs,
        }
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if root.is_dir():
            removed = remove_owned(root, _own_files(root) or [], tool="util.synthetic", error=FileExistsError)
            if removed and log is not None:
                log(f"removed {len(removed)} file(s) of the earlier synthetic set in {root}: {describe(removed)}")
            root.rmdir()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m util.synthetic",
                                 description="Write the synthetic OCELOT-layout default data set.")
    ap.add_argument("root", help="output folder, e.g. data/synthetic_ocelot")
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--n-val", type=int, default=8)
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--size", type=int, default=512, help="patch side in pixels (default 512)")
    ap.add_argument("--mpp", type=float, default=DEFAULT_MPP, help="µm/px of the cell patches (default 0.2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true",
                    help="replace a synthetic set written there earlier (only its own files are deleted; a folder "
                         "with anything else is refused)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = make_synthetic_ocelot(args.root, args.n_train, args.n_val, args.n_test, args.size, args.seed,
                                     mpp=args.mpp, overwrite=args.force, log=print)
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    from util.ocelot import validate_dataset

    rep = validate_dataset(root)
    print(rep.format(20))
    print(f"wrote {root} in {time.perf_counter() - t0:.1f} s")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
