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

import functools
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
# Horovod's Compression hook (none, fp16) runs per gradient while backward still runs, so its exchange can hide
# behind backward; train/compression.py's stateful methods (powersgd, topk, sign) exchange after backward.
HOOK_COMPRESSIONS = ("none", "fp16")


@dataclass(frozen=True)
class CompressionCost:
    """What one compression method costs a step (issue 15): measured in a study's sync records with >= 2
    workers (compare/calibration.py: compression_costs), or known (none, fp16).

    ratio: fp32 gradient bytes / bytes a worker hands Horovod (record `compression_ratio`);
    compress_s_per_B: compress + decompress seconds a step per fp32 gradient byte (record
        `compress_time_s_per_step` / 4 x `trainable_params`);
    gather: the exchange is an allgather (a worker receives p times what it sends: record
        `bytes_received_per_step` / `bytes_sent_per_step` = p), so its bytes grow with p;
    overlapped: it runs in Horovod's hook during backward (HOOK_COMPRESSIONS), else after backward.
    """
    method: str
    ratio: float = 1.0
    compress_s_per_B: float = 0.0
    gather: bool = False
    overlapped: bool = True
    source: str = ""

    def wire_bytes(self, grad_bytes_fp32: float, p: int = 2) -> float:
        """n of the ring allreduce equal to one exchange: n / ratio; an allgather of m bytes a worker moves
        (p-1) m through each link, as a ring allreduce of p m / 2 does (the same at p = 2)."""
        m = grad_bytes_fp32 / self.ratio
        return m * p / 2 if self.gather and p > 2 else m

    def compress_s(self, grad_bytes_fp32: float) -> float:
        return self.compress_s_per_B * grad_bytes_fp32


KNOWN_COMPRESSIONS = {"none": CompressionCost("none", source="fp32 gradients"),
                      "fp16": CompressionCost("fp16", 2.0, source="fp16 halves every gradient (Horovod's hook)")}


def compression_cost(compression: "str | CompressionCost", measured: dict | None = None) -> CompressionCost:
    """The cost of a compression: measured (a study's records) first, then the known ones; ModelError else."""
    if isinstance(compression, CompressionCost):
        return compression
    costs = {**KNOWN_COMPRESSIONS, **(measured or {})}
    if compression not in costs:
        raise ModelError(f"unknown compression {compression!r} (no measured cost: no sync record of it with "
                         "2+ workers)")
    return costs[compression]


