"""Training jobs on the real single-node Slurm (``tests/test_slurm.py`` describes the cluster): ``train.sh``
runs the notebook, arrays run grid points, several tasks run DDP under srun, requeues and the time-limit
warning resume from ``last.ckpt``."""
from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from slurm_helpers import ROOT, job_info, job_state, make_eligible_after_requeue, requeue_now, wait_for_state

pytestmark = pytest.mark.slurm


JOB_RESOURCES = ["--gres=none", "--mem=2G", "--cpus-per-task=1"]
#: a tiny run long enough to be interrupted after its first checkpoint
LONG_TINY = ["max_steps=24", "checkpoint_every_n_steps=2"]


class TrainJob:
    """One ``train.sh`` submission: ``sbatch --wait`` in the background, or a plain submission."""

    def __init__(self, folder: Path, args: list[str], sbatch_args: list[str] = (), wait: bool = True):
        self.folder = folder
        self.runs = folder / "runs"
        folder.mkdir(parents=True, exist_ok=True)
        self.log_pattern = str(folder / "slurm-%j.out")
        cmd = ["sbatch", "--parsable", *JOB_RESOURCES, f"--output={self.log_pattern}", *sbatch_args]
        if wait:
            cmd.append("--wait")
        cmd += ["train.sh", *args, f"runs_dir={self.runs}"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.job_id = ""
        self.returncode: int | None = None
        self.stderr = ""
        self.events: list[str] = []
        if not wait:
            self.finish(timeout=60)

    def finish(self, timeout: float = 1200) -> int:
        """Wait for sbatch (for ``--wait``: for the job) and return its exit status."""
        if self.returncode is None:
            out, self.stderr = self.proc.communicate(timeout=timeout)
            self.returncode = self.proc.returncode
            self.job_id = out.strip().splitlines()[0].split(";")[0] if out.strip() else ""
        return self.returncode

    def log(self, job_id: str | None = None) -> str:
        path = Path(self.log_pattern.replace("%j", job_id or self.job_id))
        return path.read_text() if path.exists() else ""

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in self.runs.glob("*/*/config.yaml"))


def _interrupt_after_first_checkpoint(job: TrainJob, how: str) -> None:
    """Background thread: once the job's run has checkpoints/last.ckpt, interrupt it ``how``:
    ``requeue`` (``scontrol requeue``) or ``warning`` (USR1 to the batch shell, as ``--signal=B:USR1@...``
    delivers it before the time limit); then let the requeued job start without Slurm's hold-back."""
    try:
        deadline = time.monotonic() + 900
        while not list(job.runs.glob("*/*/checkpoints/last.ckpt")):
            assert time.monotonic() < deadline, "no checkpoint within 900 s"
            assert job_state(job.job_id) in ("PENDING", "RUNNING", "CONFIGURING"), job_state(job.job_id)
            time.sleep(0.3)
        job.events.append(f"checkpoint seen, state {job_state(job.job_id)}")
        if how == "requeue":
            requeue_now(job.job_id, timeout=120)
        else:
            subprocess.run(["scancel", "--signal=USR1", "--batch", job.job_id], check=True, capture_output=True)
            make_eligible_after_requeue(job.job_id, 0, timeout=600)
        job.events.append(f"{how} done")
    except Exception as e:  # noqa: BLE001 - reported by the test
        job.events.append(f"error: {type(e).__name__}: {e}")


@pytest.fixture(scope="module")
def train_jobs(slurm_conf, tiny_ocelot_root, tmp_path_factory):
    """Submit all train.sh jobs at once (they run side by side on the test node) and wait in the tests."""
    import threading

    base = tmp_path_factory.mktemp("train_jobs")
    data = f"data.root={tiny_ocelot_root}"
    grid = base / "tiny_grid.yaml"
    grid.write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\nname: tiny_grid\ngrid:\n  seed: [0, 1]\n")
    jobs = {
        "ok": TrainJob(base / "ok", ["configs/tiny.yaml", data]),
        "fail": TrainJob(base / "fail", ["configs/tiny.yaml", f"data.root={base / 'no_such_data'}"]),
        "array": TrainJob(base / "array", [str(grid), data], ["--array=0-1"]),
        "requeue": TrainJob(base / "requeue", ["configs/tiny.yaml", data, *LONG_TINY], wait=False),
        "warning": TrainJob(base / "warning", ["configs/tiny.yaml", data, *LONG_TINY], wait=False),
        "multi": TrainJob(base / "multi", ["configs/tiny.yaml", data], ["--ntasks-per-node=2"]),
    }
    threads = []
    for how in ("requeue", "warning"):
        assert jobs[how].returncode == 0, jobs[how].stderr
        t = threading.Thread(target=_interrupt_after_first_checkpoint, args=(jobs[how], how), daemon=True)
        t.start()
        threads.append(t)
    jobs["threads"] = threads
    yield jobs
    for key, job in jobs.items():
        if isinstance(job, TrainJob):
            if job.proc.poll() is None:
                job.proc.kill()
            if job.job_id:
                subprocess.run(["scancel", job.job_id], capture_output=True)


