"""util.cluster.procs: children of a process from /proc, running or not, signals to several."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from util.cluster import procs

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def test_children_lists_the_direct_children_only():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
                              "time.sleep(60)"])
    try:
        deadline = time.monotonic() + 30
        while not procs.children(child.pid):
            assert time.monotonic() < deadline, "the grandchild did not start"
            time.sleep(0.05)
        assert child.pid in procs.children(os.getpid())
        (grandchild,) = procs.children(child.pid)
        assert grandchild not in procs.children(os.getpid())
        assert procs.children(grandchild) == []
    finally:
        for pid in procs.children(child.pid):
            os.kill(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_children_reads_a_proc_tree_and_passes_over_what_is_not_a_process(tmp_path: Path):
    for pid, ppid in ((10, 1), (11, 10), (12, 10), (13, 11)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "status").write_text(f"Name:\tx\nState:\tS (sleeping)\nPPid:\t{ppid}\n")
    (tmp_path / "14").mkdir()  # ended while listed: no status file
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("PPid:\t10\n")  # not a pid folder
    (tmp_path / "15").mkdir()
    (tmp_path / "15" / "status").write_text("PPid:\t100\n")  # 100 is not 10
    assert procs.children(10, proc=tmp_path) == [11, 12]
    assert procs.children(11, proc=tmp_path) == [13]
    assert procs.children(99, proc=tmp_path) == []


def test_alive_is_false_for_an_ended_or_zombie_process(tmp_path: Path):
    assert procs.alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while procs.alive(child.pid):  # ended but not collected: a zombie
        assert time.monotonic() < deadline, "the child did not end"
        time.sleep(0.05)
    assert Path(f"/proc/{child.pid}").exists()  # still listed (zombie), yet not alive
    child.wait()
    assert not procs.alive(child.pid)
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "status").write_text("State:\tZ (zombie)\nPPid:\t1\n")
    assert not procs.alive(7, proc=tmp_path)


def test_send_signals_the_running_ones_and_passes_over_ended_ones():
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    running = subprocess.Popen(SLEEP)
    try:
        assert procs.send([ended.pid, running.pid], signal.SIGTERM) == [running.pid]
        assert running.wait(timeout=30) == -signal.SIGTERM
    finally:
        running.kill()
        running.wait()