def wire_bytes(grad_bytes_fp32: float, compression: "str | CompressionCost" = "none", p: int = 2) -> float:
    """Bytes on the wire per gradient exchange (fp16 halves n; measured methods by their ratio)."""
    return compression_cost(compression).wire_bytes(grad_bytes_fp32, p)


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
    updates_per_sec: float | None = None  # async all-reduce: set by the all-reduce period


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
    # async all-reduce (local): by head, the measured 1-worker sub-batch time (compute + its comm thread)
    async_allreduce_sub: dict[str, float] = field(default_factory=dict)
    compressions: dict[str, CompressionCost] = field(default_factory=dict)  # measured (issue 15)
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
        c = compression_cost(compression, self.compressions)
        n = c.wire_bytes(w.grad_bytes, p)
        t_c = w.t_compute * self.contention(p)
        t_comm = allreduce_time(n, p, self.per_node, self.alpha_intra, self.bw_intra,
                                self.alpha_inter, self.bw_node)
        extra = c.compress_s(w.grad_bytes) if p > 1 else 0.0  # nothing is compressed with nobody to send to
        overlap = self.overlap if c.overlapped else 0.0  # after-backward exchanges hide nothing
        step = sync_step_time(t_c, t_comm, overlap) + extra
        exposed = t_comm - min(t_comm, overlap * BACKWARD_FRACTION * t_c) + extra
        bound = "comm" if exposed > 0.1 * t_c else "compute"
        return Prediction(p * w.batch / step, step, t_comm + extra, bound)

    def async_(self, head: str, p: int, shards: int = 1, compression: str = "none") -> Prediction:
        _check_p(p)
        w = self.workload(head)
        n = compression_cost(compression, self.compressions).wire_bytes(w.grad_bytes)
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

    def async_allreduce(self, head: str, p: int, compression: str = "none") -> Prediction:
        """The seed's arm: images/sec set by compute alone (each rank never waits), updates/sec by the
        all-reduce period max(t_allreduce, one sub-batch): the trainer accumulates without bound."""
        _check_p(p)
        w = self.workload(head)
        c = compression_cost(compression, self.compressions)
        t_sub = self.async_allreduce_sub.get(head, w.t_compute) * self.contention(p)
        t_ar = allreduce_time(c.wire_bytes(w.grad_bytes, p), p, self.per_node, self.alpha_intra, self.bw_intra,
                              self.alpha_inter, self.bw_node) + (c.compress_s(w.grad_bytes) if p > 1 else 0.0)
        ips, ups, _ = async_allreduce_rate(p, w.batch, t_sub, t_ar, math.inf)
        return Prediction(ips, 1.0 / ups, t_ar, "compute" if t_ar <= t_sub else "compute (comm sets the update rate)",
                          updates_per_sec=ups)

    def predict(self, mode: str, head: str, p: int, shards: int = 1, compression: str = "none") -> Prediction:
        if mode == "sync":
            return self.sync(head, p, compression)
        if mode == "async":
            return self.async_(head, p, shards, compression)
        if mode == "async_allreduce":
            return self.async_allreduce(head, p, compression)
        raise ModelError(f"unknown mode {mode!r}; choose sync, async or async_allreduce")

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
                  assumptions: list[str] | None = None, async_allreduce_sub: dict[str, float] | None = None,
                  compressions: dict[str, CompressionCost] | None = None) -> Profile:
    """The measured profile of this machine: one pinned core per worker, nodes of `cores` cores.

    alpha/bw from the allreduce microbenchmark are used within and between nodes (a cluster of
    machines like this one joined as fast as its own shared memory: a stated assumption).
    """
    d = (data or load_profile_data())["local"]
    return Profile(name="local", description=d["description"], per_node=cores,
                   alpha_intra=alpha, bw_intra=bw, alpha_inter=alpha, bw_node=bw,
                   overlap=d["overlap"], bw_ps=0.0, workloads=workloads, sources=d["sources"],
                   kappa=dict(kappa), async_update=dict(async_update), cores=cores,
                   assumptions=list(assumptions or []), async_allreduce_sub=dict(async_allreduce_sub or {}),
                   compressions=dict(compressions or {}))


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
                                   async_update={h: t * factor for h, t in profile.async_update.items()},
                                   async_allreduce_sub={h: t * factor for h, t in profile.async_allreduce_sub.items()})
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


def emulated_sync_ips(t1s: float, p: int, n: float, alpha: float, bw: float, batch: int, kappa: float = 1.0,
                      extra_s: float = 0.0) -> float:
    """extra_s: what else a step spends outside compute and the ring (compress + decompress)."""
    return p * batch / (kappa * t1s + ring_time(n, p, alpha, bw) + extra_s)


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


def emulated_predict(mode: str, p: int, inputs: dict, batch: int, n: float,
                     compression: "CompressionCost | None" = None) -> float:
    """Images/sec at p workers on p nodes from one link's measured inputs. compression (sync arm, issue 15):
    the exchange moves compression.wire_bytes(n, p) and each step adds its compress time (at p > 1)."""
    if mode == "sync":
        c = compression or KNOWN_COMPRESSIONS["none"]
        extra = c.compress_s(n) if p > 1 else 0.0
        return emulated_sync_ips(inputs["t1s"], p, c.wire_bytes(n, p), inputs["alpha"], inputs["bw"], batch,
                                 inputs.get("kappa", 1.0) if p > 1 else 1.0, extra)
    if compression is not None and compression.method != "none":
        raise ModelError(f"the {mode} arm runs uncompressed gradients only")
    if mode == "async":
        if not inputs.get("t1a"):
            return float("nan")  # no 1-node run of the arm at this link: no prediction
        return emulated_async_ips(inputs["t1a"], p, n, inputs["alpha"], inputs["bw"], batch, 1.0, inputs["t1s"])
    if mode == "async_allreduce":  # compute never waits while the ring keeps up; the nodes contend as sync's do
        if not inputs.get("t1r"):
            return float("nan")  # no 1-node run of the arm at this link: no prediction
        t_sub = inputs["t1r"] * (inputs.get("kappa", 1.0) if p > 1 else 1.0)
        return async_allreduce_rate(p, batch, t_sub, ring_time(n, p, inputs["alpha"], inputs["bw"]), math.inf)[0]
    raise ModelError(f"unknown mode {mode!r}; choose sync, async or async_allreduce")


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


