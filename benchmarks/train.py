"""Engine overhead: samples/s of the Lightning training loop vs a bare PyTorch loop, same model, same data.

    python benchmarks/train.py [CONFIG] [key=value ...] [--steps 40] [--warmup 5] [--repeats 2] [--out FILE]

Both loops train the engine's model (``SegmentationModule``: model from the registry, MONAI DiceCELoss, the
config's optimizer, scheduler and gradient clipping) on the same ``ResumableLoader`` (real data pipeline:
JPEG decode, random crop, augmentation), from the same seed, in the same process. The Lightning loop is the
engine's Trainer configuration without validation/checkpointing (CSV logging and step logging on); the bare
loop does forward, loss, backward, clipping, optimizer and scheduler steps by hand. Runs alternate
(bare, Lightning, bare, ...) so that machine load affects both alike; the median over repeats is reported.
Steps after ``warmup`` are timed. Prints a table and a JSON line (also written to ``--out``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _module(cfg, steps):
    import lightning.pytorch as pl

    from model import build_model
    from util.training import SegmentationModule, model_kwargs

    pl.seed_everything(cfg.seed, verbose=False)
    return SegmentationModule(build_model(cfg.model.name, **model_kwargs(cfg)), cfg, steps, val_every=10**9)


def _loader(module, cfg, steps):
    from util.dataloader import OcelotDataset, collate
    from util.training import ResumableLoader, ResumableSampler, SeededItems

    d = cfg.data
    ds = OcelotDataset(d.root, "train", crop_size=d.crop_size, transforms=d.preset, mask_radius_um=d.mask_radius_um,
                       subset_fraction=d.subset_fraction, subset_seed=d.subset_seed, seed=cfg.seed)
    sampler = ResumableSampler(len(ds), d.batch_size, steps, cfg.seed)
    return ResumableLoader(SeededItems(ds), batch_size=d.batch_size, sampler=sampler, num_workers=d.num_workers,
                           collate_fn=collate)


def bare_steps(module, loader, on_batch=None):
    """Train ``module.model`` by hand over ``loader`` (forward, loss, backward, clipping, optimizer and scheduler
    steps, as the engine does); yield ``(step, batch, loss)`` after each optimizer step. ``on_batch(step)``, if
    given, is called once each batch is loaded, before its forward (where a timer starts)."""
    cfg = module.cfg
    opt_cfg = module.configure_optimizers()
    opt = opt_cfg["optimizer"] if isinstance(opt_cfg, dict) else opt_cfg
    sched = opt_cfg["lr_scheduler"]["scheduler"] if isinstance(opt_cfg, dict) else None
    model, loss_fn = module.model.train(), module.loss_fn
    for step, batch in enumerate(loader):
        if on_batch is not None:
            on_batch(step)
        logits = model(batch["image"])
        loss = loss_fn(logits, batch["mask"].unsqueeze(1))
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        yield step, batch, loss


def bare_loop(cfg, steps: int, warmup: int) -> float:
    """Samples/s of a hand-written loop over the timed steps."""
    module = _module(cfg, steps)
    n, t0 = 0, None

    def start_timer(step: int) -> None:  # at the first timed batch, once it is loaded (as the Lightning timer)
        nonlocal t0
        if step == warmup:
            t0 = time.perf_counter()

    for step, batch, _ in bare_steps(module, _loader(module, cfg, steps), on_batch=start_timer):
        if step >= warmup:
            n += batch["image"].shape[0]
    return n / (time.perf_counter() - t0)


def lightning_loop(cfg, steps: int, warmup: int, workdir: Path) -> float:
    """Samples/s of the engine's Lightning Trainer over the timed steps."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from util.training import trainer_settings

    class Timer(pl.Callback):
        def __init__(self):
            self.t0, self.n = None, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and self.t0 is None:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.t0 is not None:
                self.n += batch["image"].shape[0]

        def on_train_end(self, trainer, pl_module):
            self.t1 = time.perf_counter()

    module = _module(cfg, steps)
    loader = _loader(module, cfg, steps)
    timer = Timer()
    settings = trainer_settings(cfg)
    settings.pop("plugins")
    trainer = pl.Trainer(max_steps=steps, max_epochs=-1, limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[timer], logger=CSVLogger(str(workdir), name="bench"),
                         log_every_n_steps=cfg.log_every_n_steps, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=cfg.grad_clip,
                         use_distributed_sampler=False, **settings)
    trainer.fit(module, train_dataloaders=loader)  # the same loader construction as the bare loop
    return timer.n / (timer.t1 - timer.t0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("items", nargs="*", help="config path (optional, first) and key=value overrides")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from util.config import load_config

    items = list(args.items)
    path = items.pop(0) if items and "=" not in items[0] else "configs/default.yaml"
    cfg = load_config(path, items)
    bare, light = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            bare.append(bare_loop(cfg, args.steps, args.warmup))
            light.append(lightning_loop(cfg, args.steps, args.warmup, Path(tmp)))
            print(f"repeat {r}: bare {bare[-1]:.2f} samples/s, lightning {light[-1]:.2f} samples/s", flush=True)
    b, l = statistics.median(bare), statistics.median(light)
    result = {"config": path, "overrides": items, "model": cfg.model.name, "model_kwargs": cfg.model.kwargs,
              "crop_size": cfg.data.crop_size, "batch_size": cfg.data.batch_size, "steps": args.steps,
              "warmup": args.warmup, "repeats": args.repeats, "bare_samples_per_s": bare,
              "lightning_samples_per_s": light, "median_bare": b, "median_lightning": l, "ratio": l / b,
              "threads": torch.get_num_threads(),
              "accelerator": "gpu" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "cpu"}
    print(f"\n{'loop':<12}{'samples/s (median)':>20}")
    print(f"{'bare':<12}{b:>20.2f}\n{'lightning':<12}{l:>20.2f}\nratio lightning/bare: {l / b:.3f}")
    print(json.dumps(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
