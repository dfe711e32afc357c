"""Debian packages a test needs (PostgreSQL, SLURM), installed quietly with apt-get when missing, as root."""
from __future__ import annotations

import os
import shutil
import subprocess
import time


def apt_install(packages: list[str], what: str, unavailable: type[Exception], timeout: float) -> None:
    "Install `packages` (`what` names them in errors); raise `unavailable` saying why if that fails."
    if shutil.which("apt-get") is None:
        raise unavailable(f"{what} could not be installed: no apt-get on this machine")
    if os.geteuid() != 0:
        raise unavailable(f"{what} could not be installed: apt-get needs root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    deadline = time.monotonic() + timeout
    error = ""
    for command in (install, ["apt-get", "update", "-qq"], install):  # retry once with fresh package lists
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise unavailable(f"{what} could not be installed: {' '.join(command)} timed out") from None
        if done.returncode == 0 and command is install:
            return
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            error = lines[-1] if lines else f"{' '.join(command)} exited with status {done.returncode}"
    raise unavailable(f"{what} could not be installed: {error}")
