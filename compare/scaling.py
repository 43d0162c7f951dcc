"""The scaling model: alpha-beta ring allreduce (sync) and sharded parameter servers (async). No TensorFlow.

Sync, per step:  t(p) = t_compute(p) + t_comm(p) - hidden,
    t_comm = ring over the GPUs of a node + ring over the nodes (hierarchical; one NIC a node),
    ring(n, q, a, B) = 2(q-1) a + 2(q-1)/q * n / B,   n = gradient bytes (halved by fp16 compression),
    hidden = min(t_comm, overlap * 2/3 * t_compute)   (2/3 of a step is the backward pass).
Async, updates per second:  R(p) = min(p / t_update(p), S * B_ps / (2n)),
    t_update = t_compute(p) + worker's push+pull time,  expected staleness = p - 1.
On this machine "a GPU" is one pinned CPU core and an arm with p workers gets p cores: sync ranks
one core each; the whole async cluster (chief, PS, p workers) shares cores 0..p-1, so the
chief's and the PS's CPU work is paid out of the workers' cores, as measured at p = 1. The cores
also slow each other (memory bandwidth, caches, a noisy host): t_compute(p) carries the measured
side-by-side contention factor kappa(p) of p independent 1-core runs.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

PROFILES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles.json")
PROFILE_NAMES = ("local", "tsubame2.5", "h200")
BACKWARD_FRACTION = 2.0 / 3.0
PROJECTION_GPUS = (1, 2, 4, 8, 16, 32, 48)


class ModelError(ValueError):
    """Bad input to the model (unknown profile, p < 1): one line, exit 2."""


# ------------------------------------------------------------------ communication
def wire_bytes(grad_bytes_fp32: float, compression: str = "none") -> float:
    """Bytes on the wire per gradient exchange: fp16 compression halves n."""
    if compression not in ("none", "fp16"):
        raise ModelError(f"unknown compression {compression!r}")
    return grad_bytes_fp32 / 2 if compression == "fp16" else float(grad_bytes_fp32)


def ring_bytes(n: float, p: int) -> float:
    """Bytes each member sends in a ring allreduce of n bytes over p members: 2(p-1)/p * n."""
    _check_p(p)
    return 2.0 * (p - 1) / p * n


def ring_time(n: float, p: int, alpha: float, bw: float) -> float:
    """alpha-beta time of a ring allreduce: 2(p-1) alpha + 2(p-1)/p * n / B; 0 for p = 1."""
    if p == 1:
        return 0.0
    return 2 * (p - 1) * alpha + ring_bytes(n, p) / bw


def allreduce_time(n: float, p: int, per_node: int, alpha_intra: float, bw_intra: float,
                   alpha_inter: float, bw_node: float) -> float:
    """Hierarchical allreduce: ring within a node, then a ring over nodes through one NIC a node.

    After the local reduce-scatter each of the node's GPUs holds n/g; the g inter-node rings run
    at once through the shared NIC, which so carries 2(N-1)/N * n in all.
    """
    _check_p(p)
    local = min(p, per_node)
    nodes = math.ceil(p / per_node)
    return ring_time(n, local, alpha_intra, bw_intra) + ring_time(n, nodes, alpha_inter, bw_node)


def sync_step_time(t_compute: float, t_comm: float, overlap: float) -> float:
    hidden = min(t_comm, overlap * BACKWARD_FRACTION * t_compute)
    return t_compute + t_comm - hidden


# ------------------------------------------------------------------ parameter servers
def ps_update_rate(p: int, t_update: float, n: float, shards: int, bw_ps: float) -> float:
    """Updates per second of p async workers: min(p / t_update, S * B_ps / (2n))."""
    _check_p(p)
    return min(p / t_update, shards * bw_ps / (2.0 * n))


def ps_saturation_workers(t_update: float, n: float, shards: int, bw_ps: float) -> float:
    """Worker count where p / t_update = S * B_ps / (2n): beyond it the PS shards are the bottleneck."""
    return shards * bw_ps * t_update / (2.0 * n)


def expected_staleness(p: int) -> int:
    return p - 1


def _check_p(p: int) -> None:
    if not isinstance(p, (int,)) or p < 1:
        raise ModelError(f"worker count must be an integer >= 1, got {p!r}")


# ------------------------------------------------------------------ workloads and profiles
@dataclass(frozen=True)
class Workload:
    """One model on one device: step time of one worker alone and its fp32 gradient bytes."""
    head: str
    batch: int
    t_compute: float          # seconds per step, one worker alone
    grad_bytes: float         # fp32
    source: str = ""


@dataclass(frozen=True)
class Prediction:
    images_per_sec: float
    step_s: float             # sync: step time; async: one worker's update time
    comm_s: float
    bound: str                # compute | comm | ps | cpu
    saturation_workers: float | None = None


@dataclass
class Profile:
    name: str
    description: str
    per_node: int
    alpha_intra: float
    bw_intra: float
    alpha_inter: float
    bw_node: float
    overlap: float
    bw_ps: float
    workloads: dict[str, Workload] = field(default_factory=dict)  # by head
    sources: dict[str, str] = field(default_factory=dict)
    # CPU sharing (local only): contention factor by worker count, async per-update overhead and its CPU
    kappa: dict[int, float] = field(default_factory=dict)
    async_update: dict[str, float] = field(default_factory=dict)  # by head: measured 1-worker update s
    cores: int | None = None
    assumptions: list[str] = field(default_factory=list)

    def contention(self, p: int) -> float:
        if not self.kappa:
            return 1.0
        known = sorted(k for k in self.kappa if k <= p)
        return self.kappa[known[-1]] if known else 1.0

    def workload(self, head: str) -> Workload:
        if head not in self.workloads:
            raise ModelError(f"profile {self.name} has no workload for head {head!r}")
        return self.workloads[head]

    def sync(self, head: str, p: int, compression: str = "none") -> Prediction:
        _check_p(p)
        w = self.workload(head)
        n = wire_bytes(w.grad_bytes, compression)
        t_c = w.t_compute * self.contention(p)
        t_comm = allreduce_time(n, p, self.per_node, self.alpha_intra, self.bw_intra,
                                self.alpha_inter, self.bw_node)
        step = sync_step_time(t_c, t_comm, self.overlap)
        bound = "comm" if t_comm - min(t_comm, self.overlap * BACKWARD_FRACTION * t_c) > 0.1 * t_c else "compute"
        return Prediction(p * w.batch / step, step, t_comm, bound)

    def async_(self, head: str, p: int, shards: int = 1, compression: str = "none") -> Prediction:
        _check_p(p)
        w = self.workload(head)
        n = wire_bytes(w.grad_bytes, compression)
        kappa = self.contention(p)
        if head in self.async_update:
            # Measured (local): the whole async cluster of p workers runs on p cores, so the
            # 1-worker update time already holds the chief's and the PS's CPU work; p workers on
            # p cores repeat it, slowed by the machine's contention kappa(p). The part of an
            # update beyond the sync step is the PS/RPC service time of one update.
            t_update = self.async_update[head] * kappa
            t_push_pull = max(self.async_update[head] - w.t_compute, 0.0) * kappa
        else:                                    # push n + pull n through the node's NIC, shared
            workers_on_node = min(p, self.per_node)
            t_push_pull = 2 * self.alpha_inter + 2 * n / (self.bw_node / workers_on_node)
            t_update = w.t_compute * kappa + t_push_pull
        # A PS shard serves one update in 2n / B_ps (local: in the measured service time).
        if self.bw_ps:
            bw_ps = self.bw_ps
        else:
            bw_ps = 2 * n / t_push_pull if t_push_pull > 0 else math.inf
        rate = ps_update_rate(p, t_update, n, shards, bw_ps)
        if rate >= p / t_update:
            bound = "compute" if t_push_pull < 0.1 * t_update else "comm"
        else:
            bound = "ps"
        sat = ps_saturation_workers(t_update, n, shards, bw_ps) if math.isfinite(bw_ps) else None
        return Prediction(rate * w.batch, t_update, t_push_pull, bound, sat)

    def predict(self, mode: str, head: str, p: int, shards: int = 1, compression: str = "none") -> Prediction:
        if mode == "sync":
            return self.sync(head, p, compression)
        if mode == "async":
            return self.async_(head, p, shards, compression)
        raise ModelError(f"unknown mode {mode!r}; choose sync or async")

    def speedup(self, mode: str, head: str, p: int, shards: int = 1, compression: str = "none") -> float:
        return (self.predict(mode, head, p, shards, compression).images_per_sec
                / self.predict(mode, head, 1, shards, compression).images_per_sec)


# ------------------------------------------------------------------ building profiles
def load_profile_data(path: str = PROFILES_PATH) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_profile_names(names: list[str]) -> None:
    for name in names:
        if name not in PROFILE_NAMES:
            raise ModelError(f"unknown profile {name!r}; choose from {', '.join(PROFILE_NAMES)}")


def cluster_profile(name: str, data: dict | None = None, dtype: str | None = None) -> Profile:
    """tsubame2.5 or h200 from profiles.json, with the paper's workload (cnn11, 224x224, 1000 classes)."""
    data = data or load_profile_data()
    if name not in ("tsubame2.5", "h200"):
        raise ModelError(f"unknown cluster profile {name!r}")
    d, paper = data[name], data["paper_workload"]
    workloads = {}
    for head in ("gap", "fc4096"):
        if name == "tsubame2.5":
            eff = d["peak_gflops_fp32"] * d["compute_efficiency"]
            t_c = paper["batch"] * paper[head]["train_gflop_per_img"] / eff
            src = f"{paper['batch']} x {paper[head]['train_gflop_per_img']} GFLOP / ({d['peak_gflops_fp32']} GFLOP/s x {d['compute_efficiency']})"
        else:
            a = d["anchor"]
            key = f"step_s_{dtype or d['dtype']}"
            t_c = a[head][key] * paper["batch"] / a["batch"]
            src = f"measured H200 step {a[head][key]} s at batch {a['batch']} ({dtype or d['dtype']})"
        workloads[head] = Workload(head, paper["batch"], t_c, 4.0 * paper[head]["params"], src)
    return Profile(name=name, description=d["description"], per_node=d["devices_per_node"],
                   alpha_intra=d["alpha_intra_s"], bw_intra=d["bw_intra_Bps"],
                   alpha_inter=d["alpha_inter_s"], bw_node=d["bw_node_Bps"], overlap=d["overlap"],
                   bw_ps=d["ps_bw_Bps"], workloads=workloads, sources=d["sources"])


