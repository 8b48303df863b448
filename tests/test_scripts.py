"""The shell scripts: shellcheck-clean, ``--help`` prints usage, ``jupyter_tunnel.sh --local`` serves.

Slurm submission of the same scripts is tested in ``tests/test_slurm.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from system_tools import apt_tool
from tunnel_helpers import http_status, read_details

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ["train.sh", "jupyter_tunnel.sh", "scripts/activate_env.sh", "setup.sh", ".ci/run", "tests/slurm_cluster.sh"]


@pytest.fixture(scope="session")
def shellcheck() -> str:
    """The shellcheck binary; installed with apt-get (Debian package ``shellcheck``) when missing."""
    return apt_tool("shellcheck", "shellcheck")


@pytest.mark.parametrize("script", SCRIPTS)
def test_shellcheck_clean(shellcheck, script):
    proc = subprocess.run(
        [shellcheck, "--severity=style", "--shell=bash", "--external-sources", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""


SETUP_ERRORS = {
    # options → (exit code, words the one-line message must hold)
    "unknown option": (["--bogus"], 2, ["unknown option '--bogus'"]),
    "value missing at the end": (["--venv"], 2, ["--venv needs a value"]),
    "value missing before an option": (["--python", "--no-data"], 2, ["--python needs a value"]),
    "empty value": (["--torch", ""], 2, ["--torch needs a value"]),
    "python not found": (["--venv", "{tmp}/venv", "--python", "no-such-python3"], 1,
                         ["--python 'no-such-python3'", "not an executable"]),
    "conda missing": (["--conda"], 1, ["--conda given but conda is not on PATH"]),
}


@pytest.mark.parametrize("case", sorted(SETUP_ERRORS))
def test_setup_options_fail_clearly_and_create_nothing(case, tmp_path):
    args, code, words = SETUP_ERRORS[case]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    path = "/usr/bin:/bin"
    if case == "conda missing" and shutil.which("conda", path=path):
        pytest.skip("conda is installed in /usr/bin or /bin")
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = subprocess.run(["bash", "setup.sh", *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": path})
    assert proc.returncode == code, proc.stdout + proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "unbound variable" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no half-made venv


def test_setup_help_lists_every_option():
    proc = subprocess.run(["bash", "setup.sh", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Usage: bash setup.sh")
    parsed = set(re.findall(r"^\s+(--[a-z-]+)\)", (ROOT / "setup.sh").read_text(), re.M))
    assert parsed >= {"--conda", "--venv", "--python", "--torch", "--no-data", "--force"}
    for option in parsed:
        assert option in proc.stdout, f"{option} is parsed but not in --help"


def test_setup_fingerprint_counts_only_what_decides_the_install(tmp_path):
    """Editing pytest settings in pyproject.toml keeps the fingerprint (no reinstall); a dependency edit changes it."""
    for name in ("setup.sh", "pyproject.toml", "environment.yml", "requirements-lock.txt"):
        shutil.copy(ROOT / name, tmp_path / name)

    def fingerprint(*args: str) -> str:
        proc = subprocess.run(["bash", "setup.sh", "--fingerprint", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    first = fingerprint()
    assert first.split()[1:] == ["torch==2.13.0", "escnn==1.0.11"]
    assert fingerprint("--locked") == first + " locked:" + hashlib.sha256(
        (ROOT / "requirements-lock.txt").read_bytes()).hexdigest()[:16]
    toml = tmp_path / "pyproject.toml"
    toml.write_text(toml.read_text().replace("timeout = 1200", "timeout = 600"))
    assert fingerprint() == first
    toml.write_text(toml.read_text().replace('"pyyaml>=6"', '"pyyaml>=6.0.1"'))
    assert fingerprint() != first
    assert fingerprint("--torch", "torch==2.5.1").split()[1] == "torch==2.5.1"


def test_setup_rerun_skips_what_is_installed():
    """A second `setup.sh` on the environment the tests run in installs nothing (its fingerprint matches)."""
    prefix = Path(sys.prefix)
    stamp = prefix / ".equivariant-ocelot-setup"
    if not (prefix / "bin" / "python").is_file() or not stamp.is_file():
        pytest.skip(f"the test environment {prefix} was not made by setup.sh")
    locked = ["--locked"] if " locked:" in stamp.read_text() else []  # rerun it as it was made
    fp = subprocess.run(["bash", "setup.sh", "--fingerprint", *locked], cwd=ROOT, capture_output=True, text=True,
                        timeout=60)
    assert fp.returncode == 0 and fp.stdout.strip(), fp.stderr  # a broken --fingerprint must not read as "changed"
    now = fp.stdout.strip()
    if stamp.read_text().strip() != now:
        pytest.skip(f"what setup.sh installs changed since it made this environment ({now} vs "
                    f"{stamp.read_text().strip()}; rerun it)")
    proc = subprocess.run(["bash", "setup.sh", "--venv", str(prefix), "--no-data", *locked], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "==> packages already installed" in proc.stdout and "==> PyTorch" not in proc.stdout
    assert "synthetic default data" not in proc.stdout  # --no-data
    assert proc.stdout.rstrip().endswith(f"Python: {prefix}/bin/python")


@pytest.mark.parametrize("script", ["train.sh", "jupyter_tunnel.sh", "tests/slurm_cluster.sh"])
def test_help_prints_usage(script):
    proc = subprocess.run(["bash", script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout or "usage" in proc.stdout
    assert "sbatch" in proc.stdout or script.startswith("tests/")


@pytest.mark.parametrize("script", ["train.sh", "jupyter_tunnel.sh"])
def test_sbatch_header(script):
    """One GPU, a log under logs/, and (for train.sh) requeue + a warning signal before the time limit."""
    header = [
        line for line in (ROOT / script).read_text().splitlines() if line.startswith("#SBATCH")
    ]
    text = "\n".join(header)
    for option in ("--job-name=", "--time=", "--gres=gpu:1", "--cpus-per-task=", "--mem=", "--output=logs/"):
        assert option in text, f"{script}: no {option} in the #SBATCH header"
    if script == "train.sh":
        assert "--requeue" in text
        assert "--signal=B:USR1@" in text


@pytest.mark.parametrize("script", ["train.sh", "jupyter_tunnel.sh"])
def test_unknown_option_is_refused(script):
    proc = subprocess.run(
        ["bash", script, "--no-such-option"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "--help" in proc.stderr


def wait_for_file(path: Path, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before writing {path}")
        time.sleep(0.25)
    raise AssertionError(f"{path} did not appear within {timeout} s")


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_jupyter_tunnel_local(tmp_path):
    """``--local``: 200 on /api/status with the token, 403 without; details file mode 600; stops cleanly."""
    details_dir = tmp_path / "details"
    env = dict(os.environ, JUPYTER_DETAILS_DIR=str(details_dir))
    env.pop("JUPYTER_TOKEN", None)
    log = (tmp_path / "jupyter.log").open("w")
    proc = subprocess.Popen(
        ["bash", "jupyter_tunnel.sh", "--local"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        details_file = details_dir / f"jupyter-local-{proc.pid}.env"
        wait_for_file(details_file, timeout=180, proc=proc)
        details = read_details(details_file)
        port, token = int(details["JUPYTER_PORT"]), details["JUPYTER_TOKEN"]
        assert len(token) >= 32
        assert stat.S_IMODE(details_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(details_dir.stat().st_mode) == 0o700
        status_url = f"http://127.0.0.1:{port}/api/status"
        assert http_status(status_url, token) == 200
        assert http_status(f"{status_url}?token={token}") == 200
        assert http_status(status_url) == 403
        assert http_status(status_url, "not-the-token") == 403
        out = (tmp_path / "jupyter.log").read_text()
        assert f"http://localhost:{port}/lab?token={token}" in out
        assert details["JUPYTER_URL"] == f"http://localhost:{port}/lab?token={token}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    assert proc.returncode == 143  # ended by our SIGTERM, not by an error
    assert not details_file.exists(), "the details file should be removed when the server stops"
    deadline = time.monotonic() + 10
    while port_open(port) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not port_open(port), "Jupyter still listens after the script was stopped"


# ------------------------------------------------------------------------------- train.sh without Slurm
def _local_env() -> dict:
    """The environment without Slurm job variables (as on a laptop), whatever runs the tests."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


