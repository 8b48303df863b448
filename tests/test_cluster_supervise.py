"""util.cluster.supervise (``python -m util.cluster run``): train.sh's job and its one pre-emption path.

A fake papermill (a process that starts a "kernel" child and exits 1 when it fails) and a fake ``scontrol`` on
PATH stand in for the real ones; the real thing under Slurm is tested in tests/test_slurm_training.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from util.cluster.plan import Plan
from util.cluster.supervise import Job, notebook_never_started

#: "papermill": starts the "kernel" (this file with argument 'kernel') and exits with its status
FAKE = r'''
import os, signal, subprocess, sys, time
from pathlib import Path

role, marks = sys.argv[1], Path(sys.argv[2])
def on_term(signum, frame):
    (marks / f"{role}-term").write_text("")
    if role != "papermill":
        time.sleep(0.5)  # the checkpoint takes a moment
        (marks / "saved").write_text("")
    sys.exit(1)
signal.signal(signal.SIGTERM, on_term)
if role == "papermill":
    kernel = subprocess.Popen([sys.executable, __file__, "kernel", str(marks)])
    rc = kernel.wait()
    (marks / "papermill-exit").write_text(str(rc))
    sys.exit(rc)
(marks / f"{role}-ready").write_text(str(os.getpid()))
time.sleep(60)
'''


@pytest.fixture
def world(tmp_path: Path, monkeypatch) -> dict:
    """A fake papermill/training script, a fake scontrol on PATH that records its arguments, a run folder."""
    fake = tmp_path / "fake.py"
    fake.write_text(FAKE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.args\nexit ${{SCONTROL_RC:-0}}\n')
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return {"tmp": tmp_path, "fake": fake, "env": env, "run_dir": tmp_path / "run"}


def _plan(world: dict, notebook: bool) -> Plan:
    role = "papermill" if notebook else "srun"
    return Plan(str(world["run_dir"]), [sys.executable, str(world["fake"]), role, str(world["tmp"])],
                str(world["run_dir"] / "v1_0.ipynb") if notebook else None)


def _start(world: dict, plan: Plan, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "util.cluster", "run", plan.to_json()],
                            cwd=Path(__file__).resolve().parents[1], env={**world["env"], **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.05)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, out, err


@pytest.mark.parametrize("notebook", [True, False], ids=["notebook", "srun"])
def test_time_limit_warning_stops_the_training_then_requeues(world, notebook):
    proc = _start(world, _plan(world, notebook), SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="1")
    training = "kernel" if notebook else "srun"
    _wait_for(world["tmp"] / f"{training}-ready", proc)
    proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 delivers to the batch shell
    rc, out, err = _finish(proc)
    assert rc == 0, out + err
    marks = world["tmp"]
    assert (marks / f"{training}-term").exists() and (marks / "saved").exists()
    assert not (marks / "papermill-term").exists(), "papermill itself is left to write the notebook"
    assert "job 4242 restart 1" in out and "time-limit warning: checkpointing, then requeueing job 4242" in out
    assert "training stopped (status 1); requeueing job 4242" in out
    assert (marks / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert world["run_dir"].is_dir()


def test_sigterm_waits_for_the_checkpoint_and_exits_143(world):
    proc = _start(world, _plan(world, True), SLURM_JOB_ID="7")
    _wait_for(world["tmp"] / "kernel-ready", proc)
    proc.send_signal(signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 143, out + err
    assert "terminated; stopping the training" in out
    assert (world["tmp"] / "saved").exists(), "the job ended before the training had saved its checkpoint"
    assert (world["tmp"] / "papermill-exit").read_text() == "1"  # papermill ended by itself
    assert not (world["tmp"] / "scontrol.args").exists(), "a terminated job is not requeued"


def test_ctrl_c_reaches_the_training_as_sigterm_only(world):
    """Ctrl-C signals the whole foreground group: the command ignores SIGINT, the job stops it with SIGTERM."""
    proc = _start(world, _plan(world, True))
    _wait_for(world["tmp"] / "kernel-ready", proc)
    os.killpg(proc.pid, signal.SIGINT)
    rc, out, err = _finish(proc)
    assert rc == 143, out + err
    assert (world["tmp"] / "kernel-term").exists() and (world["tmp"] / "saved").exists()
    assert (world["tmp"] / "papermill-exit").read_text() == "1" and "KeyboardInterrupt" not in err


def test_warning_without_slurm_fails_and_a_failed_requeue_says_so(world):
    proc = _start(world, _plan(world, True))
    _wait_for(world["tmp"] / "kernel-ready", proc)
    proc.send_signal(signal.SIGUSR1)
    rc, out, err = _finish(proc)
    assert rc == 1 and f"train.sh: FAILED (status 1); executed notebook: {world['run_dir'] / 'v1_0.ipynb'}" in err
    proc = _start(world, _plan(world, False), SLURM_JOB_ID="9", SCONTROL_RC="5")
    _wait_for(world["tmp"] / "srun-ready", proc)
    proc.send_signal(signal.SIGUSR1)
    rc, out, err = _finish(proc)
    assert rc == 5 and "scontrol requeue 9 failed (status 5)" in err


def _write_notebook(path: Path, counts: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = [{"cell_type": "markdown", "source": ""}] + [{"cell_type": "code", "execution_count": c} for c in counts]
    path.write_text(json.dumps({"cells": cells}))


def test_notebook_never_started(tmp_path):
    nb = tmp_path / "nb.ipynb"
    assert not notebook_never_started(None) and not notebook_never_started(str(nb))  # no notebook: no retry
    _write_notebook(nb, [None, None])
    assert notebook_never_started(str(nb))
    _write_notebook(nb, [1, None])
    assert not notebook_never_started(str(nb))
    nb.write_text("{truncated")
    assert not notebook_never_started(str(nb))


@pytest.mark.parametrize("executed, attempts", [([None, None], 3), ([1, None], 1)])
def test_a_notebook_that_never_started_is_run_again(tmp_path, capfd, executed, attempts):
    nb = tmp_path / "run" / "v1_0.ipynb"
    _write_notebook(nb, executed)
    count = tmp_path / "count"
    code = f"from pathlib import Path; p = Path({str(count)!r}); p.write_text(p.read_text() + 'x' " \
           f"if p.exists() else 'x'); raise SystemExit(4)"
    job = Job(Plan(str(tmp_path / "run"), [sys.executable, "-c", code], str(nb)), env={"PATH": os.environ["PATH"]},
              retry_delay=lambda: 0.0)
    assert job.run() == 4
    assert count.read_text() == "x" * attempts
    out, err = capfd.readouterr()
    assert out.count("the notebook did not start") == attempts - 1
    assert "train.sh: FAILED (status 4)" in err
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL, "the job's signal handlers are restored"


def test_done_line_dry_run_and_bad_plan(world, capfd):
    ok = Plan(str(world["run_dir"]), [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"], None)
    cmd = [sys.executable, "-m", "util.cluster", "run", ok.to_json()]
    cwd = Path(__file__).resolve().parents[1]
    dry = subprocess.run(cmd + ["--dry-run"], cwd=cwd, env=world["env"], capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0 and f"train.sh: run folder {world['run_dir']}" in dry.stdout
    assert "train.sh: running: " + sys.executable in dry.stdout and not world["run_dir"].exists()
    env = {**world["env"], "SLURM_CPUS_PER_TASK": "3"}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(cmd + ["--started", str(time.time() - 5)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[3] == "3"  # one math-library thread per allocated CPU
    assert lines[-1].startswith("train.sh: done in ") and lines[-1].endswith(f" s; run folder {world['run_dir']}")
    assert int(lines[-1].split()[3]) >= 5
    bad = subprocess.run([sys.executable, "-m", "util.cluster", "run", "{}"], cwd=cwd, env=world["env"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("train.sh: not a plan")
    missing = Plan(str(world["run_dir"]), ["no-such-command-xyz"], None)
    assert Job(missing, env={"PATH": "/usr/bin:/bin"}).run() == 127
    assert "cannot run 'no-such-command-xyz'" in capfd.readouterr().err