def fit_alpha_beta(sizes: list[float], times: list[float], p: int = 2) -> tuple[float, float]:
    """Least-squares alpha (s) and bandwidth B (bytes/s) of t = 2(p-1) alpha + 2(p-1)/p * n / B.

    Relative residuals (each point weighted by 1/t), so the small sizes fix alpha and the large B.
    """
    if len(sizes) != len(times) or len(sizes) < 2:
        raise ModelError("need at least two (size, time) points to fit alpha and beta")
    xs = [ring_bytes(n, p) for n in sizes]
    c = 2.0 * (p - 1)
    # t = c*alpha + x*inv_b, weights 1/t^2
    w = [1.0 / (t * t) for t in times]
    s_w = sum(w); s_x = sum(wi * x for wi, x in zip(w, xs)); s_xx = sum(wi * x * x for wi, x in zip(w, xs))
    s_t = sum(wi * t for wi, t in zip(w, times)); s_xt = sum(wi * x * t for wi, x, t in zip(w, xs, times))
    det = s_w * s_xx - s_x * s_x
    if det <= 0:
        raise ModelError("allreduce sizes do not span a range; cannot fit alpha and beta")
    intercept = (s_xx * s_t - s_x * s_xt) / det
    slope = (s_w * s_xt - s_x * s_t) / det
    alpha = max(intercept / c, 0.0)
    if slope <= 0:
        raise ModelError("allreduce time does not grow with size; cannot fit a bandwidth")
    return alpha, 1.0 / slope