# ================================================================== issue 12: measured terms
# Pure functions, each with a hand-computed test in tests/test_scaling.py. They sit beside the
# older what-if model above (whose names and signatures stay as they are) and are combined by
# `step_terms` / `cluster_terms` below, by compare/validate.py (published K80 set) and by
# `seed_table` / `projection_band` (tsubame2.5, issue 12 items 4 and 5).


def exposed_comm(t_comm: float, t_backward: float, ready_curve: list[tuple[float, float]]) -> float:
    """Communication left after backward ends, given when each gradient byte becomes ready.

    ready_curve: cumulative (fraction of backward elapsed, fraction of gradient bytes ready) points.
    The link sends bytes in the order they become ready at n/t_comm; a bucket cannot start before it
    is ready (at x * t_backward). What is still being sent when backward ends is exposed.
    """
    if t_comm <= 0:
        return 0.0
    if not ready_curve:
        return t_comm
    pts = sorted((float(x), float(y)) for x, y in ready_curve)
    total = max(y for _, y in pts)
    if total <= 0:
        raise ModelError("ready curve has no bytes")
    link_free, done = 0.0, 0.0
    for x, y in pts:
        share = max(y / total - done, 0.0)
        if share <= 0:
            continue
        link_free = max(link_free, min(max(x, 0.0), 1.0) * t_backward) + share * t_comm
        done += share
    return max(link_free - t_backward, 0.0)


def fused_messages(grad_bytes: float, fusion_threshold: float) -> int:
    """Horovod packs ready tensors into fusion buffers of at most `fusion_threshold` bytes (default
    64 MiB): at least ceil(n / threshold) messages a step; threshold 0 = one message per tensor is
    not modelled here (pass the tensor count to fused_latency instead)."""
    if fusion_threshold <= 0:
        raise ModelError("fusion threshold must be > 0")
    return max(1, math.ceil(grad_bytes / fusion_threshold))


def fused_latency(messages: int, p: int, per_node: int, alpha_intra: float, alpha_inter: float,
                  cycle_time: float = 0.0) -> float:
    """Latency part of a step's allreduces: each fused message pays the hierarchical ring's 2(q-1)
    alphas (within the node and across nodes), and the last message waits on average half a
    Horovod cycle (HOROVOD_CYCLE_TIME) before it is negotiated."""
    _check_p(p)
    if p == 1:
        return 0.0
    local, nodes = min(p, per_node), math.ceil(p / per_node)
    per_msg = 2 * (local - 1) * alpha_intra + 2 * (nodes - 1) * alpha_inter
    return messages * per_msg + 0.5 * cycle_time


def allreduce_bw_time(n: float, p: int, per_node: int, bw_intra: float, bw_node: float) -> float:
    """Bandwidth part of the hierarchical allreduce (allreduce_time without alphas)."""
    return allreduce_time(n, p, per_node, 0.0, bw_intra, 0.0, bw_node)


def expected_max(samples: list[float], p: int) -> float:
    """E[max of p independent draws] from the empirical distribution of `samples`:
    sum_i x_(i) * ((i/m)^p - ((i-1)/m)^p) over the sorted samples (F(x)^p is the CDF of the max)."""
    _check_p(p)
    xs = sorted(float(x) for x in samples)
    if not xs:
        raise ModelError("need at least one step-time sample")
    m = len(xs)
    return sum(x * ((i / m) ** p - ((i - 1) / m) ** p) for i, x in enumerate(xs, start=1))


def straggler_time(samples: list[float], p: int) -> float:
    """What a synchronous step loses to its slowest worker: E[max of p] - mean (0 at p = 1)."""
    return expected_max(samples, p) - sum(samples) / len(samples)


