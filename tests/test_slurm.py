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

import os
import re
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from slurm_helpers import CLUSTER_SCRIPT, job_info, job_state, requeue_now, sbatch, wait_for_state
from tunnel_helpers import http_status, read_details

pytestmark = pytest.mark.slurm


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
