"""Tests on a real single-node Slurm (Debian's Slurm 22.05), started by ``tests/slurm_cluster.sh``.

The ``slurm_conf`` session fixture installs Slurm + MUNGE with apt-get when missing and starts munged,
slurmctld and slurmd as root (no systemd), with all state in one folder; it reuses a cluster that is
already running and stops the daemons at the end of the session only when it started them itself
(``SLURM_TEST_KEEP=1`` keeps them). Where Slurm can be neither found nor installed (not root, no apt-get,
no network) the tests skip with the reason, except when ``CI`` is set: there they fail.

No accounting daemon runs, so job states come from ``scontrol show job`` (finished jobs are kept for
``MinJobAge``), never from ``sacct``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from tunnel_helpers import http_status, read_details

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "tests" / "slurm_cluster.sh"

pytestmark = pytest.mark.slurm


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def slurm_conf():
    """Start (or reuse) the test cluster; export SLURM_CONF for every client; yield its path."""
    if shutil.which("bash") is None:
        pytest.skip("bash is not available")
    was_running = (
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "status"], capture_output=True).returncode == 0
    )
    proc = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "start"], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        reason = (
            f"no Slurm cluster: tests/slurm_cluster.sh exited {proc.returncode}: "
            f"{proc.stderr.strip()[-800:]}"
        )
        if proc.returncode == 3 and not _truthy(os.environ.get("CI")):
            pytest.skip(reason + " (Slurm is not installed and apt-get/root is unavailable)")
        pytest.fail(reason)
    conf = proc.stdout.strip().splitlines()[-1]
    assert Path(conf).is_file(), conf
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if not was_running and not _truthy(os.environ.get("SLURM_TEST_KEEP")):
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop"], capture_output=True, timeout=120)


# --------------------------------------------------------------------------------------------- helpers
def sbatch(*args: str, cwd: Path | str = ROOT, env: dict | None = None, timeout: float = 600):
    """Run ``sbatch --parsable ARGS``; return (job id, CompletedProcess)."""
    proc = subprocess.run(
        ["sbatch", "--parsable", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0] if proc.stdout.strip() else ""
    return job_id, proc


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (first record; array tasks: pass ``<id>_<task>``)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True
    ).stdout
    line = out.strip().splitlines()[0]
    info = {}
    for token in re.findall(r"(\w+)=((?:[^ ]| (?!\w+=))*)", line):
        info[token[0]] = token[1]
    return info


def job_state(job_id: str) -> str:
    return job_info(job_id)["JobState"]


def wait_for_state(job_id: str, states: set[str], timeout: float = 120, poll: float = 0.25) -> str:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = job_state(job_id)
        if state in states:
            return state
        time.sleep(poll)
    raise AssertionError(f"job {job_id} still {state} after {timeout} s, wanted {states}")


def make_eligible_after_requeue(job_id: str, restarts_before: int, timeout: float = 60) -> None:
    """Once a requeued job is PENDING again, let it start at once.

    Slurm holds a requeued job back for about ``cred_expire`` seconds (120 s by default, 10 s in the test
    cluster) because slurmd refuses credentials issued in the same second as the revoked one of the first
    run ("Job credential revoked"). One second after the job is PENDING, setting its start time to now
    makes it start immediately.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = job_info(job_id)
        if int(info["Restarts"]) > restarts_before and info["JobState"] != "COMPLETING":
            if info["JobState"] == "PENDING":
                time.sleep(1.1)
                subprocess.run(
                    ["scontrol", "update", f"jobid={job_id}", "starttime=now"], capture_output=True
                )
            return
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} was not requeued within {timeout} s")


def requeue_now(job_id: str, timeout: float = 60) -> None:
    """``scontrol requeue`` a running job and make the requeued job start at once."""
    restarts = int(job_info(job_id)["Restarts"])
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    make_eligible_after_requeue(job_id, restarts, timeout)


