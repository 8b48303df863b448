"""CLI: ``python -m util.evaluate RUN [--split test] [--tta] [--data-root DIR] [--threshold T]``.

Evaluates a run's best checkpoint (else its last) with the run's detection threshold (chosen on validation for
``threshold: auto``). ``--data-root`` evaluates on any other OCELOT-layout folder: images of another size or
resolution are resampled to the run's training µm/px and the points mapped back; class-agnostic detection
precision/recall/F1 is reported for every set, and is the headline for a set whose cells all have one class.

Writes ``RUN/eval_<split>[_tta][_<data folder>][_t<threshold>].json`` and the predictions (OCELOT point format)
and prints a metrics table (also for the rotated/flipped copies listed in the run's ``eval_transforms``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _threshold(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        t = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold {text!r}: expected a number in [0, 1] or 'auto'") from None
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError(f"--threshold {t}: expected a number in [0, 1]")
    return t


def summary_line(run_dir: str | Path) -> str:
    """One line with a finished run's headline numbers (what ``train.sh`` prints at the end)."""
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    t = m["test"]
    det = m.get("detection") or {}
    return (f"test mF1 {t['mF1']:.4f} (BC F1 {t['cells']['BC']['f1']:.4f}, TC F1 {t['cells']['TC']['f1']:.4f}, "
            f"class-agnostic detection F1 {t['detection']['f1']:.4f}); threshold {det.get('threshold')} "
            f"({'chosen on ' + det['chosen_on'] if det.get('chosen_on') else 'fixed'}); "
            f"{m.get('steps')} steps, train {m.get('train_wall_s', 0):.0f} s, test evaluation {t['eval_wall_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m util.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run folder (runs/<name>/<run-id>) or a checkpoint inside it")
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument("--tta", action="store_true", help="D4 test-time augmentation")
    parser.add_argument("--no-transforms", action="store_true", help="skip the rotated/flipped copies")
    parser.add_argument("--data-root", default=None, help="another OCELOT-layout folder to evaluate on")
    parser.add_argument("--threshold", type=_threshold, default=None,
                        help="detection threshold instead of the run's: a number (e.g. 0.5, to compare with "
                             "the chosen one) or 'auto' (choose afresh on the run's validation split)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from util.training import evaluate, format_metrics_table

    try:
        res = evaluate(args.run, split=args.split, tta=args.tta, transforms=[] if args.no_transforms else None,
                       data_root=args.data_root, threshold=args.threshold, progress=not args.quiet)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"run folder: {res['run_dir']}  (checkpoint {res['checkpoint']}, tta={args.tta}, "
          f"threshold {res['threshold']}, data {res['data_root']})")
    print(format_metrics_table(res, args.split))
    return 0


if __name__ == "__main__":
    sys.exit(main())