def head_dense_counts(head: str, image_size: int, width: float, num_classes: int) -> tuple[int, int]:
    """(trainable params, multiply-accumulates per image) of cnn11's dense layers only: train/model.py's own
    pure counts (it imports TensorFlow inside cnn11() only). Carries a measured gap-head workload over to
    the fc4096 head."""
    from train.model import dense_counts

    try:
        return dense_counts(image_size, num_classes, head, width)
    except ValueError as e:
        raise ModelError(str(e)) from None


def local_profile(alpha: float, bw: float, workloads: dict[str, Workload], kappa: dict[int, float],
                  async_update: dict[str, float], cores: int, data: dict | None = None,
                  assumptions: list[str] | None = None) -> Profile:
    """The measured profile of this machine: one pinned core per worker, nodes of `cores` cores.

    alpha/bw from the allreduce microbenchmark are used within and between nodes (a cluster of
    machines like this one joined as fast as its own shared memory: a stated assumption).
    """
    d = (data or load_profile_data())["local"]
    return Profile(name="local", description=d["description"], per_node=cores,
                   alpha_intra=alpha, bw_intra=bw, alpha_inter=alpha, bw_node=bw,
                   overlap=d["overlap"], bw_ps=0.0, workloads=workloads, sources=d["sources"],
                   kappa=dict(kappa), async_update=dict(async_update), cores=cores,
                   assumptions=list(assumptions or []))


