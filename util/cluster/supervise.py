"""``train.sh``'s job: run the plan's command, and the job's one pre-emption path.

``train.sh`` ``exec``s ``python -m util.cluster run``, so this process is the batch shell: the only process that
gets Slurm's time-limit warning (``--signal=B:USR1@120``), however the training runs (a papermill kernel, or
srun's tasks). On the warning it sends SIGTERM to the training (the notebook's kernel, or srun, which passes it
on to its tasks); :class:`util.training.StopCheckpoint` saves ``checkpoints/last.ckpt`` and stops it. Once the
command has ended, this process requeues the job (``scontrol requeue``) and the requeued job resumes from
``last.ckpt`` (``resume=auto``, the same run folder). Lightning's own Slurm requeue is off
(:func:`util.training.settings.trainer_settings`).

SIGTERM or SIGINT to this process (``scancel``, Ctrl-C) stops the training the same way and exits 143 when the
command has ended; a second one stops the command at once. A notebook whose kernel never started (kernels
started at the same moment on one node can collide on their ZMQ ports) is run again, 3 attempts in all.
"""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping

from util.cluster import procs
from util.cluster.plan import PROG, Plan

ATTEMPTS = 3


def say(line: str, err: bool = False) -> None:
    """Write one line to stdout (stderr with ``err``) at once, unbuffered: safe inside a signal handler."""
    data = (line + "\n").encode()
    while data:
        data = data[os.write(2 if err else 1, data):]


def notebook_never_started(path: str | None) -> bool:
    """True when papermill wrote the notebook ``path`` but none of its code cells ran (the kernel did not start);
    False when there is no such notebook or it cannot be read."""
    if path is None:
        return False
    try:
        cells = json.loads(Path(path).read_text())["cells"]
        return all(c.get("execution_count") is None for c in cells if c.get("cell_type") == "code")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _ignore_sigint() -> None:
    # in the child: Ctrl-C goes to this process, which stops the training with SIGTERM (as bash's & did)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Job:
    """One ``train.sh`` job: :meth:`run` runs the plan's command (with retries) and returns the exit status."""

    def __init__(self, plan: Plan, env: Mapping[str, str] | None = None,
                 retry_delay: Callable[[], float] = lambda: random.uniform(1, 10), attempts: int = ATTEMPTS):
        self.plan = plan
        self.env = dict(os.environ if env is None else env)
        self.retry_delay = retry_delay
        self.attempts = attempts
        self.child: subprocess.Popen | None = None
        self.warned = False  #: Slurm's time-limit warning came: requeue when the command has ended
        self.terminations = 0  #: SIGTERM/SIGINT received

    # --------------------------------------------------------------------------------------------- signals
    def training_pids(self) -> list[int]:
        """The processes that train: the notebook's kernel (papermill's children), or srun itself."""
        if self.child is None:
            return []
        if self.plan.notebook is None:
            return [self.child.pid]
        return procs.children(self.child.pid)

    def on_warning(self, signum: int, frame: object = None) -> None:
        self.warned = True
        say(f"{PROG}: {time.strftime('%H:%M:%SZ', time.gmtime())} time-limit warning: checkpointing, then "
            f"requeueing job {self.env.get('SLURM_JOB_ID', '')}")
        procs.send(self.training_pids(), signal.SIGTERM)

    def on_terminate(self, signum: int, frame: object = None) -> None:
        self.terminations += 1
        if self.terminations == 1:
            say(f"{PROG}: terminated; stopping the training")
            procs.send(self.training_pids(), signal.SIGTERM)
        else:
            say(f"{PROG}: terminated again; stopping the command now")
            procs.send(self.training_pids() + ([self.child.pid] if self.child else []), signal.SIGTERM)

    # ----------------------------------------------------------------------------------------------- run
    def child_env(self) -> dict[str, str]:
        """The command's environment: one math-library thread per allocated CPU unless OMP_NUM_THREADS is set."""
        env = dict(self.env)
        if env.get("SLURM_CPUS_PER_TASK") and not env.get("OMP_NUM_THREADS"):
            env["OMP_NUM_THREADS"] = env["SLURM_CPUS_PER_TASK"]
        return env

    def run_once(self) -> int:
        """Run the command to its end; its exit status (128 + N when signal N ended it, 127 when it cannot start)."""
        try:
            self.child = subprocess.Popen(self.plan.command, env=self.child_env(), preexec_fn=_ignore_sigint)
        except OSError as e:
            say(f"{PROG}: cannot run {self.plan.command[0]!r}: {e}", err=True)
            return 127
        rc = self.child.wait()
        return 128 - rc if rc < 0 else rc

    def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when a signal stops the job."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and not (self.warned or self.terminations):
            time.sleep(min(0.2, max(0.0, end - time.monotonic())))

    def run(self) -> int:
        """Run the command (again when the notebook never started), then requeue, fail or finish."""
        handlers = {signal.SIGUSR1: self.on_warning, signal.SIGTERM: self.on_terminate,
                    signal.SIGINT: self.on_terminate}
        old = {s: signal.signal(s, h) for s, h in handlers.items()}
        try:
            status = 143
            for attempt in range(1, self.attempts + 1):
                if self.terminations:
                    break
                status = self.run_once()
                if status == 0 or self.warned or self.terminations or attempt == self.attempts \
                        or not notebook_never_started(self.plan.notebook):
                    break
                say(f"{PROG}: the notebook did not start (attempt {attempt}, status {status}); retrying")
                self.pause(self.retry_delay())
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return self.finish(status)

    def finish(self, status: int) -> int:
        """After the command: requeue after a time-limit warning, or report the failure; the exit status."""
        job_id = self.env.get("SLURM_JOB_ID")
        if self.warned and job_id:
            say(f"{PROG}: training stopped (status {status}); requeueing job {job_id}")
            try:
                rc = subprocess.run(["scontrol", "requeue", job_id]).returncode
            except OSError as e:
                say(f"{PROG}: cannot run scontrol: {e}", err=True)
                return 127
            if rc != 0:
                say(f"{PROG}: scontrol requeue {job_id} failed (status {rc})", err=True)
            return rc
        if self.terminations:
            return 143
        if status != 0:
            where = "" if self.plan.notebook is None else f"; executed notebook: {self.plan.notebook}"
            say(f"{PROG}: FAILED (status {status}){where}", err=True)
        return status