@functools.lru_cache(maxsize=None)
def normal_max_factor(p: int) -> float:
    """E[max of p standard normal draws] (0 for p = 1): the straggler term when only a coefficient of
    variation is known (published sets); Simpson's rule on p x phi(x) Phi(x)^(p-1)."""
    _check_p(p)
    if p == 1:
        return 0.0
    lo, hi, n = -9.0, 9.0, 3600
    h, s = (hi - lo) / n, 0.0
    for i in range(n + 1):
        x = lo + i * h
        f = x * p * (0.5 * (1 + math.erf(x / math.sqrt(2)))) ** (p - 1) * math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        s += f * (1 if i in (0, n) else 4 if i % 2 else 2)
    return s * h / 3


def effective_bandwidth(link_Bps: float, cpu_Bps: float | None = None) -> float:
    """What the allreduce gets: the link, unless the CPU that moves the bytes (host staging, a
    pinned rank computing at the same time) is slower."""
    return min(link_Bps, cpu_Bps) if cpu_Bps else link_Bps


# ------------------------------------------------------------------ parameter servers (issue 12)
def ps_async_rate(p: int, t_compute: float, n: float, shards: int, bw_ps: float, bw_worker: float,
                  service_s: float = 0.0, chief_rate: float = math.inf) -> float:
    """Updates per second of p async workers with S full-duplex PS shards.

    worker: t_compute + n / bw_worker (push n and pull n at once on a full-duplex link);
    shards: each update moves n/S in and n/S out of every shard at once and costs service_s/S of
    its CPU, so all shards together take S / max(n / bw_ps, service_s) updates a second;
    chief: it dispatches every step, at most chief_rate a second.
    """
    _check_p(p)
    if shards < 1:
        raise ModelError(f"PS shards must be >= 1, got {shards}")
    workers = p / (t_compute + n / bw_worker)
    per_update = max(n / bw_ps, service_s)
    ps = shards / per_update if per_update > 0 else math.inf
    return min(workers, ps, chief_rate)


def sync_ps_nic_bytes(n: float, nodes: int, shards: int) -> float:
    """Bytes each way through the busiest NIC in one synchronous PS step (tf_cnn_benchmarks
    distributed_replicated: every node a worker, `shards` of the nodes also PS, full duplex).

    A shard host takes n/S from each of the N-1 other workers and sends them n/S back, and its own
    worker pushes/pulls (S-1)/S n to/from the other shards: (N+S-2)/S * n each way (S = N: the ring's
    2(N-1)/N n). One node: nothing crosses a NIC.
    """
    if nodes < 1 or shards < 1:
        raise ModelError("nodes and shards must be >= 1")
    if nodes == 1:
        return 0.0
    shards = min(shards, nodes)
    return max((nodes + shards - 2) / shards * n, n)


def async_allreduce_rate(p: int, batch: int, t_compute: float, t_allreduce: float,
                         max_accumulate: float = 1) -> tuple[float, float, float]:
    """The seed's own arm (SPRINT: MPI all-reduce run asynchronously, sub-batches accumulate while an
    all-reduce is in flight). Returns (images/s, updates/s, images per update).

    Compute never waits while the all-reduce keeps up, i.e. while one all-reduce takes at most
    max_accumulate sub-batches; beyond that a worker stalls and the all-reduce period sets the pace.
    """
    _check_p(p)
    if max_accumulate < 1:
        raise ModelError("max_accumulate must be >= 1")
    if p == 1 or t_allreduce <= 0:
        return p * batch / t_compute, 1.0 / t_compute, float(p * batch)
    period = max(t_allreduce, t_compute)  # an update needs at least one fresh sub-batch
    per_step = max(t_compute, t_allreduce / max_accumulate)
    ips = p * batch / per_step
    return ips, 1.0 / period, ips * period


# ------------------------------------------------------------------ one synchronous step, term by term
@dataclass(frozen=True)
class StepTerms:
    """Seconds of one synchronous step by term (step_s = compute + straggler + overhead + exposed)."""
    compute_s: float
    straggler_s: float
    overhead_s: float
    comm_s: float          # bandwidth part + fused-message latency, if nothing were hidden
    exposed_s: float       # what of comm_s backward could not hide
    step_s: float

    @property
    def efficiency(self) -> float:
        return self.compute_s / self.step_s


