"""System tools the tests need but the project does not depend on (shellcheck, qemu-user): found on PATH, or
installed with apt-get where the tests run as root; otherwise the test skips, or fails under ``CI=1``."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no")


def apt_tool(exe: str, package: str) -> str:
    """The path of ``exe``; installs the Debian package ``package`` with apt-get when missing and possible."""
    found = shutil.which(exe)
    if found:
        return found
    why = f"{exe} is not installed"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600)
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        found = shutil.which(exe)
        if found:
            return found
        why += f" and apt-get could not install {package}: {proc.stderr.strip()[-400:]}"
    else:
        why += f" and cannot be installed here (apt-get install {package} needs root)"
    if truthy(os.environ.get("CI")):
        pytest.fail(why)
    pytest.skip(why)