# ------------------------------------------------------------------ sensitivity: the band on every projection
# Each assumed input varied one at a time over its range ("x": a factor on the profile's value, "=": absolute
# values); the band is the envelope of the speedups. Stated in the reports next to the figures.
ASSUMED_RANGES: dict[str, tuple[str, float, float]] = {
    "alpha_intra": ("x", 0.5, 2.0), "alpha_inter": ("x", 0.5, 2.0), "bw_intra": ("x", 0.5, 2.0),
    "bw_node": ("x", 0.5, 2.0), "bw_ps": ("x", 0.5, 2.0), "overlap": ("=", 0.0, 1.0),
    "t_compute": ("x", 0.5, 2.0),
}


def describe_ranges(ranges: dict[str, tuple[str, float, float]] = ASSUMED_RANGES) -> str:
    return "; ".join(f"{k} {'x' if how == 'x' else ''}{lo:g}–{'x' if how == 'x' else ''}{hi:g}"
                     for k, (how, lo, hi) in ranges.items())


def varied(profile: Profile, name: str, value: float, how: str) -> Profile:
    """A copy of the profile with one input set (how '=') or scaled (how 'x')."""
    import dataclasses

    if name == "t_compute":
        factor = value
        wl = {h: dataclasses.replace(w, t_compute=w.t_compute * factor) for h, w in profile.workloads.items()}
        return dataclasses.replace(profile, workloads=wl,
                                   async_update={h: t * factor for h, t in profile.async_update.items()})
    old = getattr(profile, name)
    return dataclasses.replace(profile, **{name: value if how == "=" else old * value})


def speedup_band(profile: Profile, mode: str, head: str, gpus=PROJECTION_GPUS, shards: int = 1,
                 ranges: dict[str, tuple[str, float, float]] = ASSUMED_RANGES) -> tuple[list[float], list[float]]:
    """(low, high) speedup at each p over one-at-a-time variations of the assumed inputs."""
    gpus = [int(p) for p in gpus]
    curves = [[profile.speedup(mode, head, p, shards) for p in gpus]]
    for name, (how, lo, hi) in ranges.items():
        if name != "t_compute" and how == "x" and not getattr(profile, name):
            continue  # an input this profile does not have (e.g. the local PS bandwidth)
        for v in (lo, hi):
            prof = varied(profile, name, v, how)
            curves.append([prof.speedup(mode, head, p, shards) for p in gpus])
    return [min(c[i] for c in curves) for i in range(len(gpus))], [max(c[i] for c in curves) for i in range(len(gpus))]