def step_terms(t_compute: float, p: int, *, comm_s: float, backward_fraction: float = BACKWARD_FRACTION,
               ready_curve: list[tuple[float, float]] | None = None, hidden_fraction: float | None = None,
               overhead_s: float = 0.0, straggler_s: float = 0.0) -> StepTerms:
    """Combine the terms: exposed comm from the gradient-ready curve when one is given, else a hidden
    fraction (fitted on a published set), else nothing hidden. The fixed overhead (measured at p = 2)
    and the straggler term apply from p = 2 on."""
    _check_p(p)
    if p == 1:
        return StepTerms(t_compute, 0.0, 0.0, 0.0, 0.0, t_compute)
    if ready_curve:
        exposed = exposed_comm(comm_s, backward_fraction * t_compute, ready_curve)
    elif hidden_fraction is not None:
        exposed = (1.0 - hidden_fraction) * comm_s
    else:
        exposed = comm_s
    step = t_compute + straggler_s + overhead_s + exposed
    return StepTerms(t_compute, straggler_s, overhead_s, comm_s, exposed, step)


# ------------------------------------------------------------------ published sets (compare validate)
VALIDATION_GLOBALS = ("overhead_s", "hidden_fraction", "step_cv")


def published_components(point: dict, base_ips: float, params: float, bw_node: float) -> tuple[float, float, float]:
    """(t_compute, NIC seconds, E[max of p standard normals]) of one published point: what the
    globals multiply. compare/validate.py's vectorised fit uses these; published_efficiency combines them."""
    p, b = int(point["gpus"]), int(point["batch_per_gpu"])
    t_c = b / base_ips
    nodes = math.ceil(p / int(point["gpus_per_node"]))
    shards = int(point.get("ps_shards") or nodes)
    comm = sync_ps_nic_bytes(4.0 * params, nodes, shards) / bw_node if nodes > 1 else 0.0
    return t_c, comm, normal_max_factor(p)


def published_efficiency(point: dict, base_ips: float, params: float, bw_node: float, g: dict) -> float:
    """Predicted efficiency of one published point (tf_cnn_benchmarks, synchronous): compute from the
    table's own 1-GPU rate; the busiest NIC's PS bytes (sync_ps_nic_bytes) at the network's rate,
    of which g["hidden_fraction"] is hidden; g["overhead_s"] a step from 2 GPUs on; a straggler term
    g["step_cv"] x t_compute x E[max of p standard normals]."""
    t_c, comm, nmf = published_components(point, base_ips, params, bw_node)
    terms = step_terms(t_c, int(point["gpus"]), comm_s=comm, hidden_fraction=g["hidden_fraction"],
                       overhead_s=g["overhead_s"], straggler_s=g["step_cv"] * t_c * nmf)
    return terms.efficiency


# ------------------------------------------------------------------ tsubame2.5 from sources (issue 12, items 4-5)
ARMS = ("sync_allreduce", "async_allreduce", "sync_ps", "async_ps")


def vgg_a_macs(image: int = 224, classes: int = 1000) -> float:
    """Multiply-accumulates per image of VGG-A's forward pass (Simonyan & Zisserman 2014, Table 1,
    configuration A: conv3 64, M, 128, M, 256 x2, M, 512 x2, M, 512 x2, M, FC 4096, 4096, classes)."""
    cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
    side, c_in, macs = image, 3, 0.0
    for v in cfg:
        if v == "M":
            side //= 2
            continue
        macs += side * side * c_in * v * 9
        c_in = v
    dims = [side * side * c_in, 4096, 4096, classes]
    return macs + sum(a * b for a, b in zip(dims, dims[1:]))


def measured_terms(name: str = "tsubame2.5", data: dict | None = None) -> dict:
    d = (data or load_profile_data()).get("measured_terms", {})
    if name not in d:
        raise ModelError(f"profiles.json has no measured_terms for {name!r}")
    return d[name]


