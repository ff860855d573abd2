"""A throw-away two-node SLURM cluster on this machine, for tests and for trying the SLURM launcher.

    python scripts/slurm_cluster.py run -- sbatch --wrap hostname   # start, run one command, stop
    python scripts/slurm_cluster.py start --dir /tmp/slurm          # prints: export SLURM_CONF=...
    python scripts/slurm_cluster.py stop --dir /tmp/slurm

    with LocalSlurmCluster(tmp_dir) as cluster:                     # from Python (the tests' fixture)
        subprocess.run(["sinfo"], env=cluster.env())

It installs nothing: it needs Debian's ``slurm-wlm`` and ``munge`` packages (``apt-get install -y
slurm-wlm munge``; test-only, so ``.ci/run`` installs them, not ``scripts/setup.sh``) and root,
because slurmd starts jobs as their users. Everything lives in one directory: a generated
``slurm.conf``, a munge key and socket of its own (the system's munge, if any, is not touched), the
controller's state, the nodes' spool directories and all logs (``log/``). It starts munged,
slurmctld and two slurmd, "n1" and "n2" (Debian builds SLURM with MULTIPLE_SLURMD, so several
slurmd may share a host), each on its own port at 127.0.0.1, waits until ``sinfo`` shows both
idle, and on stop cancels the cluster's jobs and ends exactly the processes it started, by PID.
Nothing listens beyond 127.0.0.1 (``CommunicationParameters=NoInAddrAny``). Clients find the
cluster through ``SLURM_CONF`` (see :meth:`LocalSlurmCluster.env`).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sinfo", "squeue", "scontrol", "scancel")
NODES = ("n1", "n2")
CLONE_NEWUTS = 0x04000000  # <sched.h>
PARTITION = "local"
# A requeued job waits this long before it may start again. SLURM takes it from the credential
# lifetime (AuthInfo=cred_expire, default 120 s), which must still cover a job step's launch.
REQUEUE_DELAY_S = 6
CPUS_PER_NODE = 2  # declared, not detected (config_overrides): each node may run two 1-CPU tasks

# Fast scheduling and short waits: a test should not sit idle. KillWait is the grace between the
# SIGTERM of a cancelled, requeued or timed-out job and its SIGKILL: enough to write a checkpoint.
SLURM_CONF = """\
ClusterName=dsnet-local
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={node_ports[0]}
CommunicationParameters=NoInAddrAny,NoCtldInAddrAny
AuthType=auth/munge
AuthInfo=socket={dir}/munge/munge.socket,cred_expire={requeue_delay_s}
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool/%n
SlurmctldPidFile={dir}/run/slurmctld.pid
SlurmdPidFile={dir}/run/slurmd.%n.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,defer_batch
MessageTimeout=10
KillWait={kill_wait_s}
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
WaitTime=0
PlugStackConfig={dir}/plugstack.conf
{nodes}
PartitionName={partition} Nodes={node_names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""
NODE_LINE = "NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} State=UNKNOWN"


HOSTNAME = "localhost"  # what the daemons see as their host name, in a UTS namespace of their own


def missing() -> str | None:
    """Why a local cluster cannot start here (no root, a binary missing), or None when it can."""
    if os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their users)"
    absent = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if absent:
        return f"{', '.join(absent)} not found: apt-get install -y slurm-wlm munge"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalSlurmCluster:
    """munged, slurmctld and two slurmd, all under ``directory``; a context manager.

    Args:
        directory: where the config, state, spool directories and logs go (created if needed).
        kill_wait_s: SLURM's ``KillWait``, seconds between SIGTERM and SIGKILL of an ended job.
        start_timeout_s: how long to wait for both nodes to be idle.
    """

    def __init__(self, directory: str | Path, kill_wait_s: int = 10, start_timeout_s: float = 60) -> None:
        self.dir = Path(directory).resolve()
        self.kill_wait_s = kill_wait_s
        self.start_timeout_s = start_timeout_s
        self.conf = self.dir / "slurm.conf"
        self.pids: dict[str, int] = {}
        self._procs: list[subprocess.Popen] = []

    def env(self, base: dict | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with ``SLURM_CONF`` pointing at this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def __enter__(self) -> "LocalSlurmCluster":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Writes the config, starts the daemons and waits until both nodes are idle.

        Raises:
            RuntimeError: the packages or root are missing, or a daemon died or the nodes did not
                come up in ``start_timeout_s`` (the daemons started so far are stopped again).
        """
        if (reason := missing()) is not None:
            raise RuntimeError(reason)
        try:
            self._write_config()
            self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={self.dir}/munge/munge.key",
                                   f"--socket={self.dir}/munge/munge.socket", f"--pid-file={self.dir}/run/munged.pid",
                                   f"--log-file={self.dir}/log/munged.log", f"--seed-file={self.dir}/munge/seed"])
            self._wait_for(lambda: (self.dir / "munge" / "munge.socket").exists(), "munged's socket")
            self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
            for name in NODES:
                self._spawn(f"slurmd-{name}", ["slurmd", "-D", "-N", name, "-f", str(self.conf)])
            self._wait_for(self._nodes_idle, "both nodes idle in sinfo")
        except BaseException:
            self.stop()
            raise
        self._save_pids()

    def stop(self) -> None:
        """Cancels the cluster's jobs, then ends the processes this cluster started (SIGTERM, then SIGKILL)."""
        pids = self.pids or self._load_pids()
        if pids.get("slurmctld") and _alive(pids["slurmctld"]):
            self.cancel_all_jobs()
        for name in sorted(pids, key=lambda n: n == "munged"):  # munged last: the others talk through it
            _terminate(pids[name])
        for name, pid in pids.items():
            if not _wait_gone(pid, 10):
                os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        for proc in self._procs:
            proc.poll()  # reap our children
        self.pids, self._procs = {}, []
        (self.dir / "run" / "pids.json").unlink(missing_ok=True)

    def cancel_all_jobs(self, timeout_s: float = 30) -> None:
        """Cancels every job of this cluster and waits until the queue is empty."""
        env = self.env()
        subprocess.run(["scancel", f"--partition={PARTITION}"], env=env, capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True, timeout=30)
            if out.returncode != 0 or not out.stdout.strip():
                return
            time.sleep(0.5)

    def log(self, name: str) -> str:
        """The text of ``log/<name>.log`` (``slurmctld``, ``slurmd.n1``, ``munged``), or ""."""
        path = self.dir / "log" / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def _write_config(self) -> None:
        for sub in ("munge", "state", "run", "log", *(f"spool/{n}" for n in NODES)):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses keys and socket directories that others may write to.
        for sub in ("", "munge"):
            os.chmod(self.dir / sub, 0o755 if sub == "" else 0o700)
        key = self.dir / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(secrets.token_bytes(1024))
            key.chmod(0o400)
        (self.dir / "plugstack.conf").write_text("")  # none of the system's SPANK plugins
        host = HOSTNAME
        ports = [free_port() for _ in NODES]
        nodes = "\n".join(NODE_LINE.format(name=n, host=host, port=p, cpus=CPUS_PER_NODE) for n, p in zip(NODES, ports))
        self.conf.write_text(SLURM_CONF.format(
            host=host, ctld_port=free_port(), node_ports=ports, dir=self.dir, kill_wait_s=self.kill_wait_s, requeue_delay_s=REQUEUE_DELAY_S,
            nodes=nodes, partition=PARTITION, node_names=",".join(NODES)))

    def _spawn(self, name: str, argv: list[str]) -> None:
        with open(self.dir / "log" / f"{name}.out", "ab") as out:  # the daemon keeps its own copy of the file
            # A session of its own: a Ctrl-C meant for the caller does not reach the daemons.
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=self.env(), start_new_session=True, preexec_fn=_own_host_name)
        self._procs.append(proc)
        self.pids[name] = proc.pid

    def _nodes_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env(),
                             capture_output=True, text=True, timeout=30)
        states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        return all(states.get(n) == "idle" for n in NODES)

    def _wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not condition():
            for proc, name in zip(self._procs, self.pids):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with status {proc.returncode} while waiting for {what}; "
                                       f"see {self.dir}/log/")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {self.start_timeout_s:.0f} s waiting for {what}; see {self.dir}/log/")
            time.sleep(0.2)

    def _save_pids(self) -> None:
        (self.dir / "run" / "pids.json").write_text(json.dumps(self.pids))

    def _load_pids(self) -> dict[str, int]:
        path = self.dir / "run" / "pids.json"
        if not path.is_file():
            return {}
        # Only PIDs that still run one of our daemons with our config: a PID may have been reused.
        pids = json.loads(path.read_text())
        return {name: pid for name, pid in pids.items() if _runs_with(pid, str(self.dir))}


