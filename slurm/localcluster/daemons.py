"""The daemons: munged (private socket), slurmctld, one slurmd per node; start, check, stop."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .config import node_cpus
from .processes import (ClusterError, descendants, job_pids_with_conf, log, netns_pids, pid_alive, sh, spawn,
                        stop_pid)
from .state import Cluster

MUNGE_KEY = "/etc/munge/munge.key"


def start_munged(c: Cluster) -> None:
    pids = c.state["pids"]
    if pid_alive(pids.get("munged"), "munged"):
        return
    m = c.dir / "munge"
    sock = m / "munge.socket"
    for f in (sock, Path(str(sock) + ".lock")):
        f.unlink(missing_ok=True)
    pid = spawn(["munged", "-F", "--force", f"--socket={sock}", f"--key-file={MUNGE_KEY}",
                 f"--pid-file={m / 'munged.pid'}", f"--log-file={c.dir / 'log' / 'munged.log'}",
                 f"--seed-file={m / 'munged.seed'}"], c.dir / "log" / "munged.out")
    pids["munged"] = pid
    c.save()
    wait(c, lambda: sock.exists(), 15, "munged's socket", "munged")
    log(f"started munged (pid {pid}) on {sock}")


def start_ctld(c: Cluster) -> None:
    pids = c.state["pids"]
    if pid_alive(pids.get("slurmctld"), "slurmctld"):
        return
    pid = spawn(["slurmctld", "-D", "-i", "-f", str(c.conf)], c.dir / "log" / "slurmctld.out", env=c.env())
    pids["slurmctld"] = pid
    c.save()

    def answers() -> bool:
        p = sh(["scontrol", "ping"], check=False, env=c.env(), timeout=10)
        return p.returncode == 0 and "UP" in p.stdout

    wait(c, answers, 30, "slurmctld to answer", "slurmctld")
    log(f"started slurmctld (pid {pid}) port {c.state['ctld_port']}")


def start_slurmds(c: Cluster) -> None:
    st, pids = c.state, c.state["pids"]
    for n in st["node_list"]:
        key = f"slurmd:{n['name']}"
        if pid_alive(pids.get(key), "slurmd"):
            continue
        if st["multi"]:
            # confined to the node's own cores (config.node_cpus), like everything its tasks start
            nd = c.node_dir(n)
            cores = ",".join(map(str, node_cpus(c, n)))
            inner = (f"hostname {n['name']} && mount --bind {c.dir / 'etc' / 'hosts'} /etc/hosts && "
                     f"exec taskset -c {cores} slurmd -D -f {nd / 'etc' / 'slurm.conf'} -N {n['name']}")
            cmd = ["nsenter", f"--net=/var/run/netns/{n['netns']}", "unshare", "--uts", "--mount",
                   "--propagation", "private", "sh", "-c", inner]
        else:
            cmd = ["slurmd", "-D", "-f", str(c.conf), "-N", n["name"]]
        pid = spawn(cmd, c.dir / "log" / f"slurmd-{n['name']}.out", env=c.env())
        pids[key] = pid
        c.save()
        # nsenter and unshare exec (no fork) and sh execs slurmd: the pid becomes slurmd's.
        wait(c, lambda: pid_alive(pid, "slurmd"), 10, f"slurmd on {n['name']}", f"slurmd-{n['name']}")
        log(f"started slurmd (pid {pid}) for node {n['name']}"
            + (f" in netns {n['netns']} at {n['addr']}" if n["netns"] else ""))


def node_states(c: Cluster) -> dict[str, str]:
    p = sh(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, env=c.env(), timeout=15)
    out = {}
    for line in p.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            out[parts[0]] = parts[1]
    return out


def wait_idle(c: Cluster, timeout: float = 90) -> None:
    names = [n["name"] for n in c.state["node_list"]]
    deadline = time.time() + timeout
    states: dict = {}
    while time.time() < deadline:
        states = node_states(c)
        if all(states.get(n) in ("idle", "mix", "alloc") for n in names):
            return
        for n in names:  # a node left down by an earlier run: bring it back
            if states.get(n, "").rstrip("*~#") in ("down", "drain", "drng", "fail"):
                sh(["scontrol", "update", f"NodeName={n}", "State=RESUME"], check=False, env=c.env())
        time.sleep(0.5)
    raise ClusterError(f"nodes not idle after {timeout:.0f}s: {states}; see {c.dir / 'log'}")


def wait(c: Cluster, ok: Callable[[], bool], timeout: float, what: str, logname: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ok():
            return
        time.sleep(0.2)
    tail = ""
    for f in sorted((c.dir / "log").glob(f"{logname.split('-')[0]}*")):
        tail += f"\n--- {f}:\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:])
    raise ClusterError(f"timed out waiting for {what}{tail}")


def all_up(c: Cluster) -> bool:
    st = c.state
    if not st.get("node_list"):
        return False
    pids = st.get("pids", {})
    ok = pid_alive(pids.get("munged"), "munged") and pid_alive(pids.get("slurmctld"), "slurmctld")
    return ok and all(pid_alive(pids.get(f"slurmd:{n['name']}"), "slurmd") for n in st["node_list"])


def stop_all(c: Cluster) -> None:
    """Cancel every job, then stop slurmd(s) and what they started, slurmctld, leftovers, munged."""
    st = c.state
    pids = st.get("pids", {})
    # 1. cancel every job, so slurmstepd and job processes end the normal way
    if pid_alive(pids.get("slurmctld"), "slurmctld"):
        jobs = sh(["squeue", "-h", "-o", "%i"], check=False, env=c.env(), timeout=15).stdout.split()
        if jobs:
            sh(["scancel", *jobs], check=False, env=c.env(), timeout=15)
            log(f"cancelled jobs {' '.join(jobs)}")
            deadline = time.time() + 20
            while time.time() < deadline and sh(["squeue", "-h", "-t", "CG,R,PD", "-o", "%i"], check=False,
                                                 env=c.env(), timeout=15).stdout.split():
                time.sleep(0.5)
    # 2. slurmd(s) and whatever they started (job steps): by pid, then all left in the node namespaces
    for key, pid in list(pids.items()):
        if key.startswith("slurmd:") and pid_alive(pid, "slurmd"):
            kids = descendants(pid)
            stop_pid(pid, "slurmd", f"slurmd {key[7:]}")
            for k in kids:
                stop_pid(k, None, f"leftover process of {key}", timeout=3)
    for n in st.get("node_list", []):
        if n.get("netns"):
            for pid in netns_pids(n["netns"]):
                stop_pid(pid, None, f"leftover process in {n['netns']}", timeout=3)
    # 3. controller and munged
    stop_pid(pids.get("slurmctld"), "slurmctld", "slurmctld")
    for pid in job_pids_with_conf(str(c.dir) + "/"):  # e.g. slurmstepd (reparented to init) and its tasks
        if pid not in pids.values():
            stop_pid(pid, None, "leftover process with this cluster's SLURM_CONF", timeout=3)
    stop_pid(pids.get("munged"), "munged", "munged")
