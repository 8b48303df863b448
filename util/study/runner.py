"""``run``: train the study's unfinished points as concurrent ``python -m util.train`` subprocesses.

* A point is *done* when ``runs.csv`` has its row with the same configuration hash (its run folder may be
  gone); a run folder that finished but has no row yet is harvested without training; an interrupted one
  (``last.ckpt``, no ``metrics.json``) is resumed by ``util.train`` (same config and run id).
* ``--jobs N`` runs N subprocesses at once; each gets ``threads // N`` CPU threads (``OMP_NUM_THREADS``,
  ``MKL_NUM_THREADS``: PyTorch sets its intra-op threads from them) and, on a GPU machine, GPU ``slot mod
  n_gpus`` (several small runs share one GPU).
* ``--shard i/n``: only points with index ``k mod n == i`` (Slurm arrays). ``--stage lr|main``: only the
  learning-rate search or only the main grid. ``--max-minutes M``: start no new point after M minutes.
* ``--finish-by M``: start a point only when its estimated run time ends within M minutes of the start, so a
  sitting with a hard end loses no half-run point; when the next point in order does not fit, a shorter one
  that does is started instead. The estimate of a point is ``ESTIMATE_MARGIN`` × the median wall time of its
  arm's finished rows at the same thread count (training, ``train_wall_s``) + ``ESTIMATE_EXTRA_S``; a point
  of an arm without such rows is started only before ``--max-minutes`` (or always, without it).
* ``--order grid`` (default): ready points start in the grid's order (arm, fraction, seed). ``--order seed``:
  seed by seed, largest fraction first, arms in file order, so a study stopped part-way holds every arm at
  the same seeds (the paired contrasts can be read at each stop). The order changes no result.
* Main points wait until their arm's search is finished; a main point equal to a finished search point is
  recorded from it (bookkeeping, done by whichever shard sees it first).
* SIGTERM/SIGINT: forwarded to the running trainings (they save ``last.ckpt`` and stop); exit code 143. If the
  study process dies without forwarding (SIGKILL), Linux sends the trainings SIGTERM (``PR_SET_PDEATHSIG``).
"""
from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Mapping

from util.study import costs, store
from util.study.points import Point, expand_points, in_shard
from util.study.spec import Study

POLL_S = 0.2
ORDERS = ("grid", "seed")  #: the start orders of ``run --order``
ESTIMATE_MARGIN = 1.25  #: ``--finish-by``: the arm's median training wall time is scaled by this ...
ESTIMATE_EXTRA_S = 120.0  #: ... and this is added (start-up, threshold pass, test sets and their copies)


