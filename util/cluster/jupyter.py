"""``jupyter_tunnel.sh``'s helpers: a free port, a token, and waiting until the started server answers."""
from __future__ import annotations

import secrets
import socket
import time
import urllib.request
from typing import Mapping

from util.cluster import procs

PROG = "jupyter_tunnel.sh"
DEFAULT_TIMEOUT_S = 300.0


class JupyterError(RuntimeError):
    """The server did not answer, or a setting is unusable; the message says which."""


def free_port() -> int:
    """A TCP port nobody listens on now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def new_token() -> str:
    """A fresh random token (48 hex digits)."""
    return secrets.token_hex(24)


def start_timeout(env: Mapping[str, str]) -> float:
    """``JUPYTER_START_TIMEOUT`` in seconds (default 300); :class:`JupyterError` naming a bad value."""
    value = env.get("JUPYTER_START_TIMEOUT", "")
    if value == "":
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise JupyterError(f"JUPYTER_START_TIMEOUT={value!r} is not a positive number of seconds")
    return seconds


def answers(port: int, token: str, timeout_s: float = 5.0) -> bool:
    """True when the server on 127.0.0.1:``port`` answers ``/api/status`` with 200 for ``token`` (no proxies)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout_s) as r:
            return r.status == 200
    except OSError:  # not listening yet, refused, 403, timeout
        return False


def wait_for_jupyter(port: int, pid: int, token: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                     poll_s: float = 0.5) -> None:
    """Return once the server answers with ``token``; :class:`JupyterError` when the process ``pid`` ends first
    or ``timeout_s`` seconds pass."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not procs.alive(pid):
            raise JupyterError("Jupyter exited before it answered")
        if answers(port, token):
            return
        time.sleep(poll_s)
    raise JupyterError(f"no answer on port {port} after {timeout_s:.0f} s")
