"""The commands: up, status, down (and the checks every command makes first)."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

from . import __doc__ as PACKAGE_DOC
from .config import write_configs
from .daemons import MUNGE_KEY, all_up, node_states, start_ctld, start_munged, start_slurmds, stop_all, wait_idle
from .network import RATE_RE, net_down, net_up, netem_check, shape
from .processes import ClusterError, die, log, pid_alive, sh
from .state import Cluster

DEFAULT_STATE = os.environ.get("LOCALCLUSTER_DIR", "/tmp/localcluster")
PACKAGES = {"munged": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd", "sinfo": "slurm-client",
            "srun": "slurm-client", "ip": "iproute2", "tc": "iproute2", "nsenter": "util-linux",
            "unshare": "util-linux", "taskset": "util-linux"}


def preflight() -> None:
    if os.geteuid() != 0:
        die("needs root (it starts munged, slurmctld, slurmd and makes network namespaces); run it as root", 2)
    missing = sorted({pkg for prog, pkg in PACKAGES.items() if shutil.which(prog) is None})
    if missing:
        die(f"missing system packages: {' '.join(missing)} (apt-get install -y {' '.join(missing)})", 2)
    if not os.path.exists(MUNGE_KEY):
        die(f"no munge key at {MUNGE_KEY} (the munge package makes it; or run mungekey)", 2)


def cmd_up(a: argparse.Namespace) -> int:
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
        write_configs(c)
        if c.state["multi"]:
            net_up(c)
            wanted_cc = a.congestion_control or c.state.get("congestion")
            if (link, a.delay, a.burst, a.queue_ms, wanted_cc) != (
                    c.state.get("link"), c.state.get("delay_ms"), c.state.get("burst"), c.state.get("queue_ms"),
                    c.state.get("congestion")) or not was_up:
                shape(c, link, a.delay, a.burst, a.queue_ms, a.congestion_control)
        else:
            c.state["link"], c.state["delay_ms"] = None, None
        start_munged(c)
        start_ctld(c)
        start_slurmds(c)
        wait_idle(c)
    except (ClusterError, subprocess.TimeoutExpired) as e:
        c.save()
        die(f"{e}\n(partial state kept; `{sys.argv[0]} down --state-dir {c.dir}` removes it)", 1)
    c.save()
    nodes = ", ".join(f"{n['name']}" + (f"@{n['addr']}" if n["addr"] else "") for n in c.state["node_list"])
    log(("already up: " if was_up else "up: ") + f"{a.nodes} node(s) [{nodes}], {c.state['cpus_per_node']} CPU(s) each"
        + (f", links {link or 'unlimited'}" + (f" +{a.delay}ms" if a.delay else "") if c.state["multi"] else ""))
    print(f"export SLURM_CONF={c.conf}", flush=True)
    return 0


def cmd_status(a: argparse.Namespace) -> int:
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
        info["node_states"] = node_states(c)
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


def cmd_down(a: argparse.Namespace) -> int:
    c = Cluster(a.state_dir)
    if not c.state:
        log(f"nothing to do (no state in {c.dir})")
        return 0
    stop_all(c)
    net_down(c.state)
    # the state dir (configs, logs, spool, node tmp)
    if a.keep_state:
        c.state = {}
        c.state_file.unlink(missing_ok=True)
        log(f"down; logs kept in {c.dir}")
    else:
        shutil.rmtree(c.dir, ignore_errors=True)
        log(f"down; removed {c.dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m slurm.localcluster", description=PACKAGE_DOC.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("up", "down", "status"))
    ap.add_argument("--nodes", type=int, default=1, help="SLURM nodes (1: plain one-node cluster; >1: netns)")
    ap.add_argument("--link", default=None, help="per-node link rate for tc tbf, e.g. 10gbit, 1gbit, 200mbit")
    ap.add_argument("--delay", type=float, default=None, help="one-way delay per link in ms (tc netem)")
    ap.add_argument("--burst", type=int, default=None,
                    help="tbf bucket depth in bytes (default max(256 KiB, 2 ms at the rate))")
    ap.add_argument("--queue-ms", type=float, default=None, help="tbf latency: queue length in ms at the rate (default 100)")
    ap.add_argument("--congestion-control", default=None, metavar="NAME",
                    help="the nodes' TCP congestion control, e.g. reno (default: what the host gives a new namespace)")
    ap.add_argument("--cpus-per-node", type=int, default=None, help="CPUs (cores of this machine) each node gets (default nproc/N, at least 1)")
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
    if a.nodes > 1 and (a.cpus_per_node or 0) > (os.cpu_count() or 1):  # a node's cores are this machine's
        die(f"--cpus-per-node must be <= {os.cpu_count()} (this machine's cores) with --nodes > 1", 2)
    if a.delay is not None and a.delay < 0:
        die(f"--delay must be >= 0 ms, got {a.delay}", 2)
    if a.queue_ms is not None and a.queue_ms <= 0:
        die(f"--queue-ms must be > 0, got {a.queue_ms}", 2)
    if a.burst is not None and a.burst < 1600:  # tbf drops packets larger than its bucket
        die(f"--burst must be >= 1600 bytes (one full-size packet), got {a.burst}", 2)
    if a.congestion_control is not None and not re.fullmatch(r"[a-z0-9_]+", a.congestion_control):
        die(f"bad --congestion-control {a.congestion_control!r}; e.g. reno, cubic, bbr", 2)
    if a.link not in (None, "", "none", "unlimited") and not RATE_RE.match(a.link):
        die(f"bad --link {a.link!r}; use e.g. 10gbit, 1gbit, 200mbit (or none)", 2)
    preflight()
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[a.command](a)
    except ClusterError as e:
        die(str(e), 1)
        return 1