def input_values(terms: dict, **override: float) -> dict[str, float]:
    """{input: value} from a measured_terms block, with overrides (the band varies one at a time)."""
    v = {k: spec["value"] for k, spec in terms["inputs"].items()}
    for k, x in override.items():
        if k not in v:
            raise ModelError(f"unknown input {k!r}")
        v[k] = x
    return v


def k20x_gflops(terms: dict, v: dict[str, float]) -> float:
    """K20X training GFLOP/s from the Kepler anchor (same GK110 SMX, cuDNN R2): the anchor's
    achieved rate scaled by cores x clock, times the ECC factor."""
    a = terms["kepler_anchor"]
    achieved = a["batch"] * 6.0 * vgg_a_macs() / 1e9 / a["step_s"]
    scale = (a["k20x_cores"] * a["k20x_clock_ghz"]) / (a["titan_black_cores"] * v["titan_black_clock_ghz"])
    return achieved * scale * v["ecc_factor"]


def compute_s(terms: dict, v: dict[str, float], head: str, batch: int, paper: dict) -> float:
    """One GPU's step time at `batch`: from the Kepler anchor (tsubame2.5) or a measured step of the
    device itself scaled linearly with batch (h200), times compute_scale when given."""
    if "kepler_anchor" in terms:
        return batch * paper[head]["train_gflop_per_img"] / k20x_gflops(terms, v)
    a = terms["compute_anchor"]
    return a[head]["step_s"] * batch / a["batch"] * v.get("compute_scale", 1.0)


def project(head: str, batch: int, arm: str, p: int, shards: int = 1, name: str = "tsubame2.5",
            data: dict | None = None, values: dict[str, float] | None = None,
            compression: CompressionCost | None = None) -> dict:
    """Images/s and speedup over one GPU of one arm at p GPUs, with its terms and what bounds it.

    arms: sync_allreduce (Horovod ring, exposed comm from the ready curve, fused latency),
    async_allreduce (the seed's SPRINT scheme), sync_ps (tf_cnn_benchmarks distributed_replicated,
    S shards on the nodes, K80-fitted hidden share), async_ps (S full-duplex shards, PS service time,
    chief cap). bound: compute | interconnect | ps | chief.
    compression (issue 15, the all-reduce arms): the exchange moves compression.wire_bytes(n, p); its compress
    time (measured per fp32 byte on this study's CPU workers, times values["compress_scale"], default 1) is paid
    every step; a method exchanging after backward (not Horovod's hook) hides nothing behind backward.
    """
    _check_p(p)
    if arm not in ARMS:
        raise ModelError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    data = data or load_profile_data()
    terms = measured_terms(name, data)
    v = values or input_values(terms)
    prof, paper = data[name], data["paper_workload"]
    if head not in paper:
        raise ModelError(f"unknown head {head!r}")
    per_node = prof["devices_per_node"]
    t_c = compute_s(terms, v, head, batch, paper)
    n = 4.0 * paper[head]["params"]      # fp32 gradients (bf16 autocast keeps fp32 gradients)
    bw_node = effective_bandwidth(v["bw_node_Bps"], v.get("cpu_Bps"))
    bw_intra = effective_bandwidth(v["bw_intra_Bps"], v.get("cpu_Bps"))
    bw_ps = effective_bandwidth(v.get("ps_bw_Bps", v["bw_node_Bps"]), v.get("cpu_Bps"))
    one = batch / t_c
    nodes = math.ceil(p / per_node)
    out = {"head": head, "batch": batch, "arm": arm, "p": p, "shards": shards if arm.endswith("ps") else None,
           "t_compute_s": t_c, "one_gpu_ips": one}
    if arm in ("sync_allreduce", "async_allreduce"):
        c = compression or KNOWN_COMPRESSIONS["none"]
        n_wire = c.wire_bytes(n, p)
        compress = c.compress_s(n) * v.get("compress_scale", 1.0) if p > 1 else 0.0
        msgs = fused_messages(n_wire, v["fusion_threshold_B"])
        t_ar = allreduce_bw_time(n_wire, p, per_node, bw_intra, bw_node) + fused_latency(
            msgs, p, per_node, v["alpha_intra_s"], v["alpha_inter_s"], v["cycle_time_s"])
        out.update(compression=c.method, wire_bytes=n_wire, compress_s=compress)
        if arm == "sync_allreduce":
            curve = terms["ready_curves"][head]["ready_curve"] if c.overlapped else None
            st = step_terms(t_c, p, comm_s=t_ar, backward_fraction=v["backward_fraction"], ready_curve=curve,
                            overhead_s=v["overhead_s"] + compress,
                            straggler_s=v["step_cv"] * t_c * normal_max_factor(p))
            ips = p * batch / st.step_s
            bound = "interconnect" if st.exposed_s + compress > 0.1 * st.step_s else "compute"
            out.update(comm_s=t_ar, exposed_s=st.exposed_s, step_s=st.step_s)
        else:
            t_ar += compress  # the communication thread compresses too
            ips, upd, per_update = async_allreduce_rate(p, batch, t_c, t_ar, int(v["max_accumulate"]))
            bound = "interconnect" if t_ar / int(v["max_accumulate"]) > t_c else "compute"
            out.update(comm_s=t_ar, updates_per_s=upd, images_per_update=per_update)
    elif arm == "sync_ps":
        comm = sync_ps_nic_bytes(n, nodes, shards) / bw_node if nodes > 1 else 0.0
        if nodes == 1 and p > 1:  # one node: the PS lives on the host; each GPU pushes and pulls n over PCIe
            comm = 2 * n / bw_intra
        st = step_terms(t_c, p, comm_s=comm, hidden_fraction=v["hidden_fraction"], overhead_s=v["overhead_s"],
                        straggler_s=v["step_cv"] * t_c * normal_max_factor(p))
        ips = p * batch / st.step_s
        bound = "interconnect" if st.exposed_s > 0.1 * st.step_s else "compute"
        out.update(comm_s=comm, exposed_s=st.exposed_s, step_s=st.step_s)
    else:
        # a worker's push n and pull n share its node's NIC with the node's other GPUs (full duplex)
        bw_worker = bw_node / min(p, per_node)
        rate = ps_async_rate(p, t_c, n, shards, bw_ps, bw_worker, v["ps_service_s_per_B"] * n, v["chief_rate"])
        ips = rate * batch
        worker_cap = p / (t_c + n / bw_worker)
        ps_cap = shards / max(n / bw_ps, v["ps_service_s_per_B"] * n)
        if rate >= worker_cap - 1e-12:
            bound = "interconnect" if n / bw_worker > 0.1 * t_c else "compute"
        elif rate >= ps_cap - 1e-12:
            bound = "ps"
        else:
            bound = "chief"
        out.update(comm_s=n / bw_worker, updates_per_s=rate)
    out.update(images_per_sec=ips, speedup=ips / one, bound=bound)
    return out


