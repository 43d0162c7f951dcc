"""The cluster's state: what `up` made and planned, kept in DIR/state.json so `down` can undo exactly that."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from .processes import free_port


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

    def node_dir(self, node: dict) -> Path:
        return self.dir / "nodes" / node["name"]

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
