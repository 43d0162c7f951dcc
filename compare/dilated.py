"""Backend `dilated` (issue 14): a time-dilated emulation of a GPU cluster on this machine. No TensorFlow.

The emulated cluster is a compare/scaling.py profile (tsubame2.5, h200). N SLURM nodes in network namespaces
(slurm/localcluster, reused through compare/emulated.py), ranks_per_node ranks a node, every node's link shaped
to B/(K·D): B the profile's inter-node bandwidth as the model uses it (scaling.effective_bandwidth), D the time
dilation, K the byte dilation. Each rank runs train/dilated_step.py under `srun --mpi=pmix` (Horovod over MPI):
the real allreduce of cnn11's gradient tensors (each 1/K of its size), compute replaced by D x t_compute of
sleeps placed along the profile's gradient-ready curve. Elapsed / D = the emulated cluster's time.

Stages: one per dilation: D with every p of the study, then 2D at the largest p (the fidelity check: if the host
and not the emulated cluster set the pace, doubling D changes the emulated rate). Each stage first runs the link
bench (train/bench_link.py) at its dilated rate. After the study, `fidelity()` checks
  1. |ips(2D) / ips(D) - 1| < max_d_change at the largest p,
  2. the link bench reached >= min_link_fraction of every shaped rate,
  3. host load was logged (load.jsonl) during the study,
writes fidelity.json, and the study fails (exit 1, one line) when any check fails; the report then compares
nothing against the model. Pure helpers (t_compute, tensor counts, ready offsets) are used by the rank program.
"""
from __future__ import annotations

import glob
import json
import math
import os
import socket

from compare import scaling
from compare.emulated import EmulatedBackend
from compare.local import Stage
from compare.plan import Run, StudyConfig
from train.model import STAGES, _dense_shapes, conv_channels

PROFILES = ("tsubame2.5", "h200")
IMAGE_SIZE, CLASSES, WIDTH = 224, 1000, 1.0   # the emulated workload: the seed's cnn11 on ImageNet
ARM = "sync_allreduce"


class DilationError(ValueError):
    """Bad dilated-study input: one line, exit 2."""


# ------------------------------------------------------------------ the emulated step (pure)
def grad_counts(head: str, image_size: int = IMAGE_SIZE, classes: int = CLASSES, width: float = WIDTH) -> list[int]:
    """Element counts of cnn11's trainable tensors in Keras order (conv kernel, BN gamma, BN beta per conv;
    dense kernels and biases): the model's real gradient tensors (a test checks them against the Keras model)."""
    out, c_in = [], 3
    for stage in conv_channels(width):
        for c in stage:
            out += [9 * c_in * c, c, c]
            c_in = c
    for a, b in _dense_shapes(image_size, classes, head, width):
        out += [a * b, b]
    return out


assert len(STAGES) == 5  # grad_counts follows train/model.py's layer order


def dilated_counts(counts: list[int], k: int) -> list[int]:
    """Byte dilation: every tensor kept (the count of tensors and of fusion buffers stays), its size / K."""
    return [max(1, round(c / k)) for c in counts]


def ready_offsets(backward_counts: list[int], curve: list[list[float]]) -> list[float]:
    """For tensors in backward order: the fraction of the backward pass at which each is ready, read off the
    profile's cumulative (fraction of backward, share of gradient bytes ready) curve at the tensor's own
    cumulative byte share (first curve point reaching it)."""
    pts = sorted((float(x), float(y)) for x, y in curve)
    total = max(y for _, y in pts) or 1.0
    n, done, out = sum(backward_counts), 0, []
    for c in backward_counts:
        done += c
        # the curve point that completes this tensor (half its own share of slack for rounding): the first
        # layer's gradient, the last computed, is ready only at the end of backward
        share = done / n - 0.5 * c / n
        x = next((px for px, py in pts if py / total >= share), pts[-1][0])
        out.append(min(max(x, 0.0), 1.0))
    # a tensor is never ready before the one computed before it
    for i in range(1, len(out)):
        out[i] = max(out[i], out[i - 1])
    # the first layer's gradient is backward's last result: ready when backward ends. The curve's byte shares
    # are rounded (4 decimals), so for the fc4096 head it reads 1.0 from 0.908 of backward on and the last
    # tensors sat there, leaving 9% of backward with nothing to wait for: a slower rank then delayed no step
    if out:
        out[-1] = 1.0
    return out


def paper_workload(head: str) -> dict:
    return scaling.load_profile_data()["paper_workload"][head]