# ------------------------------------------------------------------ the emulated cluster (one worker a node)
# Inputs, all measured in the study per link rate L: t1s (sync step of 1 worker on 1 node), t1a (async update
# of 1 worker with the PS on its node), alpha_L and B_L (Horovod MPI allreduce bench across the two nodes),
# kappa (sync-1n rate / rate of each of two 1-worker runs side by side, one a node: the nodes share the cores).
#   sync, p workers on p nodes:  step = kappa t1s + 2(p-1) alpha_L + 2(p-1)/p n / B_L
#   async, PS on node 1:         worker k's update = t1a (+ 2 alpha_L + 2n / B_L off the PS's node);
#                                rate = sum_k 1/update_k, capped by the PS link (B / 2n) and the PS's
#                                service time (t1a - t1s) per update.
RATE_MULT = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
EMULATED_RANGES: dict[str, tuple[str, float, float]] = {"alpha": ("x", 0.5, 2.0), "bw": ("x", 0.5, 2.0),
                                                        "kappa": ("x", 1 / 1.25, 1.25)}


def rate_bps(link: str) -> float:
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", str(link).lower())
    return float(m.group(1)) * RATE_MULT[m.group(2)] if m else float("nan")


def emulated_sync_ips(t1s: float, p: int, n: float, alpha: float, bw: float, batch: int, kappa: float = 1.0) -> float:
    return p * batch / (kappa * t1s + ring_time(n, p, alpha, bw))


def emulated_async_ips(t1a: float, p: int, n: float, alpha: float, bw: float, batch: int, kappa: float = 1.0,
                       t1s: float | None = None, local_workers: int = 1, shards: int = 1) -> float:
    """Images/sec of p async workers, one a node, the PS on node 1 with `local_workers` of them."""
    _check_p(p)
    local = min(p, local_workers)
    remote = p - local
    t_remote = kappa * t1a + 2 * alpha + 2 * n / bw
    rate = local / (kappa * t1a) + (min(remote / t_remote, shards * bw / (2 * n)) if remote else 0.0)
    if t1s is not None and t1a > t1s:
        rate = min(rate, shards / (kappa * (t1a - t1s)))
    return batch * rate


def emulated_predict(mode: str, p: int, inputs: dict, batch: int, n: float) -> float:
    """Images/sec at p workers on p nodes from one link's measured inputs."""
    if mode == "sync":
        return emulated_sync_ips(inputs["t1s"], p, n, inputs["alpha"], inputs["bw"], batch,
                                 inputs.get("kappa", 1.0) if p > 1 else 1.0)
    if mode == "async":
        return emulated_async_ips(inputs["t1a"], p, n, inputs["alpha"], inputs["bw"], batch, 1.0, inputs["t1s"])
    raise ModelError(f"unknown mode {mode!r}; choose sync or async")


def emulated_speedups(inputs: dict, n: float, batch: int, mode: str, gpus=PROJECTION_GPUS) -> list[float]:
    base = emulated_predict(mode, 1, inputs, batch, n)
    return [emulated_predict(mode, int(p), inputs, batch, n) / base for p in gpus]


def emulated_band(inputs: dict, n: float, batch: int, mode: str, gpus=PROJECTION_GPUS,
                  ranges: dict[str, tuple[str, float, float]] = EMULATED_RANGES) -> tuple[list[float], list[float]]:
    """(low, high) speedups over one-at-a-time variations of the link's inputs (alpha, B, kappa)."""
    curves = [emulated_speedups(inputs, n, batch, mode, gpus)]
    for name, (_, lo, hi) in ranges.items():
        for v in (lo, hi):
            curves.append(emulated_speedups({**inputs, name: inputs.get(name, 1.0) * v}, n, batch, mode, gpus))
    return [min(c[i] for c in curves) for i in range(len(gpus))], [max(c[i] for c in curves) for i in range(len(gpus))]