def _own_host_name() -> None:
    """In the child, before exec: a UTS namespace of its own in which the host name is "localhost".

    With ``NoInAddrAny`` the daemons bind to the address their host name resolves to, so this is
    what keeps them on 127.0.0.1 whatever this machine is called; jobs inherit it.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUTS) failed")
    socket.sethostname(HOSTNAME)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _runs_with(pid: int, text: str) -> bool:
    """True when process ``pid`` exists and its command line contains ``text``."""
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False


def _terminate(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        try:  # our own child: reap it, or it stays a zombie that "exists"
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_text in (("start", "start the cluster and leave it running"), ("stop", "stop a started cluster"),
                              ("run", "start, run a command with SLURM_CONF set, stop")):
        p = sub.add_parser(action, help=help_text)
        p.add_argument("--dir", type=Path, default=None if action == "run" else Path("/tmp/dsnet-slurm"),
                       help="the cluster's directory (run: a new temporary one)")
        if action == "run":
            p.add_argument("command", nargs=argparse.REMAINDER, help="-- command [args...]")
    args = parser.parse_args(argv)
    if args.action == "stop":
        LocalSlurmCluster(args.dir).stop()
        return 0
    if (reason := missing()) is not None:
        print(f"slurm_cluster.py: error: {reason}", file=sys.stderr)
        return 1
    if args.action == "start":
        cluster = LocalSlurmCluster(args.dir)
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run: give a command after --")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="dsnet-slurm-", dir=args.dir) as tmp, LocalSlurmCluster(tmp) as cluster:
        return subprocess.run(command, env=cluster.env()).returncode


if __name__ == "__main__":
    sys.exit(main())
