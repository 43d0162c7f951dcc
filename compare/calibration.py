"""Calibration: the model's inputs from a study's own measurements, in one module. No TensorFlow.

local (and SLURM) studies: t_compute from the sync 1-worker runs, the async 1-worker update time, the async
all-reduce 1-worker sub-batch time, the contention kappa(p) from the side-by-side ceiling runs, alpha and B
from allreduce.json, each compression's cost from the sync records that ran it (compression_costs). No allreduce
measurement: no local profile at all ("no prediction: no allreduce measurement"), never B = inf.
emulated studies, per link rate: t1s, t1a and kappa from the runs that cross no link, made in the same
pass over that link rate; alpha and B from that link's bench (linkbench-<link>-r<rep>.json).
"""
from __future__ import annotations

import glob
import json
import os
import re
import statistics

import pandas as pd

from compare import scaling
from compare.frame import usable
from train.config import parse_compression

NO_BENCH = "no prediction: no allreduce measurement"


def load_bench(study_dir: str) -> dict | None:
    """allreduce.json when it holds a fit (alpha_s, bw_Bps), else None."""
    try:
        with open(os.path.join(study_dir, "allreduce.json"), encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(d, dict) and isinstance(d.get("alpha_s"), (int, float)) and isinstance(d.get("bw_Bps"), (int, float))
    return d if ok and d["bw_Bps"] > 0 else None


def compression_costs(df: pd.DataFrame) -> dict[str, scaling.CompressionCost]:
    """Each compression's cost from the study's ok sync records with >= 2 workers (issue 15): the medians of
    the records' compression_ratio, compress time per fp32 gradient byte, and received/sent bytes over p
    (1 for an allgather, 1/p for an allreduce)."""
    ok = usable(df)
    s = ok[(ok["mode"] == "sync") & (ok["num_workers"] >= 2) & ok["compression_ratio"].notna()
           & ok["bytes_sent_per_step"].notna() & ok["trainable_params"].notna()]
    out = {}
    for comp, g in s.groupby("compression"):
        grad = 4.0 * g["trainable_params"]
        per_p = g["bytes_received_per_step"] / g["bytes_sent_per_step"] / g["num_workers"]
        out[comp] = scaling.CompressionCost(
            comp, ratio=float(g["compression_ratio"].median()),
            compress_s_per_B=float((g["compress_time_s_per_step"].fillna(0.0) / grad).median()),
            gather=bool(per_p.median() > 0.75),
            overlapped=parse_compression(comp).method in scaling.HOOK_COMPRESSIONS,
            source=f"median of {len(g)} sync run(s) at {'/'.join(map(str, sorted(set(g['num_workers'].astype(int)))))} "
                   "workers (records' compression_ratio, compress_time_s_per_step, bytes received/sent)")
    return out


def ceiling_kappa(df: pd.DataFrame, solo_ips: float) -> dict[int, float]:
    """kappa(p) = one pinned 1-worker run alone / the same run beside p-1 others (sync trainer)."""
    c = df[(df["status"] == "ok") & (df["role"] == "ceiling") & df["images_per_sec"].notna()]
    out = {1: 1.0}
    for copies, g in c.groupby("copies"):
        if copies > 1 and solo_ips > 0:
            out[int(copies)] = float(solo_ips / g["images_per_sec"].mean())
    return out


def _fc4096_from_gap(workloads: dict, overhead: dict, rec: pd.Series, image_size: int, width: float, batch: int) -> None:
    """Carry the measured gap-head workload over to the fc4096 head by FLOPs and gradient bytes."""
    classes = int(rec["num_classes"] or 10)
    p_gap, m_gap = scaling.head_dense_counts("gap", image_size, width, classes)
    p_fc, m_fc = scaling.head_dense_counts("fc4096", image_size, width, classes)
    gflop_gap = rec["train_gflop_per_img"]
    gflop_fc = gflop_gap + 6.0 * (m_fc - m_gap) / 1e9
    w = workloads["gap"]
    workloads["fc4096"] = scaling.Workload("fc4096", batch, w.t_compute * gflop_fc / gflop_gap,
                                           w.grad_bytes + 4.0 * (p_fc - p_gap),
                                           "gap-head compute scaled by FLOPs (fc4096 not measured)")
    if "gap" in overhead:  # async: the part beyond the sync step scales with the bytes moved
        extra = max(overhead["gap"] - w.t_compute, 0.0)
        ratio = (p_fc + rec["trainable_params"] - p_gap) / rec["trainable_params"]
        overhead["fc4096"] = workloads["fc4096"].t_compute + extra * ratio


def calibrate_local(df: pd.DataFrame, table: pd.DataFrame, bench: dict | None,
                    cores: int) -> tuple[scaling.Profile | None, dict]:
    """The local profile from the study's sync 1-worker runs; info (inputs, assumptions, or why none)."""
    info: dict = {"assumptions": []}
    base = table[(table["mode"] == "sync") & (table["num_workers"] == 1) & (table["compression"] == "none")
                 & (table["link"] == "")]
    if base.empty:
        info["missing"] = "no prediction: no sync 1-worker runs without compression to calibrate from"
        return None, info
    if bench is None:
        info["missing"] = NO_BENCH + " (no allreduce.json in the study)"
        return None, info
    first = base.iloc[0]
    width, image_size, batch = first["width"], int(first["image_size"]), int(first["per_worker_batch"])
    base = base[(base["width"] == width) & (base["image_size"] == image_size) & (base["per_worker_batch"] == batch)]
    ok = usable(df)
    same = ok[(ok["width"] == width) & (ok["image_size"] == image_size) & (ok["per_worker_batch"] == batch)]
    workloads, overhead, sub, solo_ips = {}, {}, {}, None
    for _, row in base.iterrows():
        head = row["head"]
        rec = same[(same["mode"] == "sync") & (same["head"] == head)].iloc[0]
        workloads[head] = scaling.Workload(head, batch, batch / row["ips"], 4.0 * rec["trainable_params"],
                                           f"sync 1-worker mean {row['ips']:.1f} img/s (n={row['n']})")
        solo_ips = solo_ips or row["ips"]
        a1 = table[(table["mode"] == "async") & (table["num_workers"] == 1) & (table["head"] == head)
                   & (table["width"] == width) & (table["image_size"] == image_size)
                   & (table["per_worker_batch"] == batch) & (table["compression"] == "none")]
        if not a1.empty:
            overhead[head] = batch / a1.iloc[0]["ips"]  # the measured 1-worker async update time
        r1 = table[(table["mode"] == "async_allreduce") & (table["num_workers"] == 1) & (table["head"] == head)
                   & (table["width"] == width) & (table["image_size"] == image_size)
                   & (table["per_worker_batch"] == batch) & (table["compression"] == "none")]
        if not r1.empty:
            sub[head] = batch / r1.iloc[0]["ips"]  # the measured 1-worker async all-reduce sub-batch time
    if "gap" in workloads and "fc4096" not in workloads:
        _fc4096_from_gap(workloads, overhead, same[(same["mode"] == "sync") & (same["head"] == "gap")].iloc[0],
                         image_size, width, batch)
        info["assumptions"].append("fc4096 on this machine is not measured: its step time is the gap head's "
                                   "scaled by training FLOPs, its async PS/RPC time by gradient bytes.")
    kappa = ceiling_kappa(df[(df["width"] == width) & (df["image_size"] == image_size)
                             & (df["per_worker_batch"] == batch)], solo_ips)
    if len(kappa) == 1:
        info["assumptions"].append("no side-by-side ceiling runs: no compute contention between cores (kappa = 1).")
    alpha, bw = float(bench["alpha_s"]), float(bench["bw_Bps"])
    info["assumptions"] += [
        f"one pinned core = one 'GPU'; nodes of {cores} cores; beyond one node, nodes joined at this machine's "
        "own measured alpha and B (the local projection shows the method, not a real cluster).",
        "kappa(p) beyond the largest measured p stays at its last measured value.",
        "async: p workers + chief + PS share p cores; the 1-worker async update time (measured) holds the "
        "chief's and PS's CPU work; its excess over the sync step is the PS service time of one update.",
    ]
    info.update({"width": width, "image_size": image_size, "batch": batch, "kappa": kappa, "alpha": alpha,
                 "bw": bw, "overhead": overhead, "t_compute": {h: w.t_compute for h, w in workloads.items()}})
    if sub:
        info["assumptions"].append("async all-reduce: p ranks on p cores; the 1-worker sub-batch time (measured, "
                                   "its communication thread included) times kappa(p); the rank never waits.")
    costs = compression_costs(df)
    info.update({"async_allreduce_sub": sub, "compressions": costs})
    prof = scaling.local_profile(alpha, bw, workloads, kappa, overhead, cores, assumptions=info["assumptions"],
                                 async_allreduce_sub=sub, compressions=costs)
    return prof, info


# ------------------------------------------------------------------ the emulated cluster, per link rate
def load_link_benches(study_dir: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(study_dir, "linkbench-*-r*.json"))):
        m = re.search(r"linkbench-(.+)-r(\d+)\.json$", os.path.basename(path))
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, ValueError):
            continue
        if m and isinstance(d, dict) and d.get("pattern"):
            out.setdefault(m.group(1), []).append(d)
    return out


