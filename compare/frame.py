"""records -> frame: the one loader of a study's runs.jsonl, and the statistics on it. pandas; no TensorFlow.

Only valid records (train.record.read_valid: every required field with its basic type) enter the frame;
the rest are counted (`rejected`) and the report says how many. No valid record: FrameError (exit 2).
Groups: (mode, model, width, head, image size, per-worker batch, compression, PS shards, link); the
baseline of a group is its 1-worker main runs; speedup and efficiency carry standard errors and n.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from train import record

GROUP = ["mode", "model", "width", "head", "image_size", "per_worker_batch", "compression", "num_ps", "link"]
NUMERIC = ("images_per_sec", "images_per_sec_se", "step_p50", "trainable_params", "gradient_bytes",
           "train_gflop_per_img", "num_workers", "image_size", "per_worker_batch", "mfu", "updates_per_sec",
           "compute_images_per_sec", "bytes_sent_per_step", "bytes_received_per_step",
           "compression_ratio", "compress_time_s_per_step")


class FrameError(ValueError):
    """No usable runs file: one line, exit 2, nothing written."""


@dataclass
class Frame:
    df: pd.DataFrame
    rejected: int
    path: str


def _row(r: dict) -> dict:
    step, stale, link = r.get("step_time_s") or {}, r.get("staleness") or {}, r.get("link") or {}
    return {
        "run_id": r["run_id"], "status": r["status"], "mode": r["mode"], "model": r.get("model") or "cnn11",
        "width": float(r.get("width") or (r.get("config") or {}).get("width") or 1.0), "head": r.get("head"),
        "image_size": r.get("image_size"), "per_worker_batch": r.get("per_worker_batch"),
        "compression": r.get("compression") or "none", "num_ps": int(r.get("num_ps") or 0),
        "num_workers": r["num_workers"], "num_classes": r.get("num_classes"),
        "images_per_sec": r.get("images_per_sec"), "images_per_sec_se": r.get("images_per_sec_se"),
        "step_p50": step.get("p50"), "trainable_params": r.get("trainable_params"),
        "gradient_bytes": r.get("gradient_bytes"), "train_gflop_per_img": r.get("train_gflop_per_img"),
        "mfu": r.get("mfu"), "role": r["role"], "copies": int(r["copies"]), "host": r["host"],
        "nodes": len(set(r.get("hosts") or [r["host"]])), "link": link.get("rate") or "",
        "cpu_affinity": ",".join(map(str, r.get("cpu_affinity") or [])), "intra_op_threads": r.get("intra_op_threads"),
        "error": r.get("error"), "started_at": r.get("started_at"), "git_sha": r.get("git_sha"),
        "git_dirty": r.get("git_dirty"), "staleness_mean": stale.get("mean"), "staleness_p95": stale.get("p95"),
        "staleness_max": stale.get("max"),
        # async all-reduce (issue 16): update rate, the ranks' own compute rate (histograms: pooled_histograms)
        "updates_per_sec": r.get("updates_per_sec"),
        "compute_images_per_sec": r.get("compute_images_per_sec"),
        # compressed gradients (issue 15): what each worker handed Horovod per step, and the compress time
        "bytes_sent_per_step": r.get("bytes_sent_per_step"), "bytes_received_per_step": r.get("bytes_received_per_step"),
        "compression_ratio": r.get("compression_ratio"), "compress_time_s_per_step": r.get("compress_time_s_per_step"),
        "_record": r,
    }


def load(study_dir: str) -> Frame:
    """The study's valid records as a flat DataFrame; FrameError when there are none."""
    path = record.runs_path(os.path.dirname(os.path.normpath(study_dir)) or ".", os.path.basename(os.path.normpath(study_dir)))
    if not os.path.isfile(path):
        raise FrameError(f"no runs file: {path}")
    recs, rejected = record.read_valid(path)
    if not recs:
        raise FrameError(f"{path} holds no valid run ({rejected} line(s) rejected: torn or lacking required fields)")
    df = pd.DataFrame([_row(r) for r in recs])
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return Frame(df, rejected, path)


