#!/usr/bin/env python3
"""A real SLURM cluster on this machine, from Debian's packages (slurmctld slurmd slurm-client munge).

    slurm/localcluster.py up     [--nodes N] [--link RATE] [--delay MS] [--state-dir DIR] [--net-id ID]
    slurm/localcluster.py status [--state-dir DIR]
    slurm/localcluster.py down   [--state-dir DIR]

--nodes 1 (the default) is the plain one-node cluster: munged, slurmctld and slurmd in this machine's
own network namespace, the node named after `hostname`, CPUs = nproc. The test suite's fixture uses it.

--nodes N > 1 emulates N hosts: a bridge br<ID> at 10.<ID>.0.1/24 in the root namespace (slurmctld listens
there), and per node a network namespace lc<ID>n<K> joined to the bridge by a veth pair, address
10.<ID>.0.<10+K>, hostname nK (own UTS namespace), its own /etc/hosts (own mount namespace; bind mount)
listing every node, its own slurm.conf/mpi.conf (TmpFS and PMIxCliTmpDirBase per node, or PMIx temp dirs
collide in the shared /tmp). slurmd is started with `nsenter --net` + `unshare --uts --mount`, never
`ip netns exec` (that remounts /sys; slurmd then loses its cgroups and dies). Every node's egress is
shaped with tc: a token bucket for --link (e.g. 10gbit, 1gbit, 200mbit) and netem for --delay (one-way
ms), so each packet between two nodes crosses exactly one shaped link.

`up` is idempotent: daemons already running are kept; only missing pieces are (re)started; with the same
node count a new --link/--delay re-shapes the links in place. `down` cancels every job, stops every
process it started (by pid, after checking the pid is still that program), kills what remains inside its
namespaces, deletes namespaces, veths and the bridge, and removes the state dir. Everything it made is in
DIR/state.json. It must run as root: otherwise one line on stderr and exit 2.

After `up`:  export SLURM_CONF=DIR/etc/slurm.conf   (printed by `up`). Every task of every job gets
LOCALCLUSTER_NODES, LOCALCLUSTER_LINK (none | unlimited | the tc rate) and LOCALCLUSTER_DELAY_MS from a
TaskProlog, so a trainer can record the link it ran over. `status` exits 0 when every daemon runs and
every node is idle/allocated, 1 when degraded, 3 when nothing is up (`--json` for machines).
Exit codes: 2 = cannot run here (not root, packages or kernel features missing, bad arguments).
munged runs privately on DIR/munge/munge.socket (slurm.conf's AuthInfo), so a site's or another
cluster's munged is never touched; ports are picked free at first `up` and kept in the state.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_STATE = os.environ.get("LOCALCLUSTER_DIR", "/tmp/localcluster")
MUNGE_KEY = "/etc/munge/munge.key"
PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sinfo": "slurm-client",
            "srun": "slurm-client", "ip": "iproute2", "tc": "iproute2", "nsenter": "util-linux",
            "unshare": "util-linux"}
RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit)$", re.I)
RATE_MULT = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}


class ClusterError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"localcluster: {msg}", flush=True)


def die(msg: str, code: int = 1) -> None:
    print(f"localcluster: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def sh(cmd: list[str], check: bool = True, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()}")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rate_bits(rate: str) -> float:
    m = RATE_RE.match(rate)
    if not m:
        raise ClusterError(f"bad --link {rate!r}; use e.g. 10gbit, 1gbit, 200mbit (or 'none')")
    return float(m.group(1)) * RATE_MULT[m.group(2).lower()]


# ---------------------------------------------------------------- processes

def pid_alive(pid: int | None, name: str | None = None) -> bool:
    """True if pid runs and (when given) its program is `name` (guards against a reused pid)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if name is None:
            return True
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        return any(os.path.basename(a.decode(errors="replace")) == name for a in argv[:1]) or \
            os.path.basename(os.readlink(f"/proc/{pid}/exe")) == name
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, name: str | None, what: str, timeout: float = 10) -> None:
    if not pid_alive(pid, name):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline and pid_alive(pid, name):
        time.sleep(0.1)
    if pid_alive(pid, name):
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
    log(f"stopped {what} (pid {pid})")


