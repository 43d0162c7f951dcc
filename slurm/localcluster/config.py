"""The files `up` writes: slurm.conf (controller's and, for netns nodes, one per node), mpi.conf, the
TaskProlog that hands every task the link it runs over, and the nodes' /etc/hosts."""
from __future__ import annotations

import os
from pathlib import Path

from .state import Cluster


def slurm_conf(c: Cluster, node_tmp: Path | None) -> str:
    st, d = c.state, c.dir
    host = st["hostname"]
    ctld_host = f"{host}({st['ctld_addr']})" if st["multi"] else host
    lines = [
        "# written by slurm/localcluster; removed by `python -m slurm.localcluster down`",
        f"ClusterName=lc{st['net_id']}",
        f"SlurmctldHost={ctld_host}",
        f"SlurmctldPort={st['ctld_port']}",
        f"SlurmdPort={st['slurmd_port']}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={d / 'munge' / 'munge.socket'}",
        f"StateSaveLocation={d / 'ctld'}",
        f"SlurmctldPidFile={d / 'ctld' / 'slurmctld.pid'}",
        f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
        f"SlurmdSpoolDir={d / 'nodes' / '%n' / 'spool'}",
        f"SlurmdPidFile={d / 'nodes' / '%n' / 'slurmd.pid'}",
        f"SlurmdLogFile={d / 'log' / 'slurmd-%n.log'}",
        "ProctrackType=proctrack/linuxproc",
        # sched_setaffinity per task: `srun --cpu-bind=cores` gives each task its own core(s)
        "TaskPlugin=task/affinity",
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
        f"TaskProlog={d / 'etc' / 'taskprolog.sh'}",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={d / 'log' / 'jobcomp.txt'}",
    ]
    if node_tmp is not None:
        lines.append(f"TmpFS={node_tmp}")
    for n in st["node_list"]:
        addr = f" NodeAddr={n['addr']}" if n["addr"] else ""
        lines.append(f"NodeName={n['name']}{addr} {node_cpu_spec(c, n)} State=UNKNOWN")
    names = ",".join(n["name"] for n in st["node_list"])
    lines.append(f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES")
    return "\n".join(lines) + "\n"


def node_cpu_spec(c: Cluster, node: dict) -> str:
    """CPUs a node declares. Emulated nodes share this machine's cores: node K declares them all and keeps
    (CpuSpecList, "specialized" = never given to jobs) every core but its own block, so task/affinity binds
    its tasks to that block instead of to core 0 of every node."""
    st = c.state
    if not st["multi"]:
        return f"CPUs={st['cpus_per_node']}"
    ncpu = os.cpu_count() or 1
    own = set(node_cpus(c, node))
    spec = ",".join(str(i) for i in range(ncpu) if i not in own)
    return f"CPUs={ncpu}" + (f" CpuSpecList={spec}" if spec else "")


def node_cpus(c: Cluster, node: dict) -> list[int]:
    """This machine's cores that emulated node K owns: the K-th block of cpus_per_node, wrapping around."""
    st, ncpu = c.state, os.cpu_count() or 1
    k = [n["name"] for n in st["node_list"]].index(node["name"])
    return sorted({(k * st["cpus_per_node"] + i) % ncpu for i in range(st["cpus_per_node"])})


def write_configs(c: Cluster) -> None:
    st, d = c.state, c.dir
    for sub in ("etc", "ctld", "munge", "log"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    (d / "munge").chmod(0o700)
    prolog = d / "etc" / "taskprolog.sh"
    prolog.write_text(f"#!/bin/sh\n# TaskProlog: lines 'export NAME=VALUE' land in every task's environment\n"
                      f"cat {d / 'etc' / 'link.env'} 2>/dev/null || true\n")
    prolog.chmod(0o755)
    write_link_env(c)
    # The controller's (and every client's) config; for one node also the node's.
    first_tmp = c.node_dir(st["node_list"][0]) / "tmp" if not st["multi"] else None
    c.conf.write_text(slurm_conf(c, first_tmp))
    if first_tmp is not None:
        first_tmp.mkdir(parents=True, exist_ok=True)
        (d / "etc" / "mpi.conf").write_text(f"PMIxCliTmpDirBase={first_tmp}\n")
    else:
        (d / "etc" / "mpi.conf").write_text(f"PMIxCliTmpDirBase={d / 'tmp'}\n")
        (d / "tmp").mkdir(exist_ok=True)
    for n in st["node_list"]:
        nd = c.node_dir(n)
        for sub in ("spool", "tmp", "etc"):
            (nd / sub).mkdir(parents=True, exist_ok=True)
        if st["multi"]:
            (nd / "etc" / "slurm.conf").write_text(slurm_conf(c, nd / "tmp"))
            (nd / "etc" / "mpi.conf").write_text(f"PMIxCliTmpDirBase={nd / 'tmp'}\n")
    if st["multi"]:
        hosts = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback",
                 f"{st['ctld_addr']} {st['hostname']}"]
        hosts += [f"{n['addr']} {n['name']}" for n in st["node_list"]]
        (d / "etc" / "hosts").write_text("\n".join(hosts) + "\n")


def write_link_env(c: Cluster) -> None:
    st = c.state
    link = st.get("link") if st.get("multi") else None
    (c.dir / "etc" / "link.env").write_text(
        f"export LOCALCLUSTER_NODES={st['nodes']}\n"
        f"export LOCALCLUSTER_LINK={link or ('unlimited' if st.get('multi') else 'none')}\n"
        f"export LOCALCLUSTER_DELAY_MS={st.get('delay_ms') or 0}\n"
        f"export LOCALCLUSTER_TCP_CC={(st.get('congestion') if st.get('multi') else None) or ''}\n")