def step_plan(profile: str, head: str, batch: int) -> dict:
    """What a dilated step needs from the model's profile, each with its source (one source: compare/scaling.py)."""
    if profile not in PROFILES:
        raise DilationError(f"unknown profile {profile!r}; choose {', '.join(PROFILES)}")
    data = scaling.load_profile_data()
    terms = scaling.measured_terms(profile, data)
    v = scaling.input_values(terms)
    curves = terms["ready_curves"][head]
    return {"t_compute_s": scaling.compute_s(terms, v, head, batch, data["paper_workload"]),
            "t_compute_source": terms.get("kepler_anchor", terms.get("compute_anchor", {})).get("source", ""),
            "backward_fraction": v["backward_fraction"], "ready_curve": curves["ready_curve"],
            "ready_curve_source": terms["ready_curves"]["source"], "fusion_threshold_B": v["fusion_threshold_B"],
            "cycle_time_s": v["cycle_time_s"], "step_cv": v.get("step_cv", 0.0), "link_Bps": link_Bps(profile)}


def link_Bps(profile: str) -> float:
    """The inter-node bandwidth the model's sync arm uses for this profile (link, capped by host staging)."""
    v = scaling.input_values(scaling.measured_terms(profile))
    return scaling.effective_bandwidth(v["bw_node_Bps"], v.get("cpu_Bps"))


def dilated_rate(profile: str, k: int, d: float) -> str:
    """The tc rate of every node's link: B / (K·D), in whole kbit/s."""
    kbit = int(link_Bps(profile) * 8 / (k * d) / 1e3)
    if kbit < 8:
        raise DilationError(f"B/(K·D) = {kbit} kbit/s for {profile} at K={k}, D={d:g}: too slow to shape; lower K or D")
    return f"{kbit}kbit"


def rate_Bps(rate: str | None) -> float | None:
    """bytes/s of a tc rate string (None when there is none, e.g. a run outside the namespace cluster)."""
    if not rate:
        return None
    bps = scaling.rate_bps(rate)
    return None if math.isnan(bps) else bps / 8


MODE_ARMS = {"sync": ARM, "async": "async_ps", "async_allreduce": "async_allreduce"}  # study mode -> model arm
RANK_PROGRAMS = {"sync": "train.dilated_step", "async_allreduce": "train.dilated_async_allreduce"}  # Horovod arms


def model_point(profile: str, head: str, batch: int, p: int, mode: str = "sync", shards: int = 1) -> dict:
    """The model's point for the same profile: sync all-reduce, the async PS arm with `shards` shards, or the
    async all-reduce arm as train/dilated_async_allreduce.py runs it: a worker never waits (no cap on the
    sub-batches accumulated during one all-reduce; the projections assume the profile's max_accumulate)."""
    point = scaling.project(head, batch, MODE_ARMS[mode], p, shards=shards, name=profile)
    if mode == "async_allreduce":
        ips, ups, per_update = scaling.async_allreduce_rate(p, batch, point["t_compute_s"], point["comm_s"], math.inf)
        point = {**point, "images_per_sec": ips, "speedup": ips / point["one_gpu_ips"], "updates_per_s": ups,
                 "images_per_update": per_update}
    return point


def arm_label(mode: str, shards: int) -> str:
    return {"sync": ARM, "async_allreduce": "async_allreduce"}.get(mode, f"async_ps ({shards} PS)")


# ------------------------------------------------------------------ the plan and the backend
def check_mode(modes: tuple[str, ...]) -> str:
    """The arm the dilation check is made on: sync when the study runs it, else the study's other arm."""
    return next(m for m in ("sync", "async_allreduce", "async") if m in modes)


def plan_dilated(cfg: StudyConfig) -> list[Run]:
    """Every p at D for every mode, then the check arm (check_mode) at its largest p at 2D (the dilation
    check), repeat-major."""
    head, size = cfg.heads[0], cfg.image_sizes[0]

    def runs_at(mode: str, p: int) -> bool:
        return not (mode == "async" and cfg.async_max_workers and p > cfg.async_max_workers)

    check = check_mode(cfg.modes)
    top = max(p for p in cfg.workers if runs_at(check, p))
    runs = []
    for rep in range(cfg.repeats):
        for d, ps, modes in ((cfg.dilation, cfg.workers, cfg.modes), (2 * cfg.dilation, (top,), (check,))):
            link = dilated_rate(cfg.profile, cfg.byte_dilation, d)
            for p in ps:
                for mode in [m for m in ("sync", "async_allreduce", "async") if m in modes and runs_at(m, p)]:
                    runs.append(Run("main", mode, p, head, size, "none", rep, link=link,
                                    nodes=math.ceil(p / cfg.ranks_per_node), dilation=d))
    return runs