def spawn(cmd: list[str], logfile: Path, env: dict | None = None) -> int:
    """Start a foreground daemon detached from us (own session); its pid is the daemon's pid."""
    with open(logfile, "ab") as out:
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, env=env, close_fds=True)
    return p.pid


def ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def job_pids_with_conf(prefix: str) -> list[int]:
    """This cluster's leftovers: slurmstepd/slurmscriptd (reparented to init) and job tasks, i.e. processes
    whose environment has SLURM_CONF under `prefix` and that are SLURM's own or inside a job
    (SLURM_JOB_ID set). A user's shell that merely exported SLURM_CONF is left alone, as are we."""
    want = f"SLURM_CONF={prefix}".encode()
    mine = ancestors()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                prog = os.path.basename(f.read().split(b"\0")[0].decode(errors="replace").split(":")[0])
        except (OSError, IndexError):
            continue
        if any(v.startswith(want) for v in env) and (
                prog in ("slurmstepd", "slurmscriptd") or any(v.startswith(b"SLURM_JOB_ID=") for v in env)):
            out.append(int(d))
    return out


def netns_pids(ns: str) -> list[int]:
    p = sh(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in p.stdout.split()] if p.returncode == 0 else []


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


# ---------------------------------------------------------------- state

class Cluster:
    def __init__(self, state_dir: str):
        self.dir = Path(state_dir).resolve()
        self.state_file = self.dir / "state.json"
        self.state: dict = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=2, sort_keys=True))
        tmp.replace(self.state_file)

    @property
    def conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # -- configuration ---------------------------------------------------
    def plan(self, nodes: int, net_id: int, cpus: int | None) -> None:
        host = socket.gethostname()
        multi = nodes > 1
        cpus = cpus or max(1, (os.cpu_count() or 1) // nodes)
        st = self.state
        st.update({"nodes": nodes, "net_id": net_id, "multi": multi, "hostname": host, "cpus_per_node": cpus,
                   "ctld_port": st.get("ctld_port") or free_port(),
                   "slurmd_port": st.get("slurmd_port") or free_port(),
                   "created": st.get("created", {"netns": [], "veth": [], "bridge": None}),
                   "pids": st.get("pids", {})})
        if multi:
            st["bridge"] = f"br{net_id}"
            st["ctld_addr"] = f"10.{net_id}.0.1"
            st["node_list"] = [{"name": f"n{k}", "netns": f"lc{net_id}n{k}", "veth": f"v{net_id}n{k}",
                                "addr": f"10.{net_id}.0.{10 + k}"} for k in range(1, nodes + 1)]
        else:
            st["bridge"] = None
            st["ctld_addr"] = None
            st["node_list"] = [{"name": host, "netns": None, "veth": None, "addr": None}]

    def node_dir(self, node: dict) -> Path:
        return self.dir / "nodes" / node["name"]

    def write_configs(self) -> None:
        st = self.state
        for sub in ("etc", "ctld", "munge", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir / "munge", 0o700)
        host = st["hostname"]
        ctld_host = f"{host}({st['ctld_addr']})" if st["multi"] else host
        nodelines = []
        for n in st["node_list"]:
            addr = f" NodeAddr={n['addr']}" if n["addr"] else ""
            nodelines.append(f"NodeName={n['name']}{addr} CPUs={st['cpus_per_node']} State=UNKNOWN")
        names = ",".join(n["name"] for n in st["node_list"])

        def conf(node_tmp: Path | None) -> str:
            lines = [
                "# written by slurm/localcluster.py; removed by `localcluster.py down`",
                f"ClusterName=lc{st['net_id']}",
                f"SlurmctldHost={ctld_host}",
                f"SlurmctldPort={st['ctld_port']}",
                f"SlurmdPort={st['slurmd_port']}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={self.dir / 'munge' / 'munge.socket'}",
                f"StateSaveLocation={self.dir / 'ctld'}",
                f"SlurmctldPidFile={self.dir / 'ctld' / 'slurmctld.pid'}",
                f"SlurmctldLogFile={self.dir / 'log' / 'slurmctld.log'}",
                f"SlurmdSpoolDir={self.dir / 'nodes' / '%n' / 'spool'}",
                f"SlurmdPidFile={self.dir / 'nodes' / '%n' / 'slurmd.pid'}",
                f"SlurmdLogFile={self.dir / 'log' / 'slurmd-%n.log'}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "SchedulerType=sched/backfill",
                "SwitchType=switch/none",
                "MpiDefault=none",
                "EnforcePartLimits=ALL",  # reject at submit what the partition cannot ever run
                "ReturnToService=2",
                "SlurmdParameters=config_overrides",
                "SlurmctldTimeout=60",
                "SlurmdTimeout=60",
                "InactiveLimit=0",
                "KillWait=5",
                # sbatch --wait polls every 2, 8, 32 s, capped while below MinJobAge/2: 16 keeps it at
                # 8 s. Finished jobs then leave slurmctld soon; their states stay in jobcomp.txt.
                "MinJobAge=16",
                "AccountingStorageType=accounting_storage/none",
                "JobAcctGatherType=jobacct_gather/none",
                # every task gets LOCALCLUSTER_NODES/_LINK/_DELAY_MS (what the links are shaped to now)
                f"TaskProlog={self.dir / 'etc' / 'taskprolog.sh'}",
                "JobCompType=jobcomp/filetxt",
                f"JobCompLoc={self.dir / 'log' / 'jobcomp.txt'}",
            ]
            if node_tmp is not None:
                lines.append(f"TmpFS={node_tmp}")
            lines += nodelines
            lines.append(f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES")
            return "\n".join(lines) + "\n"

        prolog = self.dir / "etc" / "taskprolog.sh"
        prolog.write_text(f"#!/bin/sh\n# TaskProlog: lines 'export NAME=VALUE' land in every task's environment\n"
                          f"cat {self.dir / 'etc' / 'link.env'} 2>/dev/null || true\n")
        prolog.chmod(0o755)
        self.write_link_env()
        # The controller's (and every client's) config; for one node also the node's.
        first_tmp = self.node_dir(st["node_list"][0]) / "tmp" if not st["multi"] else None
        self.conf.write_text(conf(first_tmp))
        if first_tmp is not None:
            first_tmp.mkdir(parents=True, exist_ok=True)
            (self.dir / "etc" / "mpi.conf").write_text(f"PMIxCliTmpDirBase={first_tmp}\n")
        else:
            (self.dir / "etc" / "mpi.conf").write_text(f"PMIxCliTmpDirBase={self.dir / 'tmp'}\n")
            (self.dir / "tmp").mkdir(exist_ok=True)
        for n in st["node_list"]:
            nd = self.node_dir(n)
            for sub in ("spool", "tmp", "etc"):
                (nd / sub).mkdir(parents=True, exist_ok=True)
            if st["multi"]:
                (nd / "etc" / "slurm.conf").write_text(conf(nd / "tmp"))
                (nd / "etc" / "mpi.conf").write_text(f"PMIxCliTmpDirBase={nd / 'tmp'}\n")
        if st["multi"]:
            hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback",
                     f"{st['ctld_addr']} {host}"]
            hosts += [f"{n['addr']} {n['name']}" for n in st["node_list"]]
            (self.dir / "etc" / "hosts").write_text("\n".join(hosts) + "\n")

    def write_link_env(self) -> None:
        st = self.state
        link = st.get("link") if st.get("multi") else None
        (self.dir / "etc" / "link.env").write_text(
            f"export LOCALCLUSTER_NODES={st['nodes']}\n"
            f"export LOCALCLUSTER_LINK={link or ('unlimited' if st.get('multi') else 'none')}\n"
            f"export LOCALCLUSTER_DELAY_MS={st.get('delay_ms') or 0}\n")

    # -- network ---------------------------------------------------------
    def net_up(self) -> None:
        st, made = self.state, self.state["created"]
        br = st["bridge"]
        if not Path(f"/sys/class/net/{br}").exists():
            sh(["ip", "link", "add", br, "type", "bridge"])
            made["bridge"] = br
            self.save()
            sh(["ip", "addr", "add", f"{st['ctld_addr']}/24", "dev", br])
            log(f"made bridge {br} {st['ctld_addr']}/24")
        elif made.get("bridge") != br:
            raise ClusterError(f"bridge {br} exists but was not made by this cluster; pick another --net-id")
        sh(["ip", "link", "set", br, "up"])
        existing = set(sh(["ip", "netns", "list"]).stdout.split())
        for n in st["node_list"]:
            ns, veth = n["netns"], n["veth"]
            if ns not in existing:
                sh(["ip", "netns", "add", ns])
                made["netns"].append(ns)
                self.save()
                log(f"made network namespace {ns}")
            elif ns not in made["netns"]:
                raise ClusterError(f"network namespace {ns} exists but was not made by this cluster")
            if not Path(f"/sys/class/net/{veth}").exists():
                sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p"])
                made["veth"].append(veth)
                self.save()
                sh(["ip", "link", "set", f"{veth}p", "netns", ns])
                sh(["ip", "-n", ns, "link", "set", f"{veth}p", "name", "eth0"])
                sh(["ip", "-n", ns, "addr", "add", f"{n['addr']}/24", "dev", "eth0"])
                sh(["ip", "link", "set", veth, "master", br])
                log(f"made veth {veth} <-> {ns}:eth0 {n['addr']}/24")
            sh(["ip", "link", "set", veth, "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
            sh(["ip", "-n", ns, "route", "replace", "default", "via", st["ctld_addr"]])

    def shape(self, link: str | None, delay: float | None) -> None:
        """tbf for bandwidth (+ netem for one-way delay) on every node's egress (eth0 in its namespace)."""
        st = self.state
        for n in st["node_list"]:
            ns = n["netns"]
            sh(["tc", "-n", ns, "qdisc", "del", "dev", "eth0", "root"], check=False)
            if link:
                bits = rate_bits(link)
                burst = max(256 * 1024, int(bits / 8 * 0.002))  # >= 2 ms worth at the rate
                sh(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf",
                    "rate", link, "burst", str(burst), "latency", "100ms"])
                if delay:
                    sh(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "parent", "1:1", "handle", "10:",
                        "netem", "delay", f"{delay}ms", "limit", "100000"])
            elif delay:
                sh(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "handle", "10:",
                    "netem", "delay", f"{delay}ms", "limit", "100000"])
        st["link"], st["delay_ms"] = link, delay
        self.save()
        self.write_link_env()
        if st["node_list"]:
            log(f"links shaped: rate {link or 'unlimited'}, one-way delay {delay or 0} ms on "
                + ", ".join(f"{n['netns']}:eth0" for n in st["node_list"]))

    # -- daemons ---------------------------------------------------------
    def start_munged(self) -> None:
        pids = self.state["pids"]
        if pid_alive(pids.get("munged"), "munged"):
            return
        m = self.dir / "munge"
        sock = m / "munge.socket"
        for f in (sock, Path(str(sock) + ".lock")):
            f.unlink(missing_ok=True)
        pid = spawn(["munged", "-F", "--force", f"--socket={sock}", f"--key-file={MUNGE_KEY}",
                     f"--pid-file={m / 'munged.pid'}", f"--log-file={self.dir / 'log' / 'munged.log'}",
                     f"--seed-file={m / 'munged.seed'}"], self.dir / "log" / "munged.out")
        pids["munged"] = pid
        self.save()
        self.wait(lambda: sock.exists(), 15, "munged's socket", "munged")
        log(f"started munged (pid {pid}) on {sock}")

    def start_ctld(self) -> None:
        pids = self.state["pids"]
        if pid_alive(pids.get("slurmctld"), "slurmctld"):
            return
        pid = spawn(["slurmctld", "-D", "-i", "-f", str(self.conf)], self.dir / "log" / "slurmctld.out",
                    env=self.env())
        pids["slurmctld"] = pid
        self.save()
        self.wait(lambda: sh(["scontrol", "ping"], check=False, env=self.env(), timeout=10).returncode == 0
                  and "UP" in sh(["scontrol", "ping"], check=False, env=self.env()).stdout, 30,
                  "slurmctld to answer", "slurmctld")
        log(f"started slurmctld (pid {pid}) port {self.state['ctld_port']}")

    def start_slurmds(self) -> None:
        st, pids = self.state, self.state["pids"]
        for n in st["node_list"]:
            key = f"slurmd:{n['name']}"
            if pid_alive(pids.get(key), "slurmd"):
                continue
            if st["multi"]:
                nd = self.node_dir(n)
                inner = (f"hostname {n['name']} && mount --bind {self.dir / 'etc' / 'hosts'} /etc/hosts && "
                         f"exec slurmd -D -f {nd / 'etc' / 'slurm.conf'} -N {n['name']}")
                cmd = ["nsenter", f"--net=/var/run/netns/{n['netns']}", "unshare", "--uts", "--mount",
                       "--propagation", "private", "sh", "-c", inner]
            else:
                cmd = ["slurmd", "-D", "-f", str(self.conf), "-N", n["name"]]
            pid = spawn(cmd, self.dir / "log" / f"slurmd-{n['name']}.out", env=self.env())
            pids[key] = pid
            self.save()
            # nsenter and unshare exec (no fork) and sh execs slurmd: the pid becomes slurmd's.
            self.wait(lambda: pid_alive(pid, "slurmd"), 10, f"slurmd on {n['name']}", f"slurmd-{n['name']}")
            log(f"started slurmd (pid {pid}) for node {n['name']}"
                + (f" in netns {n['netns']} at {n['addr']}" if n["netns"] else ""))

    def node_states(self) -> dict[str, str]:
        p = sh(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, env=self.env(), timeout=15)
        out = {}
        for line in p.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2:
                out[parts[0]] = parts[1]
        return out

    def wait_idle(self, timeout: float = 90) -> None:
        names = [n["name"] for n in self.state["node_list"]]
        deadline = time.time() + timeout
        states: dict = {}
        while time.time() < deadline:
            states = self.node_states()
            if all(states.get(n) in ("idle", "mix", "alloc") for n in names):
                return
            for n in names:  # a node left down by an earlier run: bring it back
                if states.get(n, "").rstrip("*~#") in ("down", "drain", "drng", "fail"):
                    sh(["scontrol", "update", f"NodeName={n}", "State=RESUME"], check=False, env=self.env())
            time.sleep(0.5)
        raise ClusterError(f"nodes not idle after {timeout:.0f}s: {states}; see {self.dir / 'log'}")

    def wait(self, ok, timeout: float, what: str, logname: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ok():
                return
            time.sleep(0.2)
        tail = ""
        for f in sorted((self.dir / "log").glob(f"{logname.split('-')[0]}*")):
            tail += f"\n--- {f}:\n" + "\n".join(f.read_text(errors="replace").splitlines()[-15:])
        raise ClusterError(f"timed out waiting for {what}{tail}")


# ---------------------------------------------------------------- commands

def preflight() -> None:
    if os.geteuid() != 0:
        die("needs root (it starts munged, slurmctld, slurmd and makes network namespaces); run it as root", 2)
    missing = sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})
    if missing:
        die(f"missing system packages: {' '.join(missing)} (apt-get install -y {' '.join(missing)})", 2)
    if not os.path.exists(MUNGE_KEY):
        die(f"no munge key at {MUNGE_KEY} (the munge package makes it; or run mungekey)", 2)


