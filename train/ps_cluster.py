"""Where a parameter-server cluster comes from, and the local launcher that makes one on loopback.

Order: the local launcher (no TF_CONFIG, no multi-task SLURM step, or `--cluster local`), TF_CONFIG,
or SLURM (`SlurmClusterResolver`). Worker and PS tasks only serve (`serve`); the chief trains.

The local launcher starts S PS and N worker processes, each `python -m train.async_ps <same args>
--cluster tf_config` with its own TF_CONFIG on free 127.0.0.1 ports, each in its own process group,
and tears every group down on success, error, Ctrl-C or SIGTERM. A child also dies with its launcher
(PR_SET_PDEATHSIG), so even a SIGKILLed launcher leaves no orphans.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from train.config import ConfigError

CLUSTER_SOURCES = ("auto", "local", "tf_config", "slurm")
PARENT_ENV = "ASYNC_PS_LAUNCHER_PID"
WATCHDOG_GRACE_S = 10.0  # how long the main thread gets to handle SIGTERM/SIGINT itself
# In every task: a call to a lost task fails at once instead of waiting for it to come back
# (TensorFlow's parameter-server guide asks for this; the coordinator then retries the step elsewhere).
CHILD_ENV = {"GRPC_FAIL_FAST": "use_caller"}


def inter_op_threads() -> int:
    """Inter-op threads for every task: TensorFlow's default is the cores this process may use, which
    is 1 under `taskset -c 0`, and a PS cluster deadlocks (the chief hangs) with one inter-op thread."""
    return max(2, len(os.sched_getaffinity(0)))


def extra_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--cluster", choices=CLUSTER_SOURCES, default="auto",
                   help="where the cluster comes from: auto = TF_CONFIG if set, else a multi-task "
                        "SLURM step, else the local launcher")
    p.add_argument("--private-net", choices=("auto", "off"), default="auto",
                   help="local launcher: run the whole cluster in a loopback-only network namespace "
                        "when root and unshare allow (TF's gRPC servers listen on every interface)")
    return p


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that `finally` tears the cluster down."""


def _raise_terminated(signum, frame):
    raise Terminated(f"signal {signum}")