def test_train_sh_dry_run_names_the_run_folder(tiny_ocelot_root, tmp_path):
    """``--dry-run`` prints the papermill command and the run folder the notebook will use."""
    from util.config import load_config
    from util.training import resolve_run_dir

    overrides = [f"data.root={tiny_ocelot_root}", f"runs_dir={tmp_path / 'runs'}", "model.kwargs.width=8"]
    proc = subprocess.run(
        ["bash", "train.sh", "--dry-run", "configs/tiny.yaml", *overrides],
        cwd=ROOT, env=_local_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    run_dir = resolve_run_dir(load_config("configs/tiny.yaml", overrides))
    assert f"train.sh: run folder {run_dir}" in proc.stdout
    assert "papermill v1_0.ipynb" in proc.stdout and str(run_dir / "v1_0.ipynb") in proc.stdout
    assert not (tmp_path / "runs").exists(), "a dry run must not create anything"


@pytest.mark.parametrize(
    "args, message",
    [
        (["configs/tiny.yaml", "lerning_rate=0.1"], "learning_rate"),  # misspelt key: refused with a hint
        (["configs/no_such.yaml"], "not found"),
        (["configs/tiny.yaml", "notakeyvalue"], "key=value"),
        (["configs/grid_example.yaml"], "array job"),  # a grid needs SLURM_ARRAY_TASK_ID
    ],
)
def test_train_sh_refuses_bad_arguments(args, message):
    proc = subprocess.run(
        ["bash", "train.sh", "--dry-run", *args], cwd=ROOT, env=_local_env(), capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr


@pytest.mark.slow
def test_train_sh_runs_locally(tiny_ocelot_root, tmp_path):
    """``bash train.sh CONFIG key=value ...`` without Slurm: the same papermill run, into the run folder."""
    runs = tmp_path / "runs"
    proc = subprocess.run(
        ["bash", "train.sh", "configs/tiny.yaml", f"data.root={tiny_ocelot_root}", f"runs_dir={runs}"],
        cwd=ROOT, env=_local_env(), capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = [p.parent for p in runs.glob("*/*/config.yaml")]
    for rel in ("config.yaml", "metrics.json", "checkpoints/last.ckpt", "v1_0.ipynb", "figures/learning_curves.png"):
        assert (run_dir / rel).is_file(), rel
    assert re.search(rf"train\.sh: done in \d+ s; run folder {re.escape(str(run_dir))}", proc.stdout)
    assert re.search(r"train\.sh: test mF1 [01]\.\d{4} \(BC F1", proc.stdout), proc.stdout[-2000:]
