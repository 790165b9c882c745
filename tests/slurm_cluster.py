"""A real one-node slurm for tests: munged, slurmctld and slurmd from Debian's slurm-wlm and
munge packages (`.ci/run` installs them when missing), started by hand in a temporary folder
with their own config, key, sockets, ports, state and logs, and stopped afterwards. Nothing
outside that folder is touched; no system service is started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")


def missing() -> list[str]:
    """The programs a cluster needs that are not installed."""
    return [name for name in DAEMONS
            if not shutil.which(name) and not Path("/usr/sbin", name).exists()]


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _sbin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Cluster:
    def __init__(self, root: Path, cpus: int = 2):
        self.root = root
        self.cpus = cpus
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for name in [k for k in self.env if k.startswith("SLURM_") and k != "SLURM_CONF"]:
            del self.env[name]  # a test run inside a slurm job must not leak its job's settings

    def start(self) -> Cluster:
        r = self.root
        for d in ("state", "spool"):
            (r / d).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname()
        ctld_port, d_port = _free_ports(2)
        subprocess.run([_sbin("mungekey"), "--create", "--keyfile", str(r / "munge.key")], check=True,
                       capture_output=True)
        (r / "munge.key").chmod(0o600)
        subprocess.run([_sbin("munged"), "--force", f"--socket={r}/munge.sock", f"--key-file={r}/munge.key",
                        f"--pid-file={r}/munged.pid", f"--log-file={r}/munged.log",
                        f"--seed-file={r}/munge.seed"], check=True, capture_output=True)
        self.conf.write_text(f"""\
ClusterName=kdclitest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={r}/munge.sock
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
KillWait=10
MinJobAge=3600
NodeName={host} CPUs={self.cpus} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        subprocess.run([_sbin("slurmctld"), "-i"], env=self.env, check=True, capture_output=True)
        subprocess.run([_sbin("slurmd")], env=self.env, check=True, capture_output=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.5)
        raise RuntimeError(f"slurm did not come up (sinfo: {state!r}); see {r}/slurmctld.log, slurmd.log")

    def stop(self) -> None:
        self.run("scancel", "--full", "--user", "root", check=False)
        for name in ("slurmd", "slurmctld", "munged"):
            pid_file = self.root / f"{name}.pid"
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)

    def run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(args), env={**self.env, **kw.pop("env", {})}, capture_output=True,
                              text=True, **kw)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(args)}: exit status {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def job(self, job_id: str) -> dict:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, Reason, …); {} if unknown."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        return dict(item.split("=", 1) for item in out.split() if "=" in item)

    def jobs(self, job_id: str) -> list[dict]:
        """Every record of a job, each array task its own."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        return [dict(item.split("=", 1) for item in line.split() if "=" in item)
                for line in out.splitlines() if line.strip()]

    def retry(self, *args: str, timeout: float = 30) -> None:
        """A command slurmctld may answer with "try again later" (busy with another change to
        the same array), until it is accepted."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.run(*args, check=False)
            if proc.returncode == 0:
                return
            if "try again later" not in proc.stderr or time.monotonic() > deadline:
                queue = self.run("squeue", "-o", "%i %T %r %M", check=False).stdout
                raise RuntimeError(f"{' '.join(args)}: exit status {proc.returncode}: {proc.stderr.strip()}"
                                   f"\n{queue}")
            time.sleep(0.1)

    def release(self, job_id: str) -> None:
        """A requeued job waits about two minutes (its BeginTime) before it may start again;
        let it start now (tests only: a cluster's delay is its own business)."""
        self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)

    def wait_done(self, *job_ids: str, timeout: float = 600, releasing: bool = True) -> None:
        """Until no task of these jobs is pending or running (releasing requeued ones)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [j for jid in job_ids for j in self.jobs(jid)
                    if j.get("JobState") in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING",
                                             "REQUEUED", "SUSPENDED")]
            if not live:
                return
            if releasing:
                for j in live:
                    if j.get("Reason") == "BeginTime":
                        self.release(_task_id(j))
            time.sleep(0.5)
        raise TimeoutError(f"jobs {job_ids} still running after {timeout} s")


def _task_id(record: dict) -> str:
    if record.get("ArrayTaskId") and record.get("ArrayJobId"):
        return f"{record['ArrayJobId']}_{record['ArrayTaskId']}"
    return record["JobId"]