def _assert_complete_run(run_dir: Path) -> dict:
    for rel in ("config.yaml", "metrics.json", "history.csv", "checkpoints/last.ckpt", "v1_0.ipynb"):
        assert (run_dir / rel).is_file(), f"{run_dir}: no {rel}"
    nb = json.loads((run_dir / "v1_0.ipynb").read_text())
    assert nb["metadata"]["papermill"]["exception"] in (None, False)
    assert all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"), "not fully executed"
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_train_job_completes(train_jobs):
    """``sbatch --wait train.sh configs/tiny.yaml ...`` ends COMPLETED with a complete run folder."""
    job = train_jobs["ok"]
    assert job.finish() == 0, job.stderr + job.log()
    assert job_state(job.job_id) == "COMPLETED"
    (run_dir,) = job.run_dirs()
    metrics = _assert_complete_run(run_dir)
    assert metrics["steps"] == metrics["max_steps"] == 6
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    log = job.log()
    assert f"train.sh: run folder {run_dir}" in log and "train.sh: done" in log


@pytest.mark.slow
def test_failing_notebook_fails_job(train_jobs):
    job = train_jobs["fail"]
    assert job.finish() != 0
    info = job_info(job.job_id)
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0"
    log = job.log()
    assert "train.sh: FAILED" in log and "no_such_data" in log
    (run_dir,) = job.run_dirs() or [p.parent for p in job.runs.glob("*/*/v1_0.ipynb")]
    nb = json.loads((run_dir / "v1_0.ipynb").read_text())
    assert nb["metadata"]["papermill"]["exception"] is True  # the executed notebook shows the error


@pytest.mark.slow
def test_array_job_runs_grid_points(train_jobs):
    """``sbatch --array=0-1 train.sh <grid config>``: task i runs grid point i into its own run folder."""
    job = train_jobs["array"]
    assert job.finish() == 0, job.stderr
    for task in (0, 1):
        assert job_state(f"{job.job_id}_{task}") == "COMPLETED"
    run_dirs = job.run_dirs()
    assert [p.name.split("-")[0] for p in run_dirs] == ["g000", "g001"]
    seeds = sorted(_assert_complete_run(p)["seed"] for p in run_dirs)
    assert seeds == [0, 1]


@pytest.mark.slow
def test_multi_task_job_runs_ddp_under_srun(train_jobs):
    """``--ntasks-per-node=2``: train.sh runs ``srun python -m util.train`` (2 DDP processes; gloo on CPU)."""
    job = train_jobs["multi"]
    assert job.finish() == 0, job.stderr + job.log()[-3000:]
    assert job_state(job.job_id) == "COMPLETED"
    log = job.log()
    assert "srun --kill-on-bad-exit=1 python -m util.train" in log
    assert "Starting with 2 processes" in log
    (run_dir,) = job.run_dirs()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 6
    assert not (run_dir / "v1_0.ipynb").exists()  # the notebook path is single-process


def _check_resumed(job: TrainJob, thread) -> None:
    thread.join(timeout=1200)
    assert job.events and not any(e.startswith("error") for e in job.events), job.events
    state = wait_for_state(job.job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}, timeout=1200, poll=1)
    log = job.log()
    assert state == "COMPLETED", log[-3000:]
    assert job_info(job.job_id)["Restarts"] == "1"
    (run_dir,) = job.run_dirs()
    metrics = _assert_complete_run(run_dir)
    assert metrics["steps"] == 24
    assert "restart 0" in log and "restart 1" in log
    # resume=auto continues from the readable checkpoint with the most steps: last.ckpt, or best.ckpt when the
    # interruption landed between the two saves of a validation step (or while last.ckpt was being written)
    resumed = re.findall(r"resuming from (\S+)", log)
    assert resumed, log[-3000:]
    assert resumed[-1] in (str(run_dir / "checkpoints" / "last.ckpt"), str(run_dir / "checkpoints" / "best.ckpt")), \
        log[-3000:]
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt")), "Lightning's own Slurm requeue is off: one pre-emption path"


@pytest.mark.slow
def test_requeued_job_resumes(train_jobs):
    """``scontrol requeue`` of a running training job: the requeued job resumes from last.ckpt and completes."""
    _check_resumed(train_jobs["requeue"], train_jobs["threads"][0])


@pytest.mark.slow
def test_time_limit_warning_checkpoints_and_requeues(train_jobs):
    """USR1 to the batch shell (what ``--signal=B:USR1@120`` sends before the time limit): the run saves a
    checkpoint and stops, train.sh requeues the job, the requeued job resumes and completes."""
    job = train_jobs["warning"]
    _check_resumed(job, train_jobs["threads"][1])
    log = job.log()
    assert "time-limit warning" in log and "requeueing job" in log
    assert "training stopped by a signal" in log
