"""Helpers shared by the jupyter_tunnel.sh tests (local in test_scripts.py, under Slurm in test_slurm.py)."""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path


def read_details(path: Path) -> dict[str, str]:
    """The ``KEY=value`` / ``KEY='value'`` lines of a jupyter_tunnel.sh details file."""
    details = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        details[key] = value.strip("'")
    return details


def http_status(url: str, token: str | None = None) -> int:
    """HTTP status of a GET on ``url``, with ``Authorization: token <token>`` when a token is given."""
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