# ---------------------------------------------------------------- cluster resolution
def source(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("TF_CONFIG"):
        return "tf_config"
    if int(os.environ.get("SLURM_STEP_NUM_TASKS", "1") or 1) > 1:  # a task of a multi-task srun step
        return "slurm"
    return "local"


def tf_config_resolver():
    """TFConfigClusterResolver after checking TF_CONFIG; ConfigError (one line) when it is malformed."""
    import tensorflow as tf

    raw = os.environ.get("TF_CONFIG", "")
    try:
        conf = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"malformed TF_CONFIG (not JSON: {e})") from None
    if not isinstance(conf, dict) or not isinstance(conf.get("cluster"), dict) \
            or not isinstance(conf.get("task"), dict):
        raise ConfigError("malformed TF_CONFIG: needs a 'cluster' object and a 'task' object")
    cluster, task = conf["cluster"], conf["task"]
    for job in ("chief", "worker", "ps"):
        if not isinstance(cluster.get(job), list) or not cluster[job] \
                or not all(isinstance(a, str) and re.fullmatch(r"[^:\s]+:\d+", a) for a in cluster[job]):
            raise ConfigError(f"malformed TF_CONFIG: cluster.{job} must be a non-empty list of host:port")
    if len(cluster["chief"]) != 1:
        raise ConfigError("malformed TF_CONFIG: exactly one chief")
    kind, index = task.get("type"), task.get("index")
    if kind not in ("chief", "worker", "ps") or not isinstance(index, int) \
            or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"malformed TF_CONFIG: task {task!r} is not in the cluster")
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def max_tasks_per_node(spec: str) -> int:
    """SLURM_TASKS_PER_NODE such as '2(x3),1' -> 2."""
    counts = [int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", spec)]
    if not counts:
        raise ConfigError(f"cannot read SLURM_TASKS_PER_NODE={spec!r}")
    return max(counts)


def hostfile_cluster(hosts: list[str], num_ps: int, rank: int, port_base: int = 8888) -> tuple[dict, str, int]:
    """The cluster of a step placed by a SLURM host file (--distribution=arbitrary: task i runs on hosts[i]):
    task 0 the chief, 1..num_ps the PS, the rest workers; a task's port is port_base + the number of earlier
    tasks on its host. Returns (cluster spec dict, this task's type, its index)."""
    addrs, seen = [], {}
    for h in hosts:
        addrs.append(f"{h}:{port_base + seen.get(h, 0)}")
        seen[h] = seen.get(h, 0) + 1
    cluster = {"chief": addrs[:1], "ps": addrs[1:1 + num_ps], "worker": addrs[1 + num_ps:]}
    kind, index = ("chief", 0) if rank == 0 else ("ps", rank - 1) if rank <= num_ps else ("worker", rank - 1 - num_ps)
    return cluster, kind, index


def _hostfile_hosts() -> list[str]:
    path = os.environ.get("SLURM_HOSTFILE", "")
    if not path:
        return []
    try:
        with open(path, encoding="utf-8") as f:
            return [h.strip() for h in f if h.strip()]
    except OSError as e:
        raise ConfigError(f"cannot read SLURM_HOSTFILE {path}: {e}") from None


def slurm_resolver(num_ps: int, port_base: int = 8888):
    """One chief, `num_ps` PS, the remaining tasks of the step are workers.

    A step placed by a host file (SLURM_HOSTFILE, --distribution=arbitrary) gets its cluster from that file
    (hostfile_cluster): SlurmClusterResolver packs tasks onto the step's hosts in sorted-name order, which is
    where an arbitrary placement's tasks are not (2 PS shards on nodes n1 and n2 with workers back on n1: a
    worker took the chief's port, "Address already in use", 2026-12-06). Otherwise SlurmClusterResolver; on
    CPUs it runs nvidia-smi unless told the GPUs per node, and fails on 0 of them: it is told one "GPU" per
    task (gpus_per_node = tasks per node) and auto_set_gpu is off."""
    import tensorflow as tf

    ntasks = int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ.get("SLURM_NTASKS", "0")) or 0)
    workers = ntasks - 1 - num_ps
    if workers < 1:
        raise ConfigError(f"SLURM step has {ntasks} tasks: needs 1 chief + {num_ps} ps + >= 1 worker")
    hosts, rank = _hostfile_hosts(), int(os.environ.get("SLURM_PROCID", "0") or 0)
    # the host file placed this step when it lists a host a task and this task runs where it says
    if len(hosts) >= ntasks and hosts[rank] == os.environ.get("SLURMD_NODENAME", hosts[rank]):
        cluster, kind, index = hostfile_cluster(hosts[:ntasks], num_ps, rank, port_base)
        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=kind, task_id=index, rpc_layer="grpc")
    per_node = max_tasks_per_node(os.environ.get("SLURM_STEP_TASKS_PER_NODE",
                                                 os.environ.get("SLURM_TASKS_PER_NODE", "")))
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
        jobs={"chief": 1, "ps": num_ps, "worker": workers}, port_base=port_base,
        gpus_per_node=per_node, gpus_per_task=1, auto_set_gpu=False)  # CPU: no nvidia-smi
    resolver.cluster_spec()  # sets task_type / task_id
    return resolver


def check_shape(resolver, cfg) -> None:
    jobs = resolver.cluster_spec().as_dict()
    if len(jobs.get("ps", [])) < 1 or len(jobs.get("worker", [])) < 1:
        raise ConfigError(f"cluster needs >= 1 ps and >= 1 worker, got {jobs}")


# ---------------------------------------------------------------- serving tasks (worker, ps)
def _die_with_parent() -> None:
    """A launched child dies with its launcher, even if the launcher is SIGKILLed."""
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the launcher is already gone
        os._exit(1)


def serve(resolver, intra_op_threads: int) -> int:
    """Run this task's tf.distribute.Server until killed (workers and PS never return on their own)."""
    import tensorflow as tf

    _die_with_parent()
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=inter_op_threads())
    if intra_op_threads:  # intra-op only: one inter-op thread deadlocks a PS cluster
        config.intra_op_parallelism_threads = intra_op_threads
    server = tf.distribute.Server(resolver.cluster_spec(), job_name=resolver.task_type,
                                  task_index=resolver.task_id, protocol=resolver.rpc_layer or "grpc",
                                  config=config, start=True)
    server.join()
    return 0


