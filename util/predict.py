"""Cells in new images with a trained run: points CSV, OCELOT JSON, QuPath GeoJSON and an overlay PNG per image.

CLI::

    python -m util.predict RUN IMAGES_OR_FOLDERS... [--mpp M] --out DIR [--tta] [--threshold T] [--tile-size N]

``RUN`` is a run folder (``runs/<name>/<run-id>``, weights ``checkpoints/best.ckpt`` else ``last.ckpt``) or a
checkpoint inside one. Inputs are image files (``.jpg .jpeg .png .tif .tiff``) and folders (searched
non-recursively, sorted). Images of any size go through the run's exact sliding window
(``inference.blend: valid``) after resampling to the run's training resolution. Per image ``<stem>``:

* ``<stem>.csv``: header ``x,y,class,probability,class_name``; x = column, y = row (pixels of the input image),
  class 1 = BC (background cell), 2 = TC (tumour cell), probability = detection confidence;
* ``<stem>.json``: the OCELOT 2023 "Multiple points" file (:func:`util.ocelot.write_points_json`);
* ``<stem>.geojson``: a FeatureCollection of Point annotations that QuPath (≥ 0.4) imports with
  *File → Import objects from file*: classification ``Background cell`` / ``Tumour cell`` with a colour, the
  probability as the measurement ``probability``; coordinates in pixels (column, row), as in the CSV;
* ``<stem>_overlay.png``: the image with a circle per cell (blue BC, red TC).

µm/px of an image: ``--mpp`` wins; else ``metadata.json`` of an OCELOT-layout folder
(``<root>/images/<split>/cell/<id>``); else the file's own metadata (Aperio ``MPP =`` or OME ``PhysicalSizeX``
in a TIFF description, TIFF resolution tags in inch/cm, PNG/JPEG dpi) when it is a plausible microscope
resolution (0.05–10 µm/px; 72 dpi and similar screen defaults are not); else the image is reported and skipped.

A problem with one input (no µm/px known, a damaged image, a folder without images, a missing path) is reported
naming it and that input is skipped; the others are still written. Exit code: 0 all written, 1 some inputs
skipped, 2 nothing done (unusable run folder or arguments). Outputs are written atomically (temporary file and
rename). From Python: :func:`predict_images`. Inputs and their µm/px: :mod:`util.predict_inputs`; the files
written: :mod:`util.predict_outputs`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from util.cells import Threshold, class_thresholds, detect, probabilities
from util.ocelot import OcelotFormatError, read_image
from util.predict_inputs import (IMAGE_SUFFIXES, PLAUSIBLE_MPP, ImageResult, PredictError,  # noqa: F401
                                 _description_mpp, _pair_mpp, _plausible, _unique_names, find_images, image_mpp,
                                 metadata_mpp, ocelot_mpp)
from util.predict_outputs import (CLASS_NAMES, GEOJSON_CLASSES, OVERLAY_RADIUS_UM, _class_from_name,  # noqa: F401
                                  _num, _points, draw_overlay, points_csv, points_to_geojson,
                                  read_geojson_points, read_points_csv, write_outputs)


# ========================================================================================= prediction
def parse_threshold(text: str) -> Threshold:
    """``"0.4"`` -> 0.4; ``"BC=0.4,TC=0.6"`` -> ``{"BC": 0.4, "TC": 0.6}`` (checked in [0, 1])."""
    try:
        if "=" in text:
            thr: Threshold = {k.strip(): float(v) for k, v in (part.split("=", 1) for part in text.split(","))}
        else:
            thr = float(text)
        class_thresholds(thr)
    except ValueError as e:
        raise PredictError(f"--threshold {text!r}: expected a number in [0, 1] or BC=t,TC=t ({e})") from None
    return thr


def predict_images(run: str | Path, inputs: Iterable[str | Path] | str | Path, mpp: float | None = None,
                   out: str | Path | None = None, tta: bool = False, threshold: Threshold | None = None,
                   inference: Mapping[str, Any] | None = None, progress: bool = True,
                   keep_probabilities: bool = False, device: str | torch.device | None = None,
                   log=None) -> list[ImageResult]:
    """Cells in every image of ``inputs`` with the run's model; with ``out`` also the four files per image.

    Args:
        run: a run folder or a checkpoint inside one (:func:`util.training.load_run`).
        inputs: image files and folders (non-recursive).
        mpp: µm/px of every image (else from metadata, see :func:`image_mpp`).
        out: output folder (None: nothing is written, results only).
        tta: D4 test-time augmentation.
        threshold: detection threshold (a number or ``{"BC": t, "TC": t}``) instead of the run's.
        inference: overrides of the run's ``inference`` settings (``tile_size``: None = whole image, ...).
        progress: a tqdm progress bar over the images (stderr).
        keep_probabilities: keep each image's probability maps in its result.
        device: where the model runs (default: CUDA when available).
        log: a function called with each problem message (default: printed to stderr).

    Returns one :class:`ImageResult` per input image or failed input, in input order. A bad run folder raises
    (``FileNotFoundError``/``ValueError`` naming it); a problem with one input is that result's ``error``.
    """
    from tqdm.auto import tqdm

    from util.training import inference_kwargs, load_run

    def report(msg: str) -> None:
        if log is not None:
            log(msg)
        else:
            tqdm.write(f"skipped: {msg}", file=sys.stderr)

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    loaded = load_run(run)
    thr = threshold if threshold is not None else loaded.threshold
    if thr is None:
        raise PredictError(f"{loaded.run_dir}: detection.threshold is 'auto' but metrics.json holds no chosen "
                           f"threshold (the run has not finished); pass one, e.g. --threshold 0.5")
    class_thresholds(thr)
    kwargs = inference_kwargs(loaded.cfg, tta) | dict(inference or {})
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(dev).eval()

    results = find_images(inputs)
    for r in results:  # resolutions first (cheap): a missing --mpp shows before any prediction runs
        if r.ok:
            try:
                r.mpp = image_mpp(r.path, mpp)
            except (PredictError, OcelotFormatError, OSError) as e:
                r.error = str(e)
    _unique_names(results)
    for r in results:
        if not r.ok:
            report(r.error)
    todo = [r for r in results if r.ok]
    for r in tqdm(todo, desc="predict", unit="image", disable=not progress or not todo, file=sys.stderr):
        try:
            img = read_image(r.path)
        except (OcelotFormatError, OSError) as e:
            r.error = str(e)
            report(r.error)
            continue
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)
        probs = probabilities(model, x, r.mpp, loaded.model_mpp, **kwargs)
        r.cells = detect(probs, r.mpp, loaded.cfg.detection, threshold=thr, min_distance_um=loaded.min_distance_um)
        if keep_probabilities:
            r.probabilities = probs.cpu()
        if out is not None:
            r.files = write_outputs(out, r.name, img, r.cells, r.mpp)
    return results


# ================================================================================================ CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m util.predict", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder (runs/<name>/<run-id>) or a checkpoint inside it")
    parser.add_argument("inputs", nargs="+", help="image files (.jpg .jpeg .png .tif .tiff) and folders")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--mpp", type=float, default=None, help="µm per pixel of every image (default: metadata)")
    parser.add_argument("--tta", action="store_true", help="D4 test-time augmentation")
    parser.add_argument("--threshold", default=None, help="detection threshold instead of the run's: T or BC=T,TC=T")
    parser.add_argument("--tile-size", type=int, default=None,
                        help="sliding-window tile (px) instead of the run's; 0 = whole image at once")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    inference = None if args.tile_size is None else {"tile_size": args.tile_size or None}
    try:
        thr = parse_threshold(args.threshold) if args.threshold is not None else None
        if args.mpp is not None and not args.mpp > 0:
            raise PredictError(f"--mpp {args.mpp}: expected a positive number of µm per pixel")
        results = predict_images(args.run, args.inputs, mpp=args.mpp, out=args.out, tta=args.tta, threshold=thr,
                                 inference=inference, progress=not args.no_progress)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = [r for r in results if r.ok]
    skipped = [r for r in results if not r.ok]
    cells = sum(len(r.cells) for r in done if r.cells is not None)
    print(f"{len(done)} image(s), {cells} cells written to {args.out}"
          + (f"; {len(skipped)} input(s) skipped:" if skipped else ""))
    for r in skipped:
        print(f"  {r.error}")
    return 1 if skipped else 0


__all__ = ["IMAGE_SUFFIXES", "CLASS_NAMES", "GEOJSON_CLASSES", "PLAUSIBLE_MPP", "PredictError", "ImageResult",
           "find_images", "image_mpp", "metadata_mpp", "ocelot_mpp", "points_csv", "read_points_csv",
           "points_to_geojson", "read_geojson_points", "draw_overlay", "write_outputs", "parse_threshold",
           "predict_images", "main"]


if __name__ == "__main__":
    sys.exit(main())