def nodes_needed(cfg: StudyConfig) -> int:
    return max(2, math.ceil(max(cfg.workers) / cfg.ranks_per_node))


class DilatedBackend(EmulatedBackend):
    name = "dilated"

    def hosts(self) -> set[str]:
        return {f"n{k}" for k in range(1, 65)} | {socket.gethostname()}

    def env(self, cfg: StudyConfig) -> dict[str, str]:
        env = super().env(cfg)
        # ranks spend their time asleep or in MPI: without yielding, a waiting rank spins on a shared core
        env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")  # an explicit setting in the environment wins
        return env

    def stages(self, cfg: StudyConfig, runs: list[Run]) -> list[Stage]:
        out = []
        for rep in sorted({r.repeat for r in runs}):
            for link in dict.fromkeys(r.link for r in runs if r.repeat == rep):
                here = [r for r in runs if r.repeat == rep and r.link == link]
                bench = self.bench(cfg, link, rep) if cfg.bench else None
                out.append(Stage(f"{link} D={here[0].dilation:g} r{rep}", here, bench,
                                 self._up(cfg, link, nodes_needed(cfg), ("--burst", str(burst_bytes(link)),
                                                                                "--queue-ms", f"{queue_ms(link):.1f}",
                                                                                "--congestion-control", CONGESTION))))
        return out

    def bench(self, cfg: StudyConfig, link: str, rep: int) -> tuple[list[str], str]:
        out = bench_path(cfg.study_dir, link, rep)
        k = cfg.byte_dilation
        factors = ",".join(f"{f / k:.6g}" for f in (1, 4, 16))  # the dilated gradient set, and 4x, 16x it
        return ["srun", "--mpi=pmix", "-N", "2", "-n", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                cfg.python, "-m", "train.bench_link", "--out", out, "--reps", str(cfg.bench_reps), "--singles", "",
                "--factors", factors, "--model", f"{cfg.heads[0]},{IMAGE_SIZE},{WIDTH:g},{CLASSES}"], out

    def commands(self, cfg: StudyConfig, run: Run) -> list[tuple[str, list[str]]]:
        [rid] = run.run_ids()
        if run.mode == "async":
            return [(rid, self.async_command(cfg, run, rid))]
        path = hostfile(cfg, rid, [f"n{1 + i // cfg.ranks_per_node}" for i in range(run.workers)])
        return [(rid, ["env", f"SLURM_HOSTFILE={path}", "srun", "--mpi=pmix", "--overcommit", "--kill-on-bad-exit=1",
                       f"--job-name={rid}", "-n", str(run.workers), "--distribution=arbitrary",
                       cfg.python, "-m", RANK_PROGRAMS[run.mode], "--profile", cfg.profile, "--head", run.head,
                       "--per-worker-batch", str(cfg.per_worker_batch), "--dilation", f"{run.dilation:g}",
                       "--byte-dilation", str(cfg.byte_dilation), "--steps", str(cfg.steps_per_epoch),
                       "--warmup-steps", str(cfg.warmup_steps), "--ranks-per-node", str(cfg.ranks_per_node),
                       "--study", cfg.study, "--results-dir", os.path.abspath(cfg.results_dir), "--run-id", rid,
                       # the sync arm's steps broken down by Horovod's own timeline (rank 0 writes it; its
                       # writer keeps one core busy, 8.3 CPU-s per 8.3-s step at p = 1, and the emulated rates
                       # did not move: results/reference/dilated-2ps against dilated, 2026-12-06)
                       *(["--hvd-timeline", timeline_path(cfg, rid)] if run.mode == "sync" else [])])]


    def async_command(self, cfg: StudyConfig, run: Run, rid: str) -> list[str]:
        """The chief on n1, PS shard i on node n(1+i) (each shard behind its own node link, as the model's
        S full-duplex shards; more shards than nodes wrap around), then ranks_per_node workers a node: SLURM's
        arbitrary distribution from a host file (tasks chief, ps, workers; train/ps_cluster.hostfile_cluster
        builds the cluster from it). The PS tasks serve forever: srun ends them --wait s after the chief has
        written the record and exited."""
        ps_hosts = [f"n{1 + i % nodes_needed(cfg)}" for i in range(cfg.ps)]
        hosts = ["n1", *ps_hosts] + [f"n{1 + i // cfg.ranks_per_node}" for i in range(run.workers)]
        path = hostfile(cfg, rid, hosts)
        return ["env", f"SLURM_HOSTFILE={path}", "srun", "--overcommit", "--kill-on-bad-exit=1", "--wait=10",
                f"--job-name={rid}", "--distribution=arbitrary", "-n", str(len(hosts)),
                cfg.python, "-m", "train.dilated_ps", "--cluster", "slurm", "--ps", str(cfg.ps),
                "--workers", str(run.workers), "--profile", cfg.profile, "--head", run.head,
                "--per-worker-batch", str(cfg.per_worker_batch), "--dilation", f"{run.dilation:g}",
                "--byte-dilation", str(cfg.byte_dilation), "--steps", str(cfg.steps_per_epoch),
                "--warmup-steps", str(cfg.warmup_steps), "--study", cfg.study,
                "--results-dir", os.path.abspath(cfg.results_dir), "--run-id", rid]


