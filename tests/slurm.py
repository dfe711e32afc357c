"""A throwaway single-node SLURM cluster for tests: `with slurm_cluster() as cluster: cluster.run("sbatch", ...)`.

Uses Debian's `slurm-wlm` and `munge`, installing them with apt-get when missing (as `pg.py` does for PostgreSQL).
Runs as root: a munge key in `/etc/munge/munge.key` (created once, mode 400, owner `munge`), `munged` as the `munge`
user on a socket in a temporary folder, then `slurmctld` and `slurmd` with one node at `NodeAddr=127.0.0.1`, free
loopback ports, and state, spool, pid and log files in that folder; the daemons are stopped by their pid files and the
folder deleted on exit.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from debian import apt_install

INSTALL_TIMEOUT = 600
KEY = Path("/etc/munge/munge.key")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo")


class SlurmUnavailable(RuntimeError):
    "No SLURM cluster could be installed or started here; a test should `pytest.skip` with this message."


def _missing() -> list[str]:
    return [b for b in BINARIES if shutil.which(b, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None]


def _apt_install() -> None:
    apt_install(["slurm-wlm", "munge"], "SLURM", SlurmUnavailable, INSTALL_TIMEOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sbin(name: str) -> str:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin") or name


def _munge_key() -> None:
    if KEY.exists():
        return
    munge = pwd.getpwnam("munge")
    KEY.parent.mkdir(parents=True, exist_ok=True)
    KEY.write_bytes(os.urandom(1024))
    os.chown(KEY, munge.pw_uid, munge.pw_gid)
    KEY.chmod(0o400)


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]
    node: str

    def run(self, *command: str, check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run(list(command), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.folder.rglob("*.log")))


def _config(folder: Path, node: str) -> str:
    hardware = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    node_line = next(line for line in hardware.splitlines() if line.startswith("NodeName="))
    return f"""ClusterName=lltest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
KillWait=5
{node_line.split(' ')[0]} NodeAddr=127.0.0.1 {' '.join(node_line.split(' ')[1:])}
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def slurm_cluster() -> Iterator[Cluster]:
    "A running one-node cluster; `SlurmUnavailable` (with the reason) when it cannot be installed or started."
    if os.geteuid() != 0:
        raise SlurmUnavailable("a SLURM cluster in a test needs root (slurmd runs as root)")
    if _missing():
        _apt_install()
        if missing := _missing():
            raise SlurmUnavailable(f"SLURM could not be installed: no {', '.join(missing)} after apt-get")
    _munge_key()
    folder = Path(tempfile.mkdtemp(prefix="slurm-"))
    folder.chmod(0o755)
    munge = pwd.getpwnam("munge")
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir()
    os.chown(folder / "munge", munge.pw_uid, munge.pw_gid)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_config(folder, node))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for name in [k for k in env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        del env[name]  # never the caller's job
    cluster = Cluster(folder, env, node)
    m = folder / "munge"
    try:
        subprocess.run(["runuser", "-u", "munge", "--", _sbin("munged"), f"--socket={m}/munge.socket",
                        f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log", f"--seed-file={m}/seed",
                        f"--key-file={KEY}"], check=True, capture_output=True, timeout=30)
        subprocess.run([_sbin("slurmctld"), "-i"], env=env, check=True, capture_output=True, timeout=30)
        subprocess.run([_sbin("slurmd")], env=env, check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while "idle" not in cluster.run("sinfo", "-h", "-o", "%T", check=False):
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"the SLURM node never became idle:\n{cluster.logs()}")
            time.sleep(0.5)
    except subprocess.CalledProcessError as error:
        _teardown(folder)
        raise SlurmUnavailable(f"a SLURM daemon did not start: {' '.join(map(str, error.cmd))}: "
                               f"{(error.stderr or b'').decode(errors='replace').strip()}\n{cluster.logs()}") from None
    except BaseException:
        _teardown(folder)
        raise
    try:
        yield cluster
    finally:
        _teardown(folder)


def _teardown(folder: Path) -> None:
    for pidfile in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
        _stop(pidfile)
    shutil.rmtree(folder, ignore_errors=True)
