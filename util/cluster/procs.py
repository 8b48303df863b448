"""Processes read from ``/proc`` (Linux, no procps needed): the children of a process, whether one still runs,
and a signal to several at once."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

PROC = Path("/proc")


def _status_fields(pid_dir: Path) -> dict[str, str]:
    """The ``Key:\\tvalue`` lines of ``/proc/<pid>/status``; {} when the process is gone."""
    try:
        text = (pid_dir / "status").read_text()
    except OSError:  # it ended while we looked
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def children(pid: int, proc: Path = PROC) -> list[int]:
    """The PIDs whose parent is ``pid`` (``PPid:`` in ``/proc/<pid>/status``), sorted; [] when it has none."""
    kids = []
    for pid_dir in proc.glob("[0-9]*"):
        if _status_fields(pid_dir).get("PPid") == str(pid):
            kids.append(int(pid_dir.name))
    return sorted(kids)


def alive(pid: int, proc: Path = PROC) -> bool:
    """True while ``pid`` runs: it exists and is not a zombie (ended, waiting for its parent to collect it)."""
    state = _status_fields(proc / str(pid)).get("State", "")
    return state != "" and not state.startswith(("Z", "X"))


def send(pids: Iterable[int], signum: int) -> list[int]:
    """Send ``signum`` to each of ``pids``; the ones that got it (a process that has ended is passed over)."""
    sent = []
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        sent.append(pid)
    return sent