def cmd_up(a) -> int:
    c = Cluster(a.state_dir)
    if not c.state and c.dir.exists() and any(c.dir.iterdir()):  # `down` removes the whole state dir
        die(f"--state-dir {c.dir} is not empty and holds no localcluster state; give a new or empty dir", 2)
    if c.state.get("nodes") and c.state["nodes"] != a.nodes:
        die(f"a {c.state['nodes']}-node cluster is up in {c.dir}; run `down` first", 1)
    if c.state.get("net_id") and c.state["net_id"] != a.net_id and c.state.get("multi"):
        die(f"the cluster in {c.dir} uses --net-id {c.state['net_id']}; run `down` first", 1)
    link = None if a.link in (None, "", "none", "unlimited") else a.link
    if a.nodes == 1 and (link or a.delay):
        log("note: --link/--delay apply between nodes only; a 1-node cluster has no link to shape")
    if a.delay:
        netem_check()
    was_up = all_up(c) if c.state else False
    c.plan(a.nodes, a.net_id, a.cpus_per_node)
    c.save()
    try:
        c.write_configs()
        if c.state["multi"]:
            c.net_up()
            if (link, a.delay) != (c.state.get("link"), c.state.get("delay_ms")) or not was_up:
                c.shape(link, a.delay)
        else:
            c.state["link"], c.state["delay_ms"] = None, None
        c.start_munged()
        c.start_ctld()
        c.start_slurmds()
        c.wait_idle()
    except (ClusterError, subprocess.TimeoutExpired) as e:
        c.save()
        die(f"{e}\n(partial state kept; `{sys.argv[0]} down --state-dir {c.dir}` removes it)", 1)
    c.save()
    nodes = ", ".join(f"{n['name']}" + (f"@{n['addr']}" if n["addr"] else "") for n in c.state["node_list"])
    log(("already up: " if was_up else "up: ") + f"{a.nodes} node(s) [{nodes}], {c.state['cpus_per_node']} CPU(s) each"
        + (f", links {link or 'unlimited'}" + (f" +{a.delay}ms" if a.delay else "") if c.state["multi"] else ""))
    print(f"export SLURM_CONF={c.conf}", flush=True)
    return 0


