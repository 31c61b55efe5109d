"""A throw-away Slurm 22.05 cluster on this machine, for the tests: munged, slurmctld, N
emulated slurmd nodes with one fake GPU each (partition `compute`) and CPU-only nodes in the
default partition `cpu`, as clusters that keep GPUs out of their default partition have;
optionally slurmdbd + MariaDB so that `sacct` works. Daemons are started by hand (no systemd) and stopped by PID.

Needs root and Debian's slurm-wlm, munge, slurmdbd and mariadb-server (`make test`
installs them). Facts behind the choices are in DESIGN.md section 5b: slurm.conf must be
/etc/slurm/slurm.conf (the jobstep plugin strips SLURM_CONF before its inner srun), and a
gres `File=` must be a character device or the node drains.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SLURM_CONF = Path("/etc/slurm/slurm.conf")
PACKAGES = "slurm-wlm munge slurmdbd mariadb-server"
CLUSTER = "fresnel-test"
PARTITION = "compute"  # the GPU nodes; deliberately not "gpu": the profile assumes no name
CPU_PARTITION = "cpu"  # the default partition: CPU-only nodes


class ClusterError(RuntimeError):
    pass


# The site settings (profiles/slurm/config.yaml, lines marked SITE) sized to this cluster's
# nodes (2 CPUs, 4000 MB each) and naming its GPU partition, and status checks after 1 s
# instead of 40 and every 1 s instead of 10 (the tests and benchmarks/slurm_overhead.py
# submit with them).
SITE = (
    "--default-resources runtime=30 mem_mb=1000 cpus_per_task=1 "
    "--slurm-init-seconds-before-status-checks 1 --seconds-between-status-checks 1"
)
GPU_SIZES = "runtime: 30, mem_mb: 1000, cpus_per_task: 1"
SITE_CONFIG = f"'gpu_jobs={{slurm_partition: {PARTITION}, {GPU_SIZES}}}'"  # a --config entry


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for(check, what: str, timeout: float = 60, log: Path | None = None,
             process: subprocess.Popen | None = None) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline or (process is not None and process.poll() is not None):
            tail = log.read_text()[-3000:] if log and log.is_file() else ""
            raise ClusterError(f"{what} did not come up\n{tail}")
        time.sleep(0.2)


def succeeds(*command: str) -> bool:
    return subprocess.run(command, capture_output=True).returncode == 0


class SlurmCluster:
    """`with SlurmCluster(root, nodes=2, accounting=True) as cluster:` -> a running cluster
    (`nodes` GPU nodes n1.., `cpu_nodes` CPU-only nodes c1..)."""

    def __init__(self, root: Path, nodes: int = 2, accounting: bool = False, cpu_nodes: int = 1):
        self.root, self.accounting = Path(root), accounting
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.cpu_names = [f"c{i + 1}" for i in range(cpu_nodes)]
        self.nodes = nodes + cpu_nodes
        self.processes: list[subprocess.Popen] = []
        self.cleanup: list[Path] = []
        self.restore: list[tuple[Path, bytes | None]] = []
        self.host = socket.gethostname()

    # -- configuration ------------------------------------------------------------
    def slurm_conf(self, ctld_port: int, node_ports: list[int], dbd_port: int) -> str:
        r = self.root
        memory = 4000
        lines = [
            f"ClusterName={CLUSTER}",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.socket}",
            "SlurmUser=root",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool/%n",
            f"SlurmctldPidFile={r}/slurmctld.pid",
            f"SlurmdPidFile={r}/slurmd-%n.pid",
            f"SlurmctldLogFile={r}/slurmctld.log",
            f"SlurmdLogFile={r}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "GresTypes=gpu",
            "ReturnToService=2",
            "MinJobAge=300",
            "JobAcctGatherType=jobacct_gather/none",
            "SchedulerParameters=sched_interval=1",
        ]
        if self.accounting:
            lines += [
                "AccountingStorageType=accounting_storage/slurmdbd",
                "AccountingStorageHost=127.0.0.1",
                f"AccountingStoragePort={dbd_port}",
                f"AccountingStoragePass={self.socket}",  # the munge socket, for slurmdbd links
            ]
        else:
            lines.append("AccountingStorageType=accounting_storage/none")
        for name, port in zip(self.names + self.cpu_names, node_ports, strict=True):
            gres = " Gres=gpu:1" if name in self.names else ""
            lines.append(
                f"NodeName={name} NodeHostname={self.host} NodeAddr=127.0.0.1 Port={port} "
                f"CPUs=2 RealMemory={memory}{gres} State=UNKNOWN"
            )
        for partition, names, default in ((CPU_PARTITION, self.cpu_names, "YES"),
                                          (PARTITION, self.names, "NO")):  # fmt: skip
            lines.append(
                f"PartitionName={partition} Nodes={','.join(names)} Default={default} "
                "MaxTime=INFINITE State=UP"
            )
        return "\n".join(lines) + "\n"

    def gres_conf(self) -> str:
        devices = self.root / "dev"
        devices.mkdir(exist_ok=True)
        lines = []
        for name in self.names:
            device = devices / f"{name}-gpu0"
            if not device.exists():
                os.mknod(device, 0o666 | 0o020000, os.makedev(1, 3))  # a char device, as /dev/null
            lines.append(f"NodeName={name} Name=gpu File={device}")
        return "\n".join(lines) + "\n"

    def write(self, path: Path, text: str) -> None:
        """Write a system config file; stop() puts back what was there. (A slurm.conf left
        behind makes every Slurm client, and so every snakemake start, wait ~10 s for a
        controller that is gone.)"""
        self.restore.append((path, path.read_bytes() if path.exists() else None))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    # -- daemons ------------------------------------------------------------------
    def spawn(self, *command: str, log: str) -> subprocess.Popen:
        with open(self.root / log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        self.processes.append(process)
        return process

    def start_munge(self) -> None:
        # outside self.root: the munge user must reach it (pytest's tmp folders are 0700)
        run_dir = Path(tempfile.mkdtemp(prefix="fresnel-munge-"))
        self.cleanup.append(run_dir)
        key = run_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(run_dir, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        self.socket = run_dir / "munge.socket"
        munged = self.spawn("runuser", "-u", "munge", "--", "munged", "--foreground", "--force",
                   f"--key-file={key}", f"--socket={self.socket}",
                   f"--pid-file={run_dir}/munged.pid", f"--seed-file={run_dir}/seed",
                   log="munged.log")  # fmt: skip
        wait_for(self.socket.exists, "munged", log=self.root / "munged.log", process=munged)

    def start_accounting(self, dbd_port: int) -> None:
        data, sock = self.root / "mysql", self.root / "mysql.sock"
        subprocess.run(["mariadb-install-db", f"--datadir={data}", "--user=root",
                        "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True)  # fmt: skip
        mariadbd = self.spawn("mariadbd", f"--datadir={data}", f"--socket={sock}", "--user=root",
                   "--skip-networking", f"--pid-file={self.root}/mariadb.pid",
                   log="mariadb.log")  # fmt: skip
        wait_for(sock.exists, "mariadbd", log=self.root / "mariadb.log", process=mariadbd)
        dbd_conf = SLURM_CONF.parent / "slurmdbd.conf"
        self.write(
            dbd_conf,
            f"AuthType=auth/munge\nAuthInfo=socket={self.socket}\n"
            f"DbdHost={self.host}\nDbdAddr=127.0.0.1\n"
            f"DbdPort={dbd_port}\nSlurmUser=root\nStorageType=accounting_storage/mysql\n"
            f"StorageLoc=slurm_acct\nStorageUser=root\nStorageHost=localhost\n"
            f"StoragePort=0\nPidFile={self.root}/slurmdbd.pid\n"
            f"LogFile={self.root}/slurmdbd.log\n",
        )
        dbd_conf.chmod(0o600)
        # slurmdbd reaches MariaDB through its socket: point the client default at it
        self.env["MYSQL_UNIX_PORT"] = str(sock)
        slurmdbd = self.spawn("slurmdbd", "-D", log="slurmdbd.out")
        wait_for(lambda: succeeds("sacctmgr", "-n", "list", "cluster"), "slurmdbd",
                 log=self.root / "slurmdbd.log", process=slurmdbd)  # fmt: skip

    def __enter__(self) -> SlurmCluster:
        if os.geteuid() != 0 or not shutil.which("slurmctld"):
            raise ClusterError(f"the Slurm tests need root and `apt-get install {PACKAGES}`")
        if subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0:
            raise ClusterError("a slurmctld is already running on this machine; stop it first")
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.env = os.environ.copy()
        ctld_port, dbd_port, *node_ports = free_ports(2 + self.nodes)
        try:
            self.start_munge()
            self.write(SLURM_CONF, self.slurm_conf(ctld_port, node_ports, dbd_port))
            self.write(SLURM_CONF.parent / "gres.conf", self.gres_conf())
            if self.accounting:
                self.start_accounting(dbd_port)
                subprocess.run(["sacctmgr", "-i", "add", "cluster", CLUSTER],
                               check=True, capture_output=True)  # fmt: skip
            self.spawn("slurmctld", "-D", "-i", log="slurmctld.out")
            for name in self.names + self.cpu_names:
                self.spawn("slurmd", "-D", "-N", name, log=f"slurmd-{name}.out")
            wait_for(self.idle, "all nodes idle", log=self.root / "slurmctld.log")
        except BaseException:
            self.stop()
            raise
        return self

    def idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True)
        states = dict(line.split() for line in out.stdout.splitlines())
        return len(states) == self.nodes and set(states.values()) == {"idle"}

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()
        for folder in self.cleanup:
            shutil.rmtree(folder, ignore_errors=True)
        for path, before in reversed(self.restore):
            path.unlink(missing_ok=True) if before is None else path.write_bytes(before)
        self.restore.clear()

    def __exit__(self, *exc) -> None:
        self.stop()