def default_threads() -> int:
    """CPU cores this process may use (the Slurm allocation under Slurm)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_ids() -> list[str]:
    """GPUs the subprocesses are spread over (``CUDA_VISIBLE_DEVICES`` when set, else all; none on CPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def child_env(threads: int, gpu: str | None, numerics: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one training subprocess: its thread count and GPU, and with ``numerics`` (the variables
    of a :mod:`util.numerics` mode, or a row's recorded ``numerics_settings``) exactly those numerics variables
    in place of this process's own (None: this process's own are inherited)."""
    from util.training.runs import NUMERICS_VARIABLES

    env = dict(os.environ)
    if numerics is not None:
        env = {k: v for k, v in env.items() if k not in NUMERICS_VARIABLES}
        env.update(numerics)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def _stop_with_parent() -> None:
    """Run in a training subprocess before it starts: Linux sends it SIGTERM (checkpoint and stop) when the
    study process dies, so no training is left running unseen beside a rerun of the same point."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def spawn_training(cfg_path: Path, log_path: Path, threads: int, gpu: str | None = None,
                   log_mode: str = "a", numerics: Mapping[str, str] | None = None) -> tuple[subprocess.Popen, IO[str]]:
    """Start ``python -m util.train CFG_PATH`` with ``threads`` CPU threads (and ``gpu``, and the ``numerics``
    variables, see :func:`child_env`), stdout and stderr to ``log_path`` (opened with ``log_mode``; the caller
    closes it). The training runs in its own session (a
    terminal's Ctrl-C does not reach it; stop it with ``os.killpg``) and gets SIGTERM if its parent dies."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, log_mode)
    proc = subprocess.Popen([sys.executable, "-m", "util.train", str(cfg_path)], stdout=log, stderr=subprocess.STDOUT,
                            env=child_env(threads, gpu, numerics), start_new_session=True, preexec_fn=_stop_with_parent)
    return proc, log


def point_status(point: Point, rows: Mapping[str, Mapping[str, str]]) -> str:
    """``done`` | ``reuse`` (equal to a finished search point) | ``reuse-wait`` | ``waiting`` (learning rate not
    chosen yet) | ``harvest`` (run folder finished, no row) | ``pending``."""
    if point.config is None:
        return "reuse-wait" if point.source else "waiting"
    row = rows.get(point.id)
    if row is not None and row.get("config_hash") == point.config.config_hash():
        return "done"
    if point.source is not None:
        src = rows.get(point.source)
        return "reuse" if src is not None and src.get("config_hash") == point.config.config_hash() else "reuse-wait"
    return "harvest" if store.finished(point) else "pending"


def seed_major(p: Point) -> tuple:
    """Sort key of ``--order seed``: search points first, then seed, largest fraction, grid index."""
    return (p.stage != "lr", p.seed, -p.fraction, p.index)


def estimate_s(p: Point, rows: Mapping[str, Mapping[str, str]], threads: int) -> float | None:
    """Expected wall seconds of ``p``: ``ESTIMATE_MARGIN`` × the median ``train_wall_s`` of its arm's finished,
    trained rows (not reuses) at ``threads`` threads, + ``ESTIMATE_EXTRA_S``; None without such rows."""
    walls = []
    for pid, r in rows.items():
        if r.get("arm") != p.arm.label or (r.get("source_point") or pid) != pid:  # a reuse repeats its source
            continue
        try:
            if float(r.get("threads") or 0) == threads:
                walls.append(float(r["train_wall_s"]))
        except (TypeError, ValueError):
            continue
    return ESTIMATE_MARGIN * statistics.median(walls) + ESTIMATE_EXTRA_S if walls else None


@dataclass
class Job:
    point: Point
    proc: subprocess.Popen
    log: IO
    slot: int


class Runner:
    """The scheduling loop of ``run`` (one instance per invocation)."""

    def __init__(self, study: Study, jobs: int = 1, threads: int | None = None, shard: tuple[int, int] | None = None,
                 max_minutes: float | None = None, stage: str = "all", order: str = "grid",
                 finish_by: float | None = None, numerics: str | None = None, echo: Callable[[str], None] = print):
        if order not in ORDERS:
            raise ValueError(f"run: unknown order {order!r}; expected one of {ORDERS}")
        self.study, self.jobs, self.shard, self.stage, self.echo = study, max(1, jobs), shard, stage, echo
        self.order = order
        from util.numerics import mode_settings

        numerics = numerics if numerics is not None else study.numerics
        #: the variables of the numerics mode (--numerics, else the study's) for every training (None: the
        #: caller's environment decides)
        self.numerics = mode_settings(numerics) if numerics is not None else None
        self.threads = max(1, (threads or default_threads()) // self.jobs)
        self.deadline = time.monotonic() + max_minutes * 60 if max_minutes is not None else None
        self.finish_deadline = time.monotonic() + finish_by * 60 if finish_by is not None else None
        self.gpus = gpu_ids()
        self.running: dict[int, Job] = {}
        self.failed: set[str] = set()
        self.stopped: set[str] = set()  # stopped by a signal: resumable, not failed
        self.stopping = False
        self._macs: dict[str, float] = {}

    # ------------------------------------------------------------------------------------ selection
    def mine(self, p: Point) -> bool:
        return in_shard(p, self.shard) and self.stage in ("all", p.stage)

    def refresh(self) -> tuple[list[Point], dict[str, dict[str, str]]]:
        """Re-read ``runs.csv``, re-expand (learning rates may be chosen now), record reuses and harvests."""
        rows = store.read_rows(store.runs_csv(self.study))
        points = expand_points(self.study, rows)
        busy = {j.point.id for j in self.running.values()}
        for p in points:
            status = point_status(p, rows)
            if status == "reuse" and self.stage in ("all", "main"):
                rows[p.id] = store.alias(self.study, p, rows[p.source])
                self.echo(f"{p.id}: same run as {p.source} (reused)")
            elif status == "harvest" and self.mine(p) and p.id not in busy:
                rows[p.id] = store.harvest(self.study, p, self.macs(p))
                self.echo(f"{p.id}: finished run folder recorded")
        return points, rows

    def macs(self, p: Point) -> float:
        key = costs.model_key(p.config)
        if key not in self._macs:
            self._macs[key] = costs.model_cost(p.config)["macs_per_px"]
        return self._macs[key]

    # ------------------------------------------------------------------------------------ processes
    def launch(self, p: Point, slot: int) -> None:
        cfg = p.config
        cfg_dir = self.study.study_runs / "configs"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = cfg_dir / f"{cfg.run_id}.yaml"
        cfg.save(cfg_path)
        gpu = self.gpus[slot % len(self.gpus)] if self.gpus else None
        resumed = (store.run_dir(p) / "checkpoints" / "last.ckpt").is_file()
        proc, log = spawn_training(cfg_path, self.study.study_runs / "logs" / f"{cfg.run_id}.log", self.threads, gpu,
                                   numerics=self.numerics)
        self.running[slot] = Job(p, proc, log, slot)
        where = f"GPU {gpu}" if gpu is not None else f"{self.threads} thread(s)"
        self.echo(f"start {p.id} ({'resume' if resumed else 'new'}, {where}) → {store.run_dir(p)}")

    def reap(self) -> bool:
        """Collect ended subprocesses; harvest the successful ones. True when something ended."""
        ended = False
        for slot, job in list(self.running.items()):
            rc = job.proc.poll()
            if rc is None:
                continue
            job.log.close()
            del self.running[slot]
            ended = True
            if rc == 0 and store.finished(job.point):
                store.harvest(self.study, job.point, self.macs(job.point))
                self.echo(f"done  {job.point.id}")
            elif rc in (143, -15):
                self.stopped.add(job.point.id)
                self.echo(f"stopped {job.point.id} (resumable; exit {rc})")
            else:
                self.failed.add(job.point.id)
                self.echo(f"FAIL  {job.point.id} (exit {rc}; log {job.log.name})")
        return ended

    def stop(self, signum: int = signal.SIGTERM, frame: object = None) -> None:
        """Stop starting points; ask running trainings to checkpoint and stop."""
        self.stopping = True
        for job in self.running.values():
            if job.proc.poll() is None:
                try:
                    os.killpg(job.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------------------------------------ loop
    def run(self) -> int:
        """Run until nothing in scope can start; 0 = no failures, 1 = failures, 143 = stopped by a signal."""
        old = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            points, rows = self.refresh()
            while True:
                self.start_ready(points, rows)
                if not self.running:
                    break
                while not self.reap():
                    time.sleep(POLL_S)
                points, rows = self.refresh()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        self.summary(points, rows)
        if self.stopping:
            return 143
        return 1 if self.failed else 0

    def start_ready(self, points: list[Point], rows: Mapping[str, Mapping[str, str]]) -> None:
        busy = {j.point.id for j in self.running.values()}
        ready = [p for p in points if self.mine(p) and p.id not in busy and p.id not in self.failed
                 and point_status(p, rows) == "pending"]
        if self.order == "seed":
            ready.sort(key=seed_major)
        for slot in range(self.jobs):
            if self.stopping:
                return
            if slot in self.running:
                continue
            p = next((q for q in ready if self.fits(q, rows)), None)
            if p is None:
                return
            ready.remove(p)
            self.launch(p, slot)

    def fits(self, p: Point, rows: Mapping[str, Mapping[str, str]]) -> bool:
        """Whether ``p`` may start now: before ``--max-minutes``, and (``--finish-by``) estimated to end in time."""
        now = time.monotonic()
        if self.deadline is not None and now > self.deadline:
            return False
        if self.finish_deadline is None:
            return True
        est = estimate_s(p, rows, self.threads)
        return now < self.finish_deadline if est is None else now + est <= self.finish_deadline

    def summary(self, points: list[Point], rows: Mapping[str, Mapping[str, str]]) -> None:
        mine = [p for p in points if self.mine(p)]
        counts: dict[str, int] = {}
        for p in mine:
            s = "failed" if p.id in self.failed else "stopped" if p.id in self.stopped else point_status(p, rows)
            counts[s] = counts.get(s, 0) + 1
        self.echo("points in scope: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
        if counts.get("waiting"):
            self.echo("waiting points need their arm's learning-rate search finished first "
                      "(run --stage lr, or the shards that hold those points)")


def run_study(study: Study, **kwargs) -> int:
    """``python -m util.study run``: see :class:`Runner`."""
    Path(study.study_runs).mkdir(parents=True, exist_ok=True)
    return Runner(study, **kwargs).run()
