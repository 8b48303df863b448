"""Numerics fingerprint: would a training here give bit-identical results to one on another machine?

    python benchmarks/numerics.py [STUDY POINT | CONFIG [key=value ...]] [--steps 6] [--modes native,avx2,...]
                                  [--reference results/numerics/fingerprints.csv] [--record FILE] [--emulate CPU]

A CPU training is bit-identical on two machines only where every kernel rounds alike. Which kernels run
depends on the CPU: PyTorch's own (ATen) kernels dispatch on the instruction set, oneDNN's convolutions and
MKL's matrix products and exp/log pick code paths (and blockings) by CPU type. Training 450 steps turns a
different last bit into a test mF1 difference the size of seed-to-seed spread, so a 16-minute rerun is a slow
way to find out. This script trains the first ``--steps`` steps of the same configuration (default: the
brca_cpu point ``lr-plain_rot-0.001``; the real data pipeline and the engine's model, loss, optimizer and
clipping, ``benchmarks/train.py``'s hand-written loop) once per *mode*, each in its own one-thread process,
and prints a SHA-1 of the first batch's images (the data pipeline) and of every weight after the last step.
The modes are :mod:`util.numerics`'s (all by default):

* ``native``: no settings; the kernels this CPU picks by itself.
* ``avx2``: ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2``; the AVX2 code paths (every
  x86-64 CPU since about 2015 has AVX2).
* ``compatible``: ``ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_CBWR=COMPATIBLE``; the oldest.
* ``portable``: AVX2 paths for ATen and oneDNN, ``MKL_CBWR=COMPATIBLE``, and ``NUMERICS_EXACT_SQRT=1``: every
  float32 square root correctly rounded (MKL's vector-maths root differs between Intel and AMD in every branch).
* ``compatible_exact``: ``compatible`` with correctly rounded square roots.

oneMKL documents its ``AVX2`` reproducibility branch for Intel CPUs only (elsewhere it uses its automatic
branch), and oneDNN documents none, so ``avx2`` can agree between Intel machines only. On an AMD EPYC the
``portable`` mode gave the weights an Intel Xeon gave under ``avx2`` after 6 steps of lr-plain_rot-0.001
(``results/numerics/README.md``): the candidate for agreement between AMD and Intel machines.

Equal weight hashes on two machines for a mode mean a training under that mode gives the same numbers on both
(the same kernels, the same inputs); a different hash means it will not. ``--reference`` compares each mode
with the rows of a CSV recorded on other machines (``--record`` appends this machine's rows to one); the
committed ``results/numerics/fingerprints.csv`` holds the machines measured so far. s/step is the median over
the steps after the first, with the ratio to ``native`` measured in the same run.

``--emulate CPU`` runs each mode under QEMU's user-mode emulator (``qemu-x86_64 -cpu CPU``, Debian package
``qemu-user``) as that CPU model, e.g. ``EPYC-Rome-v1`` (AMD, AVX2) or ``Haswell-v4`` (Intel, AVX2): the
emulated CPUID reports that model's vendor, instruction sets and caches, so ATen, oneDNN and MKL pick the code
paths they would pick there, while QEMU computes the floating-point instructions IEEE 754 defines exactly.
That is how one machine tells which code paths another CPU type would take without having one. Not faithful
for the approximate instructions (reciprocal, reciprocal square root), whose low bits each CPU design defines
and which MKL's vector maths uses, e.g. for ``torch.sqrt`` (results/numerics/README.md). QEMU's emulator has no
AVX-512; it is 40-60x slower on a tiny net and far slower on a study net, and QEMU 7.2 crashed after the first
step or two: use ``--steps 1``; s/step means nothing there. The rows record ``qemu <CPU>`` as the CPU model.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from util.numerics import MODES, apply_from_env  # noqa: E402

DEFAULT_POINT = ("configs/study/brca_cpu.yaml", "lr-plain_rot-0.001")
EMULATED_CPU_VARIABLE = "NUMERICS_EMULATED_CPU"  # set for a worker run under qemu-x86_64: the CPU model it emulates
FIELDS = ("mode", "settings", "point", "steps", "data_sha1", "weights_sha1", "last_loss", "s_per_step",
          "cpu_model", "cpu_capability", "torch", "numpy", "recorded")


def sha1(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def load_target(items: list[str]):
    """``(label, config)`` from ``STUDY POINT`` (a study YAML and one of its point ids) or ``CONFIG [k=v ...]``."""
    from util.config import load_config

    if not items:
        items = list(DEFAULT_POINT)
    if len(items) == 2 and "=" not in items[1] and not items[1].endswith((".yaml", ".yml")):
        from util.study.points import expand_points
        from util.study.spec import load_study
        from util.study import store

        study = load_study(items[0])
        points = {p.id: p for p in expand_points(study, store.read_rows(store.runs_csv(study)))}
        point = points.get(items[1])
        if point is None or point.config is None:
            raise SystemExit(f"{items[1]!r} is not a point of {items[0]} with a configuration (see `util.study plan`)")
        return f"{study.name}:{point.id}", point.config.replace(["accelerator=cpu"])
    return " ".join(items), load_config(items[0], items[1:] + ["accelerator=cpu"])


def fingerprint(items: list[str], steps: int) -> dict:
    """Train the first ``steps`` steps here (one thread) and hash the first batch and the final weights."""
    from benchmarks.train import _loader, _module, bare_steps
    from util.training.runs import environment_info

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    apply_from_env()  # the portable modes' correctly rounded square roots
    label, cfg = load_target(items)
    total = max(steps, cfg.max_steps or steps)  # the run's own schedule and sampler: its first steps exactly
    module = _module(cfg, total)
    data_hash, times, loss = "", [], float("nan")
    t0 = time.perf_counter()
    for step, batch, loss_t in bare_steps(module, _loader(module, cfg, total)):
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        if step == 0:
            data_hash = sha1(batch["image"], batch["mask"])
        loss = float(loss_t)
        if step + 1 >= steps:
            break
    env = environment_info()
    emulated = os.environ.get(EMULATED_CPU_VARIABLE)  # /proc/cpuinfo under QEMU is the host's
    return {"point": label, "steps": steps, "data_sha1": data_hash,
            "weights_sha1": sha1(*module.model.state_dict().values()), "last_loss": f"{loss:.8f}",
            "s_per_step": round(statistics.median(times[1:] or times), 3),
            "cpu_model": f"qemu {emulated}" if emulated else env["device"]["cpu_model"],
            "cpu_capability": env["device"]["cpu_capability"], "torch": env["packages"]["torch"],
            "numpy": env["packages"]["numpy"], "recorded": time.strftime("%Y-%m-%d")}


def qemu_command(cpu: str) -> list[str]:
    """``[qemu-x86_64, -cpu, CPU]``; a clear error when QEMU is missing or does not know ``cpu``."""
    exe = shutil.which("qemu-x86_64")
    if exe is None:
        raise SystemExit("--emulate needs QEMU's user-mode emulator qemu-x86_64 (Debian/Ubuntu: "
                         "apt-get install qemu-user); it is not on PATH")
    listed = subprocess.run([exe, "-cpu", "help"], capture_output=True, text=True).stdout.split()
    if cpu not in listed:
        models = sorted({w for w in listed if w.startswith(("EPYC", "Haswell", "Skylake", "Icelake"))})
        raise SystemExit(f"--emulate {cpu!r}: qemu-x86_64 has no such CPU model; e.g. {', '.join(models[:12])} "
                         "(all: qemu-x86_64 -cpu help)")
    return [exe, "-cpu", cpu]


def run_mode(mode: str, items: list[str], steps: int, emulator: list[str] | None = None) -> dict:
    """:func:`fingerprint` in a fresh one-thread process with the mode's settings (read at torch import),
    under ``emulator`` (a :func:`qemu_command`) when given."""
    from util.study.runner import child_env

    env = child_env(1, None, MODES[mode])  # only the mode's numerics settings
    env["PYTHONWARNINGS"] = "ignore"
    env.pop(EMULATED_CPU_VARIABLE, None)
    if emulator:
        env[EMULATED_CPU_VARIABLE] = emulator[-1]  # the CPU model: qemu_command's last word
    out = subprocess.run([*(emulator or []), sys.executable, __file__, "--worker", "--steps", str(steps), *items],
                         env=env, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"mode {mode}: the fingerprint process failed:\n{out.stderr[-2000:]}")
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    settings = " ".join(f"{k}={v}" for k, v in MODES[mode].items())
    return {"mode": mode, "settings": settings, **doc}


def read_reference(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def compare(row: dict, reference: list[dict[str, str]]) -> str:
    """``same as ...`` / ``differs from ...`` against reference rows of the same mode, point, steps and torch."""
    peers = [r for r in reference if (r["mode"], r["point"], str(r["steps"]), r["torch"]) ==
             (row["mode"], row["point"], str(row["steps"]), row["torch"])]
    if not peers:
        return "no reference"
    same = [f"{r['cpu_model']} ({r['cpu_capability']})" for r in peers if r["weights_sha1"] == row["weights_sha1"]]
    other = [f"{r['cpu_model']} ({r['cpu_capability']})" for r in peers if r["weights_sha1"] != row["weights_sha1"]]
    return "; ".join(([f"same as {', '.join(same)}"] if same else []) +
                     ([f"differs from {', '.join(other)}"] if other else []))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("items", nargs="*", help="STUDY POINT, or CONFIG and key=value overrides "
                                                 f"(default: {' '.join(DEFAULT_POINT)})")
    parser.add_argument("--steps", type=int, default=6, help="training steps to fingerprint (6)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--reference", type=Path, default=ROOT / "results" / "numerics" / "fingerprints.csv")
    parser.add_argument("--record", type=Path, default=None, help="append this machine's rows to this CSV")
    parser.add_argument("--emulate", metavar="CPU", default=None,
                        help="run under qemu-x86_64 as this CPU model (e.g. EPYC-Rome-v1, Haswell-v4)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    if args.worker:
        print(json.dumps(fingerprint(args.items, args.steps)))
        return 0
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; expected some of {', '.join(MODES)}")
    emulator = qemu_command(args.emulate) if args.emulate else None  # fails before any training
    reference = read_reference(args.reference)
    rows = [run_mode(m, args.items, args.steps, emulator) for m in modes]
    base = next((r["s_per_step"] for r in rows if r["mode"] == "native"), None)
    print(f"{rows[0]['point']}, {args.steps} steps, {rows[0]['cpu_model']} ({rows[0]['cpu_capability']}), "
          f"torch {rows[0]['torch']}")
    print(f"{'mode':<11} {'data sha1':<17} {'weights sha1':<17} {'s/step':>7} {'× native':>9}  reference")
    for r in rows:
        ratio = f"{r['s_per_step'] / base:.2f}" if base else "-"
        print(f"{r['mode']:<11} {r['data_sha1']:<17} {r['weights_sha1']:<17} {r['s_per_step']:>7.2f} {ratio:>9}  "
              f"{compare(r, reference)}")
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        new = not args.record.is_file() or args.record.stat().st_size == 0
        with args.record.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                w.writeheader()
            w.writerows({k: r[k] for k in FIELDS} for r in rows)
        print(f"recorded {len(rows)} row(s) in {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