def bench_points(benches: list[dict]) -> tuple[list[float], list[float]]:
    """(bytes, time) of the scaled gradient exchanges: per size, the median over bench runs."""
    by_size: dict[int, list[float]] = {}
    for d in benches:
        for s in d["pattern"]:
            by_size.setdefault(int(s["bytes"]), []).append(float(s["median_s"]))
    sizes = sorted(by_size)
    return sizes, [statistics.median(by_size[s]) for s in sizes]


def emulated_kind(row: pd.Series) -> str:
    """sync-1n, sync-2n, async-1n, async-2n, async_allreduce-1n/-2n or ceil-2n: one worker a node; a compressed
    run is its own kind (sync-2n+topk:0.01): it neither calibrates nor joins the uncompressed points."""
    if row["role"] == "ceiling":
        return f"ceil-{int(row['copies'])}n"
    comp = row.get("compression") or "none"
    return f"{row['mode']}-{int(row['num_workers'])}n" + ("" if comp == "none" else f"+{comp}")


def link_inputs(df: pd.DataFrame, benches: dict, link: str, batch: int) -> dict | None:
    """Model inputs at one link rate: alpha and B from that link's bench; t1s, t1a and kappa from the runs
    that cross no link made in the same pass over this link rate (the host's load drifts within minutes:
    inputs from the same minutes track it). None without a bench or a sync-1n run (no prediction); an arm
    without its 1-node run gets no prediction (t1a, t1r None)."""
    ok = df[(df["status"] == "ok") & df["images_per_sec"].notna() & (df["link"] == link)]
    kinds = ok.apply(emulated_kind, axis=1) if len(ok) else pd.Series(dtype=str)
    s1, a1, r1, ceil = (ok[kinds == k]["images_per_sec"]
                        for k in ("sync-1n", "async-1n", "async_allreduce-1n", "ceil-2n"))
    b = benches.get(link.lower(), [])
    if s1.empty or not b:
        return None
    sizes, times = bench_points(b)
    alpha, bw = scaling.fit_alpha_beta(sizes, times, 2)
    kappa = float(s1.median()) / float(ceil.median()) if len(ceil) else 1.0
    return {"t1s": batch / float(s1.median()), "alpha": alpha, "bw": bw,
            # the PS arm's 1-node update time (absent: no prediction for that arm)
            "t1a": batch / float(a1.median()) if len(a1) else None,
            "kappa": kappa, "n_ceil": len(ceil), "bench_sizes": sizes, "bench_times": times,
            "bench_reps": len(b), "n_s1": len(s1), "n_a1": len(a1),
            # the async all-reduce arm's 1-node sub-batch time (absent: no prediction for that arm)
            "t1r": batch / float(r1.median()) if len(r1) else None, "n_r1": len(r1)}