def seed_table(data: dict | None = None, p: int = 48, target: float = 30.0, heads: tuple[str, ...] = ("gap", "fc4096"),
               batches: tuple[int, ...] = (4, 8, 16, 32, 64), ps_shards: tuple[int, ...] = (1, 4, 16)) -> tuple[list[dict], str]:
    """What the seed's '>30x at 48 GPUs' implies: for each (head, batch per GPU, arm, PS shards) the
    tsubame2.5 speedup at p GPUs, whether it reaches `target`, and what bounds it. Rows + markdown."""
    data = data or load_profile_data()
    rows = []
    for head in heads:
        for b in batches:
            for arm in ARMS:
                for s in (ps_shards if arm.endswith("ps") else (1,)):
                    r = project(head, b, arm, p, shards=s, data=data)
                    r["reaches_target"] = r["speedup"] >= target
                    rows.append(r)
    lines = [f"| head | batch/GPU | arm | PS shards | speedup at {p} | >= {target:g}x | bound |",
             "|---|---:|---|---:|---:|:---:|---|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['batch']} | {r['arm']} | {r['shards'] or '-'} | {r['speedup']:.1f}x | "
                     f"{'yes' if r['reaches_target'] else 'no'} | {r['bound']} |")
    lines.append("")
    for key in dict.fromkeys((r["head"], r["arm"], r["shards"]) for r in rows):
        rs = [r for r in rows if (r["head"], r["arm"], r["shards"]) == key]
        ok = [r["batch"] for r in rs if r["reaches_target"]]
        net = [r["batch"] for r in rs if r["bound"] != "compute"]
        lines.append(f"- {key[0]}, {key[1]}" + (f", {key[2]} PS shards" if key[2] else "") + ": "
                     + (f">= {target:g}x from batch {min(ok)} per GPU" if ok else f"never >= {target:g}x")
                     + (f"; interconnect/PS-bound at batch {', '.join(map(str, net))}" if net else "; compute-bound"))
    return rows, "\n".join(lines)