# ---------------------------------------------------------------- the local launcher
def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """S PS + N workers as child processes on 127.0.0.1; the caller is the chief."""

    def __init__(self, num_workers: int, num_ps: int, argv: list[str], module: str = "train.async_ps"):
        ports = free_ports(1 + num_workers + num_ps)
        addr = [f"127.0.0.1:{p}" for p in ports]
        self.spec = {"chief": addr[:1], "worker": addr[1:1 + num_workers], "ps": addr[1 + num_workers:]}
        self.argv, self.module = list(argv), module
        self.children: dict[tuple[str, int], subprocess.Popen] = {}
        self.lost: dict[str, int] = {}
        self._stop_lock, self._stopped = threading.Lock(), threading.Event()

    def resolver(self):
        import tensorflow as tf

        return tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(self.spec), task_type="chief", task_id=0, rpc_layer="grpc")

    def start(self) -> "LocalCluster":
        for job in ("ps", "worker"):
            for i in range(len(self.spec[job])):
                env = dict(os.environ, **CHILD_ENV, **{PARENT_ENV: str(os.getpid())})
                env["TF_CONFIG"] = json.dumps({"cluster": self.spec, "task": {"type": job, "index": i}})
                env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
                cmd = [sys.executable, "-m", self.module, *self.argv, "--cluster", "tf_config"]
                self.children[(job, i)] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                                           start_new_session=True)  # own process group
        return self

    def pids(self) -> dict[str, int]:
        return {f"{job}:{i}": p.pid for (job, i), p in self.children.items()}

    def exited(self) -> dict[str, int]:
        """Children that have already exited, with their return codes (-9: SIGKILL)."""
        return {f"{job}:{i}": p.returncode for (job, i), p in self.children.items() if p.poll() is not None}

    def stop(self, grace_s: float = 5.0) -> None:
        with self._stop_lock:  # the main thread or the watchdog, once
            if self._stopped.is_set():
                return
            self._stop(grace_s)
            self._stopped.set()

    def _stop(self, grace_s: float) -> None:
        self.lost = self.exited()  # before we stop them: these died on their own
        for p in self.children.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for p in self.children.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)  # the whole group, grandchildren included
            p.wait()

    def _watchdog(self, wakeup_r: int) -> None:
        """SIGTERM/SIGINT reach Python's handler only when the main thread runs Python code; if it is
        stuck inside TensorFlow, tear the cluster down from here after a grace period and exit."""
        while True:
            try:
                got = os.read(wakeup_r, 64)
            except OSError:
                got = b""
            if not got:  # __exit__ closed the write end
                os.close(wakeup_r)
                return
            if {signal.SIGTERM, signal.SIGINT} & set(got) and not self._stopped.wait(WATCHDOG_GRACE_S):
                print("train.async_ps: signal not handled in time; tearing the cluster down", file=sys.stderr)
                self.stop()
                os._exit(143 if signal.SIGTERM in set(got) else 130)

    def __enter__(self) -> "LocalCluster":
        signal.signal(signal.SIGTERM, _raise_terminated)
        wakeup_r, wakeup_w = os.pipe()
        os.set_blocking(wakeup_w, False)
        self._wakeup = (wakeup_r, wakeup_w, signal.set_wakeup_fd(wakeup_w))
        threading.Thread(target=self._watchdog, args=(wakeup_r,), name="cluster-watchdog", daemon=True).start()
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        wakeup_r, wakeup_w, previous = self._wakeup
        signal.set_wakeup_fd(previous)
        os.close(wakeup_w)


@contextlib.contextmanager
def cluster(requested: str, cfg, argv: list[str], module: str = "train.async_ps"):
    """Yield (resolver, launcher or None, source name); ConfigError on a bad cluster description."""
    import tensorflow as tf

    kind = source(requested)
    os.environ.update(CHILD_ENV)  # the chief too, before TensorFlow opens its channels
    with contextlib.suppress(RuntimeError):  # already started (an in-process caller): keep its setting
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads())
    if kind == "local":
        with LocalCluster(cfg.workers, cfg.ps, argv, module) as local:
            yield local.resolver(), local, kind
        return
    resolver = tf_config_resolver() if kind == "tf_config" else slurm_resolver(cfg.ps)
    check_shape(resolver, cfg)
    yield resolver, None, kind
