"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd on this machine, partition
`debug`, no accounting. The session fixture `slurm` installs Debian's slurm-wlm and munge where they
are missing (as root, with apt-get), writes a minimal slurm.conf in a temporary folder, starts the
daemons it needs, waits for the node, and stops what it started at the end. Where it cannot (not
root, no apt-get, the install fails, the daemons do not come up) the tests that use it are skipped
with one line saying why.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PARTITION = "debug"
TIMEOUT_S = 30  # for the daemons to come up and the node to be idle


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> str:
    """Run a SLURM command (squeue, scontrol, ...) against the test cluster; its stdout."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def install() -> str | None:
    """Install slurm-wlm and munge where missing; None when they are there, else why not."""
    if all(shutil.which(d, path="/usr/sbin:/usr/bin") for d in ("slurmctld", "slurmd", "munged", "sbatch")):
        return None
    if os.geteuid() != 0:
        return "SLURM is not installed and installing it needs root"
    if shutil.which("apt-get") is None:
        return "SLURM is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if proc.returncode != 0:
            return f"{' '.join(cmd)} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def slurm_conf(folder: Path, host: str) -> str:
    """A minimal slurm.conf: this host as the one node, with its real CPUs and memory."""
    cpus = os.cpu_count() or 1
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return f"""\
ClusterName=nplmtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=5
JobRequeue=1
MinJobAge=300
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def munge_works() -> bool:
    cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    return cred.returncode == 0 and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True,
                                                   timeout=10).returncode == 0


def start(folder: Path) -> tuple[list[subprocess.Popen], str | None]:
    """Start the daemons (those not running already); (the processes started, why it failed or None)."""
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host))
    (folder / "state").mkdir()
    (folder / "spool").mkdir()
    os.environ["SLURM_CONF"] = str(conf)  # every SLURM command of this session, and the jobs, use it
    started: list[subprocess.Popen] = []
    if not munge_works():
        Path("/run/munge").mkdir(exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        started.append(subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "-F"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        if not _until(munge_works, 10):
            return started, "munged did not start"
    for daemon in (["slurmctld", "-D", "-i"], ["slurmd", "-D", "-N", host]):
        started.append(subprocess.Popen(daemon, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if not _until(lambda: sh("sinfo", "-h", "-o", "%T", "-p", PARTITION, check=False).strip() == "idle", TIMEOUT_S):
        log = (folder / "slurmctld.log").read_text().strip().splitlines()[-1:] if (folder / "slurmctld.log").exists() else []
        return started, f"the SLURM daemons did not bring node {host} up within {TIMEOUT_S} s {log}"
    return started, None


def stop(started: list[subprocess.Popen]) -> None:
    for proc in reversed(started):  # slurmd, slurmctld, then munged
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _until(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return True
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(0.5)
    return False


@pytest.fixture(scope="session")
def slurm():
    """A running one-node SLURM cluster (partition `debug`); SLURM_CONF points at its slurm.conf."""
    if os.uname().sysname != "Linux":
        pytest.skip("a test SLURM cluster needs Linux")
    t0 = time.monotonic()
    why = install()
    if why:
        pytest.skip(why)
    t1 = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="nplm-slurm-"))
    old_conf = os.environ.get("SLURM_CONF")
    started, why = start(folder)
    try:
        if why:
            pytest.skip(why)
        print(f"\nSLURM test cluster: installed in {t1 - t0:.1f} s, up in {time.monotonic() - t1:.1f} s ({folder})")
        yield folder
    finally:
        subprocess.run(["scancel", "--partition", PARTITION], capture_output=True, timeout=30)
        stop(started)
        if old_conf is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old_conf
        shutil.rmtree(folder, ignore_errors=True)
