"""util.cluster.jupyter (``free-port``, ``token``, ``wait-jupyter``): jupyter_tunnel.sh's helpers."""
from __future__ import annotations

import http.server
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from util.cluster import jupyter
from util.cluster.__main__ import main

TOKEN = "s3cret"


class _Status(http.server.BaseHTTPRequestHandler):
    """/api/status: 200 with ``Authorization: token s3cret``, 403 otherwise (as Jupyter answers)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        ok = self.path == "/api/status" and self.headers.get("Authorization") == f"token {TOKEN}"
        self.send_response(200 if ok else 403)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_free_port_can_be_listened_on():
    port = jupyter.free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("", port))
        s.listen()


def test_token_is_fresh_and_long():
    tokens = {jupyter.new_token() for _ in range(5)}
    assert len(tokens) == 5 and all(re.fullmatch(r"[0-9a-f]{48}", t) for t in tokens)


@pytest.mark.parametrize("value, seconds", [(None, 300.0), ("", 300.0), ("12.5", 12.5), ("1", 1.0)])
def test_start_timeout(value, seconds):
    assert jupyter.start_timeout({} if value is None else {"JUPYTER_START_TIMEOUT": value}) == seconds


@pytest.mark.parametrize("value", ["abc", "0", "-3", "nan"])
def test_bad_start_timeout_is_named(value):
    with pytest.raises(jupyter.JupyterError, match=f"JUPYTER_START_TIMEOUT='{value}' is not a positive number"):
        jupyter.start_timeout({"JUPYTER_START_TIMEOUT": value})


def test_wait_returns_when_the_server_answers_with_the_token(server, monkeypatch):
    # a proxy in the environment (as on many cluster nodes) must not be asked for 127.0.0.1
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    t0 = time.monotonic()
    jupyter.wait_for_jupyter(server, pid=subprocess.os.getpid(), token=TOKEN, timeout_s=20)
    assert time.monotonic() - t0 < 10


def test_wait_gives_up_on_a_wrong_token_or_a_silent_port(server):
    with pytest.raises(jupyter.JupyterError, match=f"no answer on port {server} after 1 s"):
        jupyter.wait_for_jupyter(server, pid=subprocess.os.getpid(), token="wrong", timeout_s=1, poll_s=0.1)
    port = jupyter.free_port()
    with pytest.raises(jupyter.JupyterError, match=f"no answer on port {port}"):
        jupyter.wait_for_jupyter(port, pid=subprocess.os.getpid(), token=TOKEN, timeout_s=0.5, poll_s=0.1)


def test_wait_stops_when_jupyter_exits(server):
    ended = subprocess.Popen([sys.executable, "-c", "pass"])  # left uncollected: a zombie, as under bash
    time.sleep(0.5)
    with pytest.raises(jupyter.JupyterError, match="Jupyter exited before it answered"):
        jupyter.wait_for_jupyter(server, pid=ended.pid, token=TOKEN, timeout_s=30)
    ended.wait()


def test_cli(server, capsys, monkeypatch):
    assert main(["free-port"]) == 0 and 0 < int(capsys.readouterr().out) < 65536
    assert main(["token"]) == 0 and len(capsys.readouterr().out.strip()) == 48
    monkeypatch.delenv("JUPYTER_TOKEN", raising=False)
    pid = str(subprocess.os.getpid())
    assert main(["wait-jupyter", str(server), pid]) == 1
    assert capsys.readouterr().err.strip() == "jupyter_tunnel.sh: JUPYTER_TOKEN is not set"
    monkeypatch.setenv("JUPYTER_TOKEN", TOKEN)
    monkeypatch.setenv("JUPYTER_START_TIMEOUT", "soon")
    assert main(["wait-jupyter", str(server), pid]) == 1
    assert "JUPYTER_START_TIMEOUT='soon'" in capsys.readouterr().err
    monkeypatch.setenv("JUPYTER_START_TIMEOUT", "20")
    assert main(["wait-jupyter", str(server), pid]) == 0