# TCP congestion control on the dilated nodes. This host's default, inherited by every namespace, is BBR.
# Under it the link bench's largest exchanges (2.6 MB) stalled by 0.13-0.17 s on one rank or the other, with
# or without drops, queue 13-40 ms, slow start after idle on or off: 59-83% of 78 Mbit/s. The likely cause
# (not observed directly) is BBR's PROBE_RTT (a 4-packet window for 200 ms every 10 s without a new minimum
# RTT, which a standing queue prevents). Under loss-based Reno (the only other one a namespace may pick
# here) with a queue that holds its window (queue_ms) no exchange stalled (2026-11-29; README, "Time-dilated").
CONGESTION = "reno"


def queue_ms(link: str) -> float:
    """tbf queue of a dilated link, in ms at its rate: 512 KiB, at least 10 ms. Under Reno a queue shorter
    than about 400 kB dropped enough of a 2.6 MB exchange to stall it (78 Mbit/s: 131 kB gave 83-94%; 39
    Mbit/s: 195 kB 76%), one of ~400-500 kB did not (78 Mbit/s, 40 ms = 390 kB: 93-94%, 4 benches; 39
    Mbit/s, 100 ms = 488 kB: 93%, 2 benches, no drop). Behind localcluster's default 100 ms at 312.5 Mbit/s
    (3.9 MB) the ACKs of a node's incoming flow waited (its egress queue holds both): 60% (BBR) (2026-11-29)."""
    return max(10.0, 1e3 * 524288 / rate_Bps(link))


def burst_bytes(link: str) -> int:
    """The token bucket of a dilated link: 2 ms at its rate, at least two full packets. localcluster's default
    (256 KiB) would pass a whole dilated step's gradients at the host's speed, unshaped."""
    return max(4096, int(rate_Bps(link) * 0.002))