# ------------------------------------------------------------------------------------- the cluster
def test_cluster_ports_skip_a_port_in_use():
    """The test cluster takes free ports: with 127.0.0.1:P taken, the script picks a port above P."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(["bash", str(CLUSTER_SCRIPT), "free-port", str(port)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        picked = int(out.stdout.strip())
        assert picked > port and not _port_open(picked)


def test_cluster_config_names_the_ports_it_uses(slurm_conf):
    text = Path(slurm_conf).read_text()
    ctld = int(re.search(r"^SlurmctldPort=(\d+)$", text, re.M).group(1))
    slurmd = int(re.search(r"^SlurmdPort=(\d+)$", text, re.M).group(1))
    assert ctld != slurmd and _port_open(ctld)


def test_trivial_job_completes(slurm_conf, tmp_path):
    out = tmp_path / "hello-%j.out"
    job_id, proc = sbatch(f"--output={out}", "--wait", "--wrap", "echo hello from $SLURM_JOB_ID")
    assert proc.returncode == 0, proc.stderr
    assert job_state(job_id) == "COMPLETED"
    log = tmp_path / f"hello-{job_id}.out"
    assert log.read_text().strip() == f"hello from {job_id}"


def test_failing_job_is_failed(slurm_conf, tmp_path):
    job_id, proc = sbatch(f"--output={tmp_path}/%j.out", "--wait", "--wrap", "exit 3")
    assert proc.returncode == 3
    info = job_info(job_id)
    assert info["JobState"] == "FAILED"
    assert info["ExitCode"] == "3:0"


def test_requeue_restarts_job(slurm_conf, tmp_path):
    """A requeued job runs again with SLURM_RESTART_COUNT=1 and then completes."""
    script = tmp_path / "requeue.sh"
    script.write_text(
        "#!/bin/bash\n"
        "#SBATCH --requeue\n"
        f"#SBATCH --output={tmp_path}/rq-%j.out\n"
        "echo run ${SLURM_RESTART_COUNT:-0}\n"
        "if [[ ${SLURM_RESTART_COUNT:-0} -eq 0 ]]; then sleep 300; fi\n"
        "echo done\n"
    )
    job_id, proc = sbatch(str(script))
    assert proc.returncode == 0, proc.stderr
    wait_for_state(job_id, {"RUNNING"})
    time.sleep(0.5)
    t0 = time.monotonic()
    requeue_now(job_id)
    assert wait_for_state(job_id, {"COMPLETED", "FAILED"}, timeout=60) == "COMPLETED"
    assert time.monotonic() - t0 < 30
    assert job_info(job_id)["Restarts"] == "1"
    assert (tmp_path / f"rq-{job_id}.out").read_text().split() == ["run", "1", "done"]


def test_gres_override_for_gpu_less_node(slurm_conf, tmp_path):
    """The test node has no GPUs: a GPU request is refused, ``--gres=none`` on the command line clears it."""
    script = tmp_path / "gpu.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --gres=gpu:1\n#SBATCH --output={tmp_path}/g-%j.out\ntrue\n")
    _, refused = sbatch(str(script))
    assert refused.returncode != 0 and "gres" in refused.stderr.lower()
    job_id, proc = sbatch("--gres=none", "--wait", str(script))
    assert proc.returncode == 0, proc.stderr
    assert job_state(job_id) == "COMPLETED"


# ------------------------------------------------------------------------------- jupyter_tunnel.sh
def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_jupyter_tunnel_job(slurm_conf, tmp_path):
    """Submitted to Slurm: answers with the token (200) and refuses without (403); details and log are
    mode 600; the ssh line names the port, the node, the user and $LOGIN_HOST; ``scancel`` stops it."""
    details_dir = tmp_path / "details"
    token = "t" + os.urandom(20).hex()
    env = dict(
        os.environ,
        JUPYTER_DETAILS_DIR=str(details_dir),
        JUPYTER_TOKEN=token,
        LOGIN_HOST="login.example.org",
    )
    job_id, proc = sbatch(
        "--gres=none",  # the test node has no GPU
        "--mem=2G",
        "--cpus-per-task=1",
        f"--output={tmp_path}/jupyter-%j.out",
        "jupyter_tunnel.sh",
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    details_file = details_dir / f"jupyter-{job_id}.env"
    port = None
    try:
        deadline = time.monotonic() + 180
        while not (details_file.exists() and details_file.stat().st_size > 0):
            state = job_state(job_id)
            assert state in ("PENDING", "RUNNING", "CONFIGURING"), (
                f"job {job_id} is {state}: " + (tmp_path / f"jupyter-{job_id}.out").read_text()[-2000:]
            )
            assert time.monotonic() < deadline, "no details file after 180 s"
            time.sleep(0.25)
        details = read_details(details_file)
        port = int(details["JUPYTER_PORT"])
        assert details["JUPYTER_TOKEN"] == token
        assert stat.S_IMODE(details_file.stat().st_mode) == 0o600
        log = tmp_path / f"jupyter-{job_id}.out"
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, "the Slurm log holds the token"
        user = os.environ.get("USER") or subprocess.run(
            ["id", "-un"], capture_output=True, text=True
        ).stdout.strip()
        node = details["JUPYTER_NODE"]
        ssh_line = f"ssh -N -L {port}:{node}:{port} {user}@login.example.org"
        text = log.read_text()
        assert ssh_line in text
        assert f"http://localhost:{port}/lab?token={token}" in text
        status_url = f"http://127.0.0.1:{port}/api/status"
        assert http_status(status_url, token) == 200
        assert http_status(status_url) == 403
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    assert wait_for_state(job_id, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=60) == "CANCELLED"
    deadline = time.monotonic() + 30
    while port is not None and _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert port is not None and not _port_open(port), "Jupyter still listens after scancel"
    assert not details_file.exists()


# ------------------------------------------------------------------------------------------ train.sh
#: resources for the tests' jobs: the test node has no GPU, and a tiny run needs little
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
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in log
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