def inputs_markdown(name: str = "tsubame2.5", data: dict | None = None) -> str:
    """Every input of the projection with its value and its source or 'assumption', and the range the
    band varies it over: to print under the projection and seed tables."""
    terms = measured_terms(name, data)
    lines = ["| input | value | band range | source |", "|---|---:|---|---|"]
    for k, spec in terms["inputs"].items():
        lo, hi = spec["range"]
        lines.append(f"| {k} | {spec['value']:g} | {lo:g} - {hi:g} | {spec['source']} |")
    for block in ("kepler_anchor", "compute_anchor", "ready_curves"):
        if block in terms:
            lines.append(f"\n{block}: {terms[block]['source']}")
    if name == "tsubame2.5":
        lines.append("\nThe seed's own system (SPRINT, Denso IT Lab + Tokyo Tech) is described in issue 12 as summing "
                     "gradients with MPI all-reduce asynchronously (sub-batches accumulate while an all-reduce runs), "
                     "not through a parameter server; modelled as the async_allreduce arm. Not checked against a "
                     "primary source here.")
    return "\n".join(lines)


def projection_rows(name: str, head: str, batch: int, arm: str, shards: int = 1,
                    gpus: tuple[int, ...] = PROJECTION_GPUS, data: dict | None = None,
                    compression: CompressionCost | None = None) -> list[dict]:
    """Speedup with its band at each GPU count (for the report's projection table and figure)."""
    data = data or load_profile_data()
    out = []
    for p in gpus:
        b = projection_band(head, batch, arm, p, shards, name, data, compression)
        out.append({"profile": name, "head": head, "batch": batch, "arm": arm, "shards": shards, "p": p,
                    "compression": compression.method if compression else "none",
                    "speedup": b["value"], "low": b["low"], "high": b["high"], "most": b["most"]})
    return out


# The compress time measured on this study's CPU workers, carried to a GPU per fp32 gradient byte: an
# assumption, varied in the band from a GPU 10x faster at it to one as slow as the CPU core.
COMPRESS_SCALE_RANGE = (0.1, 1.0)


def projection_band(head: str, batch: int, arm: str, p: int = 48, shards: int = 1, name: str = "tsubame2.5",
                    data: dict | None = None, compression: CompressionCost | None = None) -> dict:
    """Speedup at p with a band: each assumed input varied alone over its stated range (endpoints and
    midpoint), the others at their values. Returns value, low, high, per-input (low, high) and the
    input that moves the figure most (None when none moves it)."""
    data = data or load_profile_data()
    terms = measured_terms(name, data)
    base = project(head, batch, arm, p, shards, name, data, compression=compression)["speedup"]
    by_input = {}
    variations = [(k, spec["range"]) for k, spec in terms["inputs"].items()]
    if compression is not None and compression.compress_s_per_B > 0:
        variations.append(("compress_scale", COMPRESS_SCALE_RANGE))
    for k, (lo, hi) in variations:
        got = []
        for x in (lo, (lo + hi) / 2, hi):
            v = {**input_values(terms), k: x}
            got.append(project(head, batch, arm, p, shards, name, data, v, compression)["speedup"])
        by_input[k] = (min(got + [base]), max(got + [base]))
    most = max(by_input, key=lambda k: by_input[k][1] - by_input[k][0])
    if by_input[most][1] - by_input[most][0] <= 1e-9 * max(abs(base), 1.0):
        most = None                       # no input moves it (e.g. compute-bound async all-reduce)
    return {"value": base, "low": min(lo for lo, _ in by_input.values()),
            "high": max(hi for _, hi in by_input.values()), "by_input": by_input, "most": most}
