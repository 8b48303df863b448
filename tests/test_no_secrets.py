"""Nothing in the repository names a user, a home folder, a host or holds a key.

Scans every file git would ship (tracked, plus untracked files that are not ignored) for:
home paths (``/home/<name>``, ``/Users/<name>``, ``C:\\Users\\<name>``), the name/e-mail of whoever runs
the tests (login name, git identity) and this machine's host name, e-mail addresses, literal
``ssh user@host`` targets and ``#SBATCH --account``/``--mail-user`` values, institutional or internal host
names (``*.edu``, ``*.ac.uk``, ``*.internal``, ...), private IPv4 addresses, and API keys / tokens /
private keys (well-known formats and ``key = "<long literal>"`` assignments).

Placeholders are fine: ``<user>``, ``$USER``, ``${LOGIN_HOST}``, ``example.org``.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 5_000_000

#: names too generic to flag when they are the login or host name of the machine running the tests
GENERIC_NAMES = {
    "root", "user", "users", "admin", "runner", "ubuntu", "debian", "jenkins", "vscode", "nobody",
    "builder", "build", "ci", "docker", "worker", "localhost", "vm", "host", "node", "login", "test",
    "tests", "main", "work", "home", "app", "dev", "github", "gitlab", "codespace", "jovyan", "none",
}
#: placeholders allowed after /home/ or /Users/
PLACEHOLDER_HOMES = {"user", "username", "you", "me", "name", "your_name", "yourname", "USER", "runner"}
ALLOWED_EMAIL_DOMAINS = re.compile(r"(^|\.)(example\.(org|com|net)|users\.noreply\.github\.com|noreply\..*)$")

PATTERNS: dict[str, re.Pattern] = {
    "home path": re.compile(r"(?<![\w.~-])/(?:home|Users)/(?P<name>[A-Za-z0-9._-]+)"),
    "windows home path": re.compile(r"\b[A-Za-z]:\\\\?Users\\\\?(?P<name>[A-Za-z0-9._-]+)"),
    "e-mail address": re.compile(r"\b[A-Za-z0-9._%+-]+@(?P<domain>[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})\b"),
    "ssh user@host": re.compile(r"\bssh\s+(?:-\S+\s+(?:\S+\s+)?)*(?P<target>[A-Za-z0-9._-]+@[A-Za-z0-9._-]+)"),
    "slurm account or mail user": re.compile(
        r"#SBATCH\s+(?:--account[= ]|-A\s*|--mail-user[= ])(?P<value>[A-Za-z0-9][^\s]*)"
    ),
    "institutional/internal host": re.compile(
        r"\b(?!(?:util|model|tests)\.)"  # this project's own modules (python -m util.cluster) are not hosts
        r"(?:[A-Za-z0-9-]+\.)+(?:edu|gov|ac\.[a-z]{2}|edu\.[a-z]{2}|internal|intranet|corp|lan|cluster|hpc)"
        r"(?![\w.-])"
    ),
    "private IPv4 address": re.compile(
        r"(?<![\d.])(?:10\.\d{1,3}|192\.168|172\.(?:1[6-9]|2\d|3[01]))\.\d{1,3}\.\d{1,3}(?![\d.])"
    ),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "OpenAI/Anthropic-style key": re.compile(r"\bsk-(?:ant-)?[A-Za-z0-9_-]{20,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"),
    "key/token assignment": re.compile(
        r"(?i)\b[\w-]*(?:api[_-]?key|secret|token|passw(?:or)?d)[\w-]*['\"]?\s*[:=]\s*['\"]?"
        r"(?P<value>[A-Za-z0-9_\-/+]{16,})"
    ),
}


def _identity_names() -> set[str]:
    """Login name, git identity and host names of the machine running the tests (non-generic ones)."""
    names: set[str] = set()
    for getter in (getpass.getuser, lambda: os.environ.get("USER", ""), lambda: os.environ.get("LOGNAME", "")):
        try:
            names.add(getter() or "")
        except Exception:
            pass
    for key in ("user.name", "user.email"):
        proc = subprocess.run(["git", "config", key], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode == 0:
            names.add(proc.stdout.strip())
    for host in (socket.gethostname(), socket.getfqdn()):
        names.add(host)
        names.add(host.split(".")[0])
    return {
        n for n in names
        if len(n) >= 4 and n.lower() not in GENERIC_NAMES and not ALLOWED_EMAIL_DOMAINS.search(n.split("@")[-1])
    }


PLACEHOLDER_SSH_USERS = {"user", "username", "you", "me", "name"}
PLACEHOLDER_SSH_HOSTS = {"host", "hostname", "login", "login-host", "loginhost", "cluster", "server"}


def find_problems(text: str, identities: set[str] = frozenset()) -> list[tuple[str, str, int]]:
    """(kind, matched text, offset) for everything in ``text`` that looks like a name, host, path or key."""
    problems: list[tuple[str, str, int]] = []
    for kind, pattern in PATTERNS.items():
        for m in pattern.finditer(text):
            groups = m.groupdict()
            if "name" in groups and groups["name"] in PLACEHOLDER_HOMES:
                continue
            if kind == "e-mail address" and ALLOWED_EMAIL_DOMAINS.search(groups["domain"].lower()):
                continue
            if kind == "e-mail address" and m.group(0).lower().startswith("git@"):
                continue
            if kind == "ssh user@host":
                user, _, host = groups["target"].partition("@")
                if host.lower().endswith(("example.org", "example.com", "example.net")):
                    continue
                if user.lower() in PLACEHOLDER_SSH_USERS or host.lower() in PLACEHOLDER_SSH_HOSTS:
                    continue
            if kind == "key/token assignment":
                value = groups["value"]
                # keys mix letters and digits; identifiers and prose (``token_hex``) do not
                if not (re.search(r"\d", value) and re.search(r"[A-Za-z]", value)):
                    continue
            problems.append((kind, m.group(0), m.start()))
    for name in identities:
        for m in re.finditer(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text):
            problems.append(("login/git/host name of this machine", name, m.start()))
    return problems


def shipped_files() -> list[Path]:
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"not a git checkout: {proc.stderr.decode(errors='replace').strip()}")
    files = []
    for rel in proc.stdout.decode().split("\0"):
        path = ROOT / rel
        if rel and path.is_file() and not path.is_symlink():
            files.append(path)
    return files


def test_repository_has_no_names_hosts_or_keys():
    identities = _identity_names()
    files = shipped_files()
    assert len(files) > 10, "the scan found almost no files; is this the repository?"
    scanned = 0
    report = []
    for path in files:
        data = path.read_bytes()[:MAX_BYTES]
        if b"\0" in data[:8192]:
            continue  # binary (images, checkpoints)
        scanned += 1
        text = data.decode("utf-8", errors="replace")
        for kind, match, offset in find_problems(text, identities):
            line = text.count("\n", 0, offset) + 1
            report.append(f"{path.relative_to(ROOT)}:{line}: {kind}: {match!r}")
    assert scanned > 10
    assert not report, "possible personal data or secrets:\n" + "\n".join(report)


# The planted examples are assembled at run time so that this file itself stays clean.
_H, _U = "/ho" + "me/", "/Us" + "ers/"
PLANTED = {
    "home path": [f"cd {_H}alice/projects", f"'{_U}bob/data'"],
    "windows home path": ["C:" + "\\Us" + "ers\\carol\\repo"],
    "e-mail address": ["contact: dave" + "@" + "university.org"],
    "ssh user@host": ["ssh -N -L 8888:node12:8888 erin" + "@" + "gateway.cluster.org"],
    "slurm account or mail user": ["#SBATCH --account=" + "lab123", "#SBATCH -A " + "proj7"],
    "institutional/internal host": ["login1.hpc." + "uni" + ".edu", "gpu7.cs.example" + ".ac.uk"],
    "private IPv4 address": ["ssh 192" + ".168.1.20", "10." + "4.5.6"],
    "AWS access key": ["AKIA" + "ABCDEFGHIJKLMNOP"],
    "GitHub token": ["ghp_" + "a1" * 18],
    "Hugging Face token": ["hf_" + "Ab" * 16],
    "Slack token": ["xox" + "b-" + "1234567890-" + "AbCdEf" * 3],
    "OpenAI/Anthropic-style key": ["sk-" + "proj" + "A1b2" * 6, "sk-" + "ant-" + "api03-" + "Zz9_" * 6],
    "private key": ["-----BEGIN RSA " + "PRIVATE KEY-----"],
    "key/token assignment": [
        "COMET_API_KEY" + "=" + "Zx9" * 8,
        "experiment = Experiment(api_key" + '="' + "a1B2c3D4e5F6g7H8i9J0k1L2m" + '")',
        "'token'" + ": " + "'0f3c" + "9a8b" * 6 + "'",
    ],
}
CLEAN = [
    "ssh -N -L $PORT:$NODE:$PORT $USER@$LOGIN_HOST",
    "ssh -N -L 8888:node1:8888 <user>@<login-host>",
    "ssh -N -L 8888:node1:8888 you" + "@" + "login.example.org",
    "export COMET_API_KEY=<your key>",
    'api_key = os.environ["COMET_API_KEY"]',
    "JUPYTER_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(24))')",
    "token = secrets.token_hex(24)",
    "--ServerApp.token_placeholder=jupyter_server_token",
    "http://127.0.0.1:8888/api/status 0.0.0.0",
    "torch==2.13.0 numpy 1.26.4 version 10.2.0",
    "cd " + _H + "$USER/work; ~/.jupyter_tunnel; $HOME/.cache",
    "git clone git" + "@" + "github.com:org/repo.git",
    "https://github.com/QUVA-Lab/escnn https://zenodo.org/record/123 https://arxiv.org/abs/2501.00001",
    "exec python -m util.cluster run -- papermill; from util.cluster.plan import run_plan",
]


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_detector_finds_planted_examples(kind):
    for example in PLANTED[kind]:
        kinds = {k for k, _, _ in find_problems(example)}
        assert kind in kinds, f"{example!r} not flagged as {kind} (got {kinds})"


def test_every_pattern_has_a_planted_example():
    assert set(PLANTED) == set(PATTERNS), f"patterns without a planted example: {set(PATTERNS) - set(PLANTED)}"


@pytest.mark.parametrize("text", CLEAN)
def test_detector_accepts_placeholders(text):
    assert find_problems(text) == []


def test_detector_finds_this_machines_identity():
    fake = {"ada_lovelace", "hostname-42"}
    assert {m for _, m, _ in find_problems("owner ada_lovelace on hostname-42.", fake)} == fake
    assert find_problems("owner ada_lovelacex", fake) == []
