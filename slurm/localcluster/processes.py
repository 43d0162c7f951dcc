"""Processes: run a command, start a daemon detached, find and stop what a cluster left behind."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


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


def parent_pid(pid: int | str) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1:
        out.add(pid)
        try:
            pid = parent_pid(pid)
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
                children.setdefault(parent_pid(d), []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out
