"""Helpers for the real-Slurm tests: the test cluster fixture (used from ``conftest.py``), ``sbatch``, job
states from ``scontrol`` and requeues (see ``tests/test_slurm.py``)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from system_tools import truthy

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SCRIPT = ROOT / "tests" / "slurm_cluster.sh"


def start_test_cluster():
    """Start (or reuse) the test cluster; export SLURM_CONF for every client; yield its path (a generator for
    the session fixture ``slurm_conf`` in ``conftest.py``)."""
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
        if proc.returncode == 3 and not truthy(os.environ.get("CI")):
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
    if not was_running and not truthy(os.environ.get("SLURM_TEST_KEEP")):
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