def hostfile(cfg: StudyConfig, rid: str, hosts: list[str]) -> str:
    """SLURM_HOSTFILE for --distribution=arbitrary: task i runs on hosts[i] (ranks_per_node a node: srun's
    --ntasks-per-node cannot exceed a 1-CPU namespace node's CPUs, even with --overcommit)."""
    path = os.path.abspath(os.path.join(cfg.study_dir, "logs", f"{rid}.hosts"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(hosts) + "\n")
    return path


def timeline_path(cfg: StudyConfig, rid: str) -> str:
    return os.path.abspath(os.path.join(cfg.study_dir, "logs", f"{rid}.timeline.json"))


def bench_path(study_dir: str, link: str, rep: int) -> str:
    # not linkbench-*: those are the emulated study's per-link model inputs (compare/calibration.py)
    return os.path.abspath(os.path.join(study_dir, f"dilatedbench-{link.lower()}-r{rep}.json"))


def check_can_run() -> str | None:
    from compare.emulated import check_can_run as emulated_ok
    return emulated_ok()


# ------------------------------------------------------------------ fidelity
def dilated_records(recs: list[dict]) -> list[dict]:
    return [r for r in recs if isinstance(r.get("dilation"), dict) and r["status"] == "ok"
            and r.get("images_per_sec") and r.get("role") == "main"]


def fidelity(study_dir: str, max_d_change: float = 0.03, min_link_fraction: float = 0.9) -> dict:
    """The study's fidelity checks from its own files (records, bench files, load log); written to
    fidelity.json. ok is False when a check fails or cannot be made; reason is one line."""
    from compare.hostload import load_path, read
    from train import record

    recs = dilated_records(record.read_valid(record.runs_path(
        os.path.dirname(os.path.normpath(study_dir)) or ".", os.path.basename(os.path.normpath(study_dir))))[0])
    checks = []
    if recs:  # on the arm the plan ran at 2D (check_mode of the arms the records show)
        mode = check_mode(tuple({r["mode"] for r in recs}))
        mine = [r for r in recs if r["mode"] == mode]
        pmax = max(r["num_workers"] for r in mine)
        ds = sorted({r["dilation"]["D"] for r in mine if r["num_workers"] == pmax})
        at = {d: [r["images_per_sec"] for r in mine if r["num_workers"] == pmax and r["dilation"]["D"] == d] for d in ds}
        if len(ds) >= 2:
            lo, hi = ds[0], ds[-1]
            a, b = sum(at[lo]) / len(at[lo]), sum(at[hi]) / len(at[hi])
            change = b / a - 1
            checks.append({"check": "dilation", "ok": abs(change) < max_d_change, "value": change,
                           "threshold": max_d_change, "mode": mode,
                           "text": f"{mode} at p={pmax}, D={lo:g} -> {hi:g} changes emulated images/sec by "
                                   f"{change:+.1%} ({a:.1f} -> {b:.1f}; limit ±{max_d_change:.0%})"})
        else:
            checks.append({"check": "dilation", "ok": False, "value": None, "threshold": max_d_change, "mode": mode,
                           "text": f"no {mode} run at 2D at its largest p ({pmax}): the dilation check cannot be made"})
    else:
        checks.append({"check": "dilation", "ok": False, "value": None, "threshold": max_d_change,
                       "text": "no dilated run succeeded"})
    benches = sorted(glob.glob(os.path.join(study_dir, "dilatedbench-*.json")))
    links = sorted({r["dilation"]["link_rate"] for r in recs if r["dilation"].get("link_rate")})
    for link in links:
        mine = [b for b in benches if os.path.basename(b).startswith(f"dilatedbench-{link.lower()}-")]
        shaped = rate_Bps(link)
        got, busy = [], []
        for path in mine:
            try:
                with open(path, encoding="utf-8") as f:
                    bench = json.load(f)
                got.append(float(bench["bw_Bps"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            b = (bench.get("host_before") or {}).get("cpu_busy_frac")
            if isinstance(b, (int, float)):
                busy.append(b)
        if not got:
            checks.append({"check": f"link {link}", "ok": False, "value": None, "threshold": min_link_fraction,
                           "text": f"no link bench at {link}: the link check cannot be made"})
            continue
        lo, hi = min(got) / shaped, max(got) / shaped
        upper = 2 - min_link_fraction  # faster than shaped: the bucket let a step's bytes through unshaped
        checks.append({"check": f"link {link}", "ok": lo >= min_link_fraction and hi <= upper, "value": lo,
                       "threshold": min_link_fraction,
                       "text": f"link bench at {link} reached {min(got) / 1e6:.3g}"
                               + (f"-{max(got) / 1e6:.3g}" if len(got) > 1 else "")
                               + f" MB/s = {lo:.0%}" + (f"-{hi:.0%}" if len(got) > 1 else "")
                               + f" of the shaped {shaped / 1e6:.3g} MB/s (needs {min_link_fraction:.0%}-{upper:.0%})"
                               + (f"; host CPU busy {max(busy):.0%} when it started" if busy else "")})
    costs = [(r["dilation"].get("host_busy_fraction"), r["num_workers"], r["dilation"]["D"]) for r in recs
             if r["dilation"].get("host_busy_fraction") is not None]
    if costs:  # informational: the dilation check is what fails a study measured by its host
        f, p_, d_ = max(costs)
        checks.append({"check": "host cost", "ok": True, "info": True, "value": f, "threshold": None,
                       "text": f"host CPU per dilated step: at most {f:.1%} of the machine's cores (p={p_}, D={d_:g})"})
    load = read(load_path(study_dir))
    checks.append({"check": "host load", "ok": bool(load), "value": len(load), "threshold": 1,
                   "text": (f"host load logged: {len(load)} samples, 1-minute load "
                            f"{min(x['loadavg1'] for x in load):.2f}-{max(x['loadavg1'] for x in load):.2f}")
                   if load else "no host load logged (load.jsonl missing or empty)"})
    bad = [c for c in checks if not c["ok"]]
    out = {"ok": not bad, "checks": checks,
           "reason": "; ".join(c["text"] for c in bad) if bad else "every fidelity check passed"}
    path = os.path.join(study_dir, "fidelity.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)
    return out


# ------------------------------------------------------------------ the report's section
def _mean_se(rs: list[dict]) -> tuple[float, float]:
    """Mean images/sec over repeats and its SE (one repeat: that run's own SE over windows)."""
    v = [r["images_per_sec"] for r in rs]
    m = sum(v) / len(v)
    if len(v) >= 2:
        return m, (sum((x - m) ** 2 for x in v) / (len(v) - 1)) ** 0.5 / len(v) ** 0.5
    se = rs[0].get("images_per_sec_se")
    return m, float(se) if se is not None else float("nan")


def section(study_dir: str, recs: list[dict], max_d_change: float = 0.03, min_link_fraction: float = 0.9) -> list[str]:
    """Emulated speedup and efficiency vs p beside the model's prediction for the same profile, error per point,
    worded by compare/wording.py; no comparison at all when a fidelity check failed."""
    from compare.report import fmt, md_table
    from compare.wording import sentence, verdict

    recs = dilated_records(recs)
    if not recs:
        return []
    fid = fidelity(study_dir, max_d_change, min_link_fraction)
    md = ["## Time-dilated emulation (issue 14): emulated cluster vs the model", ""]
    md += ["Fidelity checks (compare/dilated.py; the study fails when one fails):", ""]
    md += [f"- {'info' if c.get('info') else 'pass' if c['ok'] else 'FAIL'}: {c['text']}" for c in fid["checks"]]
    md.append("")
    out_rows = []
    def group(r: dict) -> tuple:
        return (r["mode"], r["dilation"]["profile"], r["head"], r["per_worker_batch"], r["dilation"]["K"],
                r["dilation"]["delay"], r["num_ps"])

    for key in sorted({group(r) for r in recs}):
        mode, profile, head, batch, k, delay, shards = key
        mine = [r for r in recs if group(r) == key]
        d = min(r["dilation"]["D"] for r in mine)
        at_d = [r for r in mine if r["dilation"]["D"] == d]
        base = [r for r in at_d if r["num_workers"] == 1]
        b_ips, b_se = _mean_se(base) if base else (float("nan"), float("nan"))
        arm = arm_label(mode, shards)
        md += [f"### {arm}: {profile}, {head} head, batch {batch} per GPU, D = {d:g}, K = {k}, delays {delay}", "",
               f"t_compute {at_d[0]['dilation']['t_compute_s'] * 1e3:.1f} ms per GPU step (from {at_d[0]['dilation']['t_compute_source'][:120]}…); "
               + ("" if base else "no p = 1 run in this study: no speedup; ")
               + 
               f"links shaped to {at_d[0]['dilation']['link_rate'] or 'none (one machine, unshaped)'} = B/(K·D) with B = "
               f"{at_d[0]['dilation']['emulated_link_Bps'] / 1e9:.2f} GB/s; {at_d[0]['dilation']['grad_tensors']} gradient tensors, "
               f"{at_d[0]['dilation']['grad_bytes_sent'] / 1e6:.3f} MB sent per rank per step "
               f"(1/{k} of {at_d[0]['dilation']['grad_bytes_full'] / 1e6:.1f} MB); controller {at_d[0]['dilation']['controller']}.", ""]
        rows = []
        for p in sorted({r["num_workers"] for r in at_d}):
            g = [r for r in at_d if r["num_workers"] == p]
            ips, se = _mean_se(g)
            sp = ips / b_ips
            rel = math.sqrt((se / ips) ** 2 + ((b_se / b_ips) ** 2 if p > 1 else 0.0))
            model = model_point(profile, head, batch, p, mode, max(1, shards))
            terms = model_terms(profile, model) if mode == "sync" else {}
            err = (model["speedup"] - sp) / sp
            dd = g[0]["dilation"]
            row = {"p": p, "nodes": dd.get("nodes") or len(set(g[0]["hosts"])), "ips": ips, "se": se, "speedup": sp, "eff": sp / p, "rel_se": rel,
                   "model": model["speedup"], "terms": terms, "err": err, "verdict": verdict(err, rel),
                   "exposed_ms": _stat(g, "exposed_s_p50", statistics_median, 1e3),
                   "host": _stat(g, "host_busy_fraction", max), "host_cpu": _stat(g, "host_cpu_s_per_step", max),
                   "real_step": _stat(g, "real_step_s", max), "n": len(g)}
            rows.append(row)
            out_rows.append({**row, "profile": profile, "head": head, "batch": batch, "D": d, "K": k, "mode": mode,
                             "arm": arm})
        head_cols = ["p", "nodes", "runs", "emulated img/s", "speedup", "efficiency", "exposed comm (emulated ms)",
                     "real step s", "host CPU s/step", "host busy"]
        if fid["ok"]:
            head_cols += ["model speedup", "model exposed / overhead / straggler (ms)", "error, SE: verdict"]
        md.append(md_table(head_cols, [
            [str(r["p"]), str(r["nodes"]), str(r["n"]), f"{r['ips']:.1f} ± {fmt(r['se'], '.1f')}", fmt(r['speedup'], ".2f"),
             fmt(r['eff'], ".3f"), fmt(r['exposed_ms'], ".2f"), fmt(r['real_step'], ".2f"), fmt(r['host_cpu'], ".3f"),
             fmt(100 * r['host'], ".1f") + ("%" if r['host'] == r['host'] else "")] + ([f"{r['model']:.2f}", " / ".join(f"{1e3 * r['terms'][k]:.1f}" for k in (
                 "exposed_s", "overhead_s", "straggler_s")) if r["terms"] else "–", sentence(r["err"], r["rel_se"])]
                                                  if fid["ok"] else [])
            for r in rows]))
        md.append("")
        md += where_time_goes(mode, at_d)
        if mode == "async_allreduce":
            md += async_allreduce_table(at_d, profile, head, batch, fid["ok"])
    if fid["ok"]:
        n = {v: sum(1 for r in out_rows if r["p"] > 1 and r["verdict"] == v) for v in ("within the goal",
                                                                                      "consistent within noise", "misses")}
        md += [f"Multi-rank points: {sum(n.values())} ({n['within the goal']} within the goal, "
               f"{n['consistent within noise']} consistent within noise, {n['misses']} misses). Model: "
               f"compare/scaling.py project() with each table's arm "
               f"({', '.join(dict.fromkeys(MODE_ARMS[m] for m in MODE_ARMS if any(r['mode'] == m for r in out_rows)))}) "
               f"for the same profile, head and batch; error = (model − emulated) "
               f"/ emulated speedup. The emulation has no fixed per-step overhead: the model's overhead_s (an input "
               f"fitted on published K80 sets, compare validate) is not emulated, so where it matters (short steps) the "
               f"model is below the emulation by about overhead_s / t_compute. In the all-reduce arms the straggler "
               f"term is emulated: each rank's compute delay is drawn with the profile's step_cv (record field "
               f"dilation.step_cv); the PS arm's workers sleep t_compute each.", ""]
    else:
        md += [f"**Fidelity check failed: {fid['reason']}.** The emulated points are listed but not compared with the "
               "model: the emulation may have measured this host, not the emulated cluster.", ""]
    from compare import plots
    if plots.plot_dilated(out_rows, scaling.load_profile_data()["seed_claim"], os.path.join(study_dir, "dilated.png"),
                          fid["ok"]) is not None:
        plots.plt.close("all")
        md += ["![emulated efficiency vs p, with the model](dilated.png)", ""]
    md += ["What dilation emulates: the real communication software (Horovod, its fusion and negotiation, MPI/Gloo, "
           "TCP over tc-shaped links) at the emulated cluster's bandwidth/latency ratio, with compute as timed sleeps "
           "along the measured gradient-ready curve. What it does not: GPU kernels, PCIe contention and host staging "
           "inside a node (ranks on one node share memory, unshaped), NIC offload, and the host's own latencies "
           "divided by D.", ""]
    return md


def async_allreduce_table(at_d: list[dict], profile: str, head: str, batch: int, compared: bool) -> list[str]:
    """The async all-reduce arm's own quantities per p (repeats pooled by mean) beside, when `compared`, what the
    model says: the update rate 1 / max(t_allreduce, t_compute) and the sub-batches an update carries (issue 16)."""
    from compare.report import fmt, md_table

    def mean(g: list[dict], get) -> float:
        v = [x for x in (get(r) for r in g) if x is not None]
        return sum(v) / len(v) if v else float("nan")

    rows = []
    for p in sorted({r["num_workers"] for r in at_d}):
        g = [r for r in at_d if r["num_workers"] == p]
        m = model_point(profile, head, batch, p, "async_allreduce")
        ups = mean(g, lambda r: r.get("updates_per_sec"))
        model = [fmt(m["updates_per_s"], ".4g"), fmt((m["updates_per_s"] - ups) / ups, "+.1%"),
                 fmt(m["images_per_update"] / batch, ".2f"), fmt(1e3 * m["comm_s"], ".1f")]
        rows.append([str(p), fmt(ups, ".4g"), fmt(mean(g, lambda r: (r.get("effective_batch") or {}).get("mean")), ".2f"),
                     fmt(mean(g, lambda r: (r.get("staleness") or {}).get("mean")), ".2f"),
                     fmt(mean(g, lambda r: (r.get("staleness") or {}).get("max")), ".0f"),
                     fmt(1e3 * mean(g, lambda r: (r.get("allreduce_s") or {}).get("p50")), ".1f")]
                    + (model if compared else []))
    cols = ["p", "updates/s (emulated)", "sub-batches per update", "staleness mean", "staleness max",
            "all-reduce p50 (emulated ms, incl. waiting for every rank's next sub-batch)"]
    return [md_table(cols + (["model updates/s = 1/max(t_ar, t_c)", "model error", "model sub-batches per update",
                              "model t_ar (ms)"] if compared else []), rows), "",
            "The async all-reduce arm as train/async_allreduce.py runs it: a rank never waits for the network, so the "
            "model's images/sec is p × batch / t_compute at every p; what the links decide is the update period and "
            "so the effective mini-batch and the staleness.", ""]


def where_time_goes(mode: str, at_d: list[dict]) -> list[str]:
    """Per p, where an emulated step's time went (emulated ms, repeats pooled by median). Sync: rank 0's Horovod
    timeline (record field dilation.timeline, train/dilated_step.py). PS: each worker's update period
    (workers x batch / images/sec) less its compute, i.e. what an update spent on push, pull, the PS's queue and the
    chief's dispatch, which ParameterServerStrategy does not break down further. Other arms: nothing."""
    from compare.report import fmt, md_table

    ps = sorted({r["num_workers"] for r in at_d})
    if mode == "sync":
        rows = []
        for p in ps:
            tls = [r["dilation"]["timeline"] for r in at_d if r["num_workers"] == p and "timeline" in r["dilation"]]
            ok = [t for t in tls if "error" not in t]
            if not tls:
                continue
            if not ok:
                rows.append([str(p), f"no breakdown: {tls[0]['error']}"] + [""] * 7)
                continue

            def ms(key: str) -> str:
                v = [t[key] for t in ok if t.get(key) is not None]
                return fmt(1e3 * statistics_median(v), ".1f") if v else "–"
            rows.append([str(p), ms("step_s"), ms("before_comm_s"), ms("backward_s"), ms("wait_other_s"),
                         ms("exposed_comm_s"), ms("start_latency_s"), ms("allreduce_busy_s"),
                         f"{statistics_median([t['messages'] for t in ok]):g} / {ok[0]['tensors_per_step']}"])
        if not rows:
            return []
        return ["Where a step's time goes at each p: rank 0's Horovod timeline (HOROVOD_TIMELINE, compare/timeline.py), "
                "emulated ms (real / D), median over the measured steps; step = before + backward + wait + exposed.", "",
                md_table(["p", "step", "before comm (forward, start of backward)", "backward window",
                          "wait for the slowest rank", "exposed allreduce", "start latency (negotiation, queue)",
                          "allreduce busy (overlaps)", "fused messages / tensors per step"], rows), ""]
    if mode == "async":
        rows = []
        for p in ps:
            g = [r for r in at_d if r["num_workers"] == p]
            period = statistics_median([p * r["per_worker_batch"] / r["images_per_sec"] for r in g])
            t_c = g[0]["dilation"]["t_compute_s"]
            rel = statistics_median([(r.get("images_per_sec_se") or 0.0) / r["images_per_sec"] for r in g])
            rows.append([str(p), fmt(1e3 * period, ".1f"), fmt(1e3 * t_c, ".1f"),
                         f"{1e3 * (period - t_c):.1f} ± {1e3 * period * rel:.1f}", fmt((period - t_c) / period, ".1%")])
        return ["Where a worker's update time goes at each p (emulated ms, median of repeats): its update period "
                "(workers × batch / images/sec) less its compute is what each update spent on the push, the pull, the "
                "PS shards' queue and the chief's dispatch (ParameterServerStrategy exposes no finer breakdown); "
                "± the period's SE from the rate's, so a value below 0 within it is noise, not time.", "",
                md_table(["p", "update period", "compute", "push + pull + PS queue + dispatch ± SE",
                          "share of the period"],
                         rows), ""]
    return []


def _stat(g: list[dict], key: str, how, scale: float = 1.0) -> float:
    v = [r["dilation"][key] for r in g if r["dilation"].get(key) is not None]
    return how(v) * scale if v else float("nan")


def model_terms(profile: str, point: dict) -> dict:
    """The model's step terms at one point (what the emulation is compared against, term by term)."""
    v = scaling.input_values(scaling.measured_terms(profile))
    p, t_c = point["p"], point["t_compute_s"]
    return {"exposed_s": point.get("exposed_s", 0.0), "overhead_s": v["overhead_s"] if p > 1 else 0.0,
            "straggler_s": v["step_cv"] * t_c * scaling.normal_max_factor(p) if p > 1 else 0.0}


def statistics_median(v: list[float]) -> float:
    s = sorted(v)
    return (s[(len(s) - 1) // 2] + s[len(s) // 2]) / 2
