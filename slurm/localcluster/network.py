"""Network of the emulated nodes: a bridge, one network namespace + veth pair per node, tc-shaped links."""
from __future__ import annotations

import os
import re
from pathlib import Path

from .config import write_link_env
from .processes import ClusterError, die, log, sh
from .state import Cluster

RATE_RE = re.compile(r"^(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit|tbit)$", re.I)
RATE_MULT = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}


def rate_bits(rate: str) -> float:
    m = RATE_RE.match(rate)
    if not m:
        raise ClusterError(f"bad --link {rate!r}; use e.g. 10gbit, 1gbit, 200mbit (or 'none')")
    return float(m.group(1)) * RATE_MULT[m.group(2).lower()]


def net_up(c: Cluster) -> None:
    st, made = c.state, c.state["created"]
    br = st["bridge"]
    if not Path(f"/sys/class/net/{br}").exists():
        sh(["ip", "link", "add", br, "type", "bridge"])
        made["bridge"] = br
        c.save()
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
            c.save()
            log(f"made network namespace {ns}")
        elif ns not in made["netns"]:
            raise ClusterError(f"network namespace {ns} exists but was not made by this cluster")
        if not Path(f"/sys/class/net/{veth}").exists():
            sh(["ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p"])
            made["veth"].append(veth)
            c.save()
            sh(["ip", "link", "set", f"{veth}p", "netns", ns])
            sh(["ip", "-n", ns, "link", "set", f"{veth}p", "name", "eth0"])
            sh(["ip", "-n", ns, "addr", "add", f"{n['addr']}/24", "dev", "eth0"])
            sh(["ip", "link", "set", veth, "master", br])
            log(f"made veth {veth} <-> {ns}:eth0 {n['addr']}/24")
        sh(["ip", "link", "set", veth, "up"])
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])
        sh(["ip", "-n", ns, "route", "replace", "default", "via", st["ctld_addr"]])


def shape(c: Cluster, link: str | None, delay: float | None, burst: int | None = None,
          queue_ms: float | None = None, congestion: str | None = None) -> None:
    """tbf for bandwidth (+ netem for one-way delay) on every node's egress (eth0 in its namespace).
    burst (bytes): the token bucket's depth; default max(256 KiB, 2 ms at the rate). A time-dilated study
    (compare/dilated.py) sends less per step than 256 KiB and passes a smaller one. queue_ms: tbf's latency
    (queue length in time at the rate), default 100 ms; a node's egress queue also holds the ACKs of what it
    receives, and behind 100 ms of data an allreduce between two nodes reached ~60% of the rate (93% at 10 ms).
    congestion: the nodes' TCP congestion control (None: what a new namespace inherits from the host)."""
    st = c.state
    for n in st["node_list"]:
        ns = n["netns"]
        if congestion:
            p = sh(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv4.tcp_congestion_control={congestion}"],
                   check=False)
            if p.returncode != 0:
                allowed = sh(["ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.tcp_allowed_congestion_control"],
                             check=False).stdout.strip()
                raise ClusterError(f"--congestion-control {congestion}: a node may use only {allowed or 'reno'} "
                                   f"({p.stderr.strip()})")
        sh(["tc", "-n", ns, "qdisc", "del", "dev", "eth0", "root"], check=False)
        if link:
            bits = rate_bits(link)
            burst = burst or max(256 * 1024, int(bits / 8 * 0.002))  # >= 2 ms worth at the rate
            sh(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "tbf",
                "rate", link, "burst", str(burst), "latency", f"{queue_ms or 100:g}ms"])
            if delay:
                sh(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "parent", "1:1", "handle", "10:",
                    "netem", "delay", f"{delay}ms", "limit", "100000"])
        elif delay:
            sh(["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "handle", "10:",
                "netem", "delay", f"{delay}ms", "limit", "100000"])
    st["link"], st["delay_ms"], st["burst"], st["queue_ms"] = link, delay, burst, queue_ms
    st["congestion"] = sh(["ip", "netns", "exec", st["node_list"][0]["netns"], "sysctl", "-n",
                           "net.ipv4.tcp_congestion_control"]).stdout.strip() if st["node_list"] else None
    c.save()
    write_link_env(c)
    if st["node_list"]:
        log(f"links shaped: rate {link or 'unlimited'}, one-way delay {delay or 0} ms, TCP {st['congestion']} on "
            + ", ".join(f"{n['netns']}:eth0" for n in st["node_list"]))


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


def net_down(st: dict) -> None:
    """Namespaces (their veth ends go with them), veths, bridge: only what state says `up` made."""
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