def header(plan: Plan, env: Mapping[str, str]) -> list[str]:
    """The lines a job prints first: time, job id and restart count, run folder, command."""
    return [f"{PROG}: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} job {env.get('SLURM_JOB_ID') or 'local'} "
            f"restart {env.get('SLURM_RESTART_COUNT') or 0}",
            f"{PROG}: run folder {plan.run_dir}",
            f"{PROG}: running: {shlex.join(plan.command)}"]


def run_job(plan: Plan, dry_run: bool = False, started: float | None = None) -> int:
    """``train.sh``'s job from its plan: print the header, run (unless ``dry_run``), print the test scores and the
    time since ``started`` (seconds since the epoch; default now). The exit status."""
    started = time.time() if started is None else started
    for line in header(plan, os.environ):
        say(line)
    if dry_run:
        return 0
    Path(plan.run_dir).mkdir(parents=True, exist_ok=True)
    status = Job(plan).run()
    if status != 0:
        return status
    if (Path(plan.run_dir) / "metrics.json").is_file():
        try:
            from util.evaluate import summary_line

            say(f"{PROG}: {summary_line(plan.run_dir)}")
        except Exception as e:  # noqa: BLE001 - the run is done; a summary it cannot print is only reported
            say(f"{PROG}: no summary of {plan.run_dir}/metrics.json ({type(e).__name__}: {e})", err=True)
    say(f"{PROG}: done in {int(time.time() - started)} s; run folder {plan.run_dir}")
    return 0