def usable(df: pd.DataFrame) -> pd.DataFrame:
    """Main-role runs with status ok and a measured rate: what the statistics use."""
    return df[(df["status"] == "ok") & (df["role"] == "main") & df["images_per_sec"].notna()]


def failed_runs(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["status"] != "ok"][["run_id", "mode", "num_workers", "head", "link", "status", "error"]]


def mean_se(values: pd.Series, within: pd.Series | None = None) -> float:
    """SE of the mean over repeats; with one repeat, that run's own (within-run, over windows) SE."""
    v = values.dropna()
    if len(v) >= 2:
        return float(v.std(ddof=1) / math.sqrt(len(v)))
    if len(v) == 1 and within is not None and within.notna().any():
        return float(within.dropna().iloc[0])
    return float("nan")


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (group, workers): n, images/sec mean and SE, speedup and efficiency with SEs."""
    ok = usable(df)
    cols = GROUP + ["num_workers", "n", "ips", "ips_se", "ips_median", "base_ips", "base_se", "base_n",
                    "speedup", "speedup_se", "efficiency", "efficiency_se"]
    if ok.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in ok.groupby(GROUP + ["num_workers"], dropna=False, sort=True):
        rows.append({**dict(zip(GROUP + ["num_workers"], key)), "n": int(len(g)),
                     "ips": float(g["images_per_sec"].mean()),
                     "ips_se": mean_se(g["images_per_sec"], g["images_per_sec_se"]),
                     "ips_median": float(g["images_per_sec"].median())})
    t = pd.DataFrame(rows)
    t["num_workers"] = t["num_workers"].astype(int)
    base = t[t["num_workers"] == 1][GROUP + ["ips", "ips_se", "n"]].rename(
        columns={"ips": "base_ips", "ips_se": "base_se", "n": "base_n"})
    t = t.merge(base, on=GROUP, how="left")
    t["speedup"] = t["ips"] / t["base_ips"]
    rel = np.sqrt((t["ips_se"] / t["ips"]) ** 2 + (t["base_se"] / t["base_ips"]) ** 2)
    t["speedup_se"] = np.where(t["num_workers"] == 1, 0.0, t["speedup"] * rel)
    t["efficiency"] = t["speedup"] / t["num_workers"]
    t["efficiency_se"] = t["speedup_se"] / t["num_workers"]
    return t[cols].sort_values(GROUP + ["num_workers"]).reset_index(drop=True)


def per_run(df: pd.DataFrame, row: pd.Series) -> pd.Series:
    """The images/sec of every main run of one speedup-table row (the points beside mean ± SE)."""
    ok = usable(df)
    mask = ok["num_workers"] == row["num_workers"]
    for col in GROUP:
        mask &= ok[col] == row[col]
    return ok[mask]["images_per_sec"]


def pooled_histograms(df: pd.DataFrame, mode: str, field: str) -> dict[int, dict[int, int]]:
    """{workers: {value: count}} of a record's exact histogram field (staleness, effective_batch), every ok
    main run of `mode` with that worker count pooled; worker counts without one are left out."""
    ok = df[(df["status"] == "ok") & (df["mode"] == mode) & (df["role"] == "main")]
    out: dict[int, dict[int, int]] = {}
    for _, r in ok.iterrows():
        acc = out.setdefault(int(r["num_workers"]), {})
        for k, v in (((r["_record"].get(field) or {}).get("histogram")) or {}).items():
            acc[int(k)] = acc.get(int(k), 0) + int(v)
    return {p: h for p, h in out.items() if h}


def histogram_stats(h: dict[int, int]) -> dict[str, float]:
    """n, mean, p95 (the smallest value with 95% of the counts at or below it) and max of {value: count}."""
    total = sum(h.values())
    if not total:
        return {"n": 0, "mean": math.nan, "p95": math.nan, "max": math.nan}
    run, p95 = 0, max(h)
    for k in sorted(h):
        run += h[k]
        if run >= 0.95 * total:
            p95 = k
            break
    return {"n": total, "mean": sum(k * v for k, v in h.items()) / total, "p95": p95, "max": max(h)}