def netem_check() -> None:
    """--delay needs the kernel's sch_netem; find out in a throwaway namespace before changing anything."""
    ns = f"lcnetem{os.getpid()}"
    sh(["ip", "netns", "add", ns])
    try:
        p = sh(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
    finally:
        sh(["ip", "netns", "del", ns], check=False)
    if p.returncode != 0:
        die(f"--delay needs tc netem, which this kernel lacks ({p.stderr.strip()}); omit --delay", 2)


def all_up(c: Cluster) -> bool:
    st = c.state
    if not st.get("node_list"):
        return False
    pids = st.get("pids", {})
    ok = pid_alive(pids.get("munged"), "munged") and pid_alive(pids.get("slurmctld"), "slurmctld")
    return ok and all(pid_alive(pids.get(f"slurmd:{n['name']}"), "slurmd") for n in st["node_list"])


def cmd_status(a) -> int:
    c = Cluster(a.state_dir)
    if not c.state:
        print(f"localcluster: down (no state in {c.dir})")
        return 3
    st = c.state
    info = {"state_dir": str(c.dir), "slurm_conf": str(c.conf), "nodes": st.get("nodes"),
            "link": st.get("link"), "delay_ms": st.get("delay_ms"), "daemons": {}, "node_states": {}}
    for key, pid in st.get("pids", {}).items():
        info["daemons"][key] = {"pid": pid, "alive": pid_alive(pid, key.split(":")[0])}
    if pid_alive(st.get("pids", {}).get("slurmctld"), "slurmctld"):
        info["node_states"] = c.node_states()
    healthy = all_up(c) and all(info["node_states"].get(n["name"], "").rstrip("*") in ("idle", "mix", "alloc")
                                and not info["node_states"][n["name"]].endswith("*") for n in st["node_list"])
    info["healthy"] = healthy
    if st.get("multi"):
        info["qdisc"] = {n["netns"]: sh(["tc", "-n", n["netns"], "qdisc", "show", "dev", "eth0"], check=False)
                         .stdout.strip() for n in st["node_list"]}
    if a.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        print(f"localcluster: {'up' if healthy else 'DEGRADED'}: {st.get('nodes')} node(s), state {c.dir}")
        for key, d in info["daemons"].items():
            print(f"  {key:16s} pid {d['pid']:>7}  {'running' if d['alive'] else 'NOT running'}")
        for name, s in info["node_states"].items():
            print(f"  node {name:12s} {s}")
        if st.get("multi"):
            print(f"  links: {st.get('link') or 'unlimited'}, one-way delay {st.get('delay_ms') or 0} ms")
        print(f"  export SLURM_CONF={c.conf}")
    return 0 if healthy else 1


def cmd_down(a) -> int:
    c = Cluster(a.state_dir)
    st = c.state
    if not st:
        log(f"nothing to do (no state in {c.dir})")
        return 0
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
    # 4. network: namespaces (their veth ends go with them), veths, bridge
    made = st.get("created", {})
    for n in st.get("node_list", []):
        if n.get("netns"):
            sh(["tc", "-n", n["netns"], "qdisc", "del", "dev", "eth0", "root"], check=False)
    for ns in made.get("netns", []):
        if sh(["ip", "netns", "del", ns], check=False).returncode == 0:
            log(f"deleted network namespace {ns}")
    for veth in made.get("veth", []):
        if Path(f"/sys/class/net/{veth}").exists():
            sh(["ip", "link", "del", veth], check=False)
            log(f"deleted veth {veth}")
    if made.get("bridge") and Path(f"/sys/class/net/{made['bridge']}").exists():
        sh(["ip", "link", "del", made["bridge"]], check=False)
        log(f"deleted bridge {made['bridge']}")
    # 5. the state dir (configs, logs, spool, node tmp)
    if a.keep_state:
        c.state = {}
        c.state_file.unlink(missing_ok=True)
        log(f"down; logs kept in {c.dir}")
    else:
        shutil.rmtree(c.dir, ignore_errors=True)
        log(f"down; removed {c.dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="localcluster.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("up", "down", "status"))
    ap.add_argument("--nodes", type=int, default=1, help="SLURM nodes (1: plain one-node cluster; >1: netns)")
    ap.add_argument("--link", default=None, help="per-node link rate for tc tbf, e.g. 10gbit, 1gbit, 200mbit")
    ap.add_argument("--delay", type=float, default=None, help="one-way delay per link in ms (tc netem)")
    ap.add_argument("--cpus-per-node", type=int, default=None, help="CPUs each node declares (default nproc/N)")
    ap.add_argument("--net-id", type=int, default=int(os.environ.get("LOCALCLUSTER_NET_ID", 77)),
                    help="multi-node: bridge br<ID>, subnet 10.<ID>.0.0/24, namespaces lc<ID>n<K>")
    ap.add_argument("--state-dir", default=DEFAULT_STATE, help="configs, logs, spool, pids (default %(default)s)")
    ap.add_argument("--keep-state", action="store_true", help="down: keep the state dir's logs")
    ap.add_argument("--json", action="store_true", help="status: machine-readable")
    a = ap.parse_args(argv)
    if not 1 <= a.net_id <= 254:
        die("--net-id must be 1..254", 2)
    if a.nodes < 1:
        die(f"--nodes must be >= 1, got {a.nodes}", 2)
    if a.nodes > 200:
        die(f"--nodes must be <= 200 (addresses 10.ID.0.11..210), got {a.nodes}", 2)
    if a.cpus_per_node is not None and a.cpus_per_node < 1:
        die(f"--cpus-per-node must be >= 1, got {a.cpus_per_node}", 2)
    if a.delay is not None and a.delay < 0:
        die(f"--delay must be >= 0 ms, got {a.delay}", 2)
    if a.link not in (None, "", "none", "unlimited") and not RATE_RE.match(a.link):
        die(f"bad --link {a.link!r}; use e.g. 10gbit, 1gbit, 200mbit (or none)", 2)
    preflight()
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[a.command](a)
    except ClusterError as e:
        die(str(e), 1)
        return 1


if __name__ == "__main__":
    sys.exit(main())
