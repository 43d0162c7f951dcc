"""`python -m compare report`: frame -> model -> report.md + PNGs, for every kind of study (local, convergence,
emulated, collected from SLURM). Markdown only here: loading is compare/frame.py, inputs compare/calibration.py,
the model compare/scaling.py, figures compare/plots.py, words compare/wording.py. No TensorFlow.

Conditions come from the records, study.json (written by `compare run`) and load.jsonl; nothing here
knows anything about a particular run. A study with a reference study of the same name
(results/reference/<name>/) is shown beside it.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

from compare import calibration, hostload, plots, scaling
from compare.frame import (FrameError, failed_runs, histogram_stats, load, mean_se, pooled_histograms, speedup_table,
                           usable)
from compare.plan import EMULATED_RUNS, MODES
from compare.wording import GOAL, VERDICTS, difference, verdict

ReportError = FrameError  # bad input (no runs file, no valid run): one line, exit 2, nothing written


# ------------------------------------------------------------------ markdown helpers
def fmt(v, spec: str = ".1f", na: str = "–") -> str:
    try:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return na
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "/").replace("\n", " ") for c in row) + " |" for row in rows]
    return "\n".join(out)


def _pm(v, se, spec: str = ".1f") -> str:
    if fmt(v, spec) == "–":
        return "–"
    return f"{fmt(v, spec)} ± {fmt(se, spec)}"


def _study_info(study_dir: str) -> dict:
    try:
        with open(os.path.join(study_dir, "study.json"), encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def verdict_counts(rows: pd.DataFrame) -> str:
    counts = rows["verdict"].value_counts()
    return ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS)


# ------------------------------------------------------------------ conditions
def conditions(study_dir: str, df: pd.DataFrame, info: dict, command: str, notes: list[str]) -> list[str]:
    recs = list(df["_record"])
    versions = sorted({json.dumps(r.get("versions") or {}, sort_keys=True) for r in recs})
    shas = df.groupby(["git_sha", "git_dirty"], dropna=False).size()
    code = "; ".join(f"git {str(sha)[:10]} {'DIRTY' if dirty else 'clean'} ({n} records)" for (sha, dirty), n in shas.items())
    mixed = len(shas) > 1 or bool(df["git_dirty"].fillna(True).any())
    hosts = sorted(set(df["host"]))  # the writers' hostnames (an async record's `hosts` are task addresses)
    starts = sorted(s for s in df["started_at"].dropna())
    cfgs = [r.get("config") or {} for r in recs if r.get("status") == "ok"]
    ok = df[df["status"] == "ok"]
    cores = info.get("cores") or []
    lines = [
        f"- machine: {info.get('cpu') or '(no study.json: ' + ', '.join(sorted({str(r.get('peak_source')) for r in recs if r.get('peak_source')}) or ['not recorded']) + ')'}"
        + (f", {len(cores)} cores usable" if cores else "") + f"; records written on: {', '.join(hosts) or '?'}"
        + (f"; {info['platform']}" if info.get("platform") else ""),
        f"- processes: intra-op threads {', '.join(sorted({fmt(v, '.0f') for v in ok['intra_op_threads']}))}; "
        f"cores each process could run on: {', '.join(f'[{c}]' for c in sorted(set(ok['cpu_affinity']))) or '?'}",
        f"- versions: {'; '.join(versions) or '?'}; report: pandas {pd.__version__}, matplotlib {matplotlib.__version__}",
        f"- code: {code}" + (" — **the records mix commits or ran on a dirty checkout**" if mixed else ""),
        f"- runs from {starts[0] if starts else '?'} to {starts[-1] if starts else '?'}",
        f"- host load during the study: {hostload.summary(hostload.load_path(study_dir), len(cores) or None)}",
        f"- run command: `{info.get('command') or 'not recorded (no study.json: records collected from jobs)'}`",
        f"- report command: `{command}`",
    ]
    if len(ok):
        def values(col: str) -> str:
            return "/".join(sorted({fmt(v, "g") for v in ok[col].dropna()})) or "?"
        steps = sorted({int(r["steps"]) for r in recs if r.get("status") == "ok" and r.get("steps") is not None})
        lines.append(f"- workload: cnn11 {values('head')} head, width {values('width')}, "
                     f"{'/'.join(sorted(set(ok['_record'].map(lambda r: str(r.get('dataset'))))))} "
                     f"{values('image_size')} px, batch {values('per_worker_batch')} per worker, "
                     f"{'/'.join(map(str, steps)) or '?'} measured steps a run, "
                     f"{'/'.join(sorted({str(c.get('warmup_steps')) for c in cfgs})) or '?'} warm-up steps excluded")
    return lines + [f"- note: {n}" for n in notes]


# ------------------------------------------------------------------ measured
def measured_section(df: pd.DataFrame, table: pd.DataFrame, calib: dict) -> list[str]:
    md = ["## Measured: images/sec, speedup and efficiency", "",
          "Mean over repeats ± standard error (SE of the mean over repeats; with one run, its own SE over "
          "windows; speedup SE by the delta method); baseline = the 1-worker runs of the same group.", ""]
    if table.empty:
        return md + ["No usable (ok, main-role) runs."]
    md.append(md_table(["mode", "head", "size", "batch/worker", "compression", "PS", "link", "workers", "n",
                        "images/sec", "median", "speedup", "efficiency"],
                       [[r["mode"], r["head"], fmt(r["image_size"], ".0f"), fmt(r["per_worker_batch"], ".0f"),
                         r["compression"], fmt(r["num_ps"], ".0f") if r["mode"] == "async" else "–", r["link"] or "–",
                         fmt(r["num_workers"], ".0f"), fmt(r["n"], ".0f"), _pm(r["ips"], r["ips_se"]),
                         fmt(r["ips_median"]), _pm(r["speedup"], r["speedup_se"], ".3f"),
                         _pm(r["efficiency"], r["efficiency_se"], ".3f")] for _, r in table.iterrows()]))
    ceil = df[(df["status"] == "ok") & (df["role"] == "ceiling") & (df["link"] == "")]
    if not ceil.empty and calib.get("kappa"):
        md += ["", "The machine's own parallel ceiling (independent 1-worker runs side by side, one per core):"]
        for p, k in sorted(calib["kappa"].items()):
            per = ceil[ceil["copies"] == p]["images_per_sec"]
            if p > 1 and len(per):
                md.append(f"- {p} side by side: {_pm(per.mean(), mean_se(per))} img/s each (n={len(per)}), "
                          f"total {fmt(p * per.mean())} img/s; contention factor kappa({p}) = {k:.3f}")
    return md


# ------------------------------------------------------------------ local model vs measurement
def validation_table(table: pd.DataFrame, profile: scaling.Profile | None, calib: dict) -> pd.DataFrame:
    cols = ["mode", "head", "compression", "num_ps", "num_workers", "n", "ips", "ips_se", "predicted",
            "rel_error", "rel_se", "calibration", "verdict"]
    if profile is None or table.empty:
        return pd.DataFrame(columns=cols)
    t = table[(table["width"] == calib["width"]) & (table["image_size"] == calib["image_size"])
              & (table["per_worker_batch"] == calib["batch"]) & (table["link"] == "")].copy()
    preds, cal = [], []
    for _, r in t.iterrows():
        try:
            preds.append(profile.predict(r["mode"], r["head"], int(r["num_workers"]), max(int(r["num_ps"]), 1),
                                         r["compression"]).images_per_sec)
        except scaling.ModelError:
            preds.append(float("nan"))
        # p = 1 points fix t_compute (sync), the async update time and the async all-reduce sub-batch time
        fixed = {"sync": profile.workloads, "async": profile.async_update, "async_allreduce": profile.async_allreduce_sub}
        cal.append(int(r["num_workers"]) == 1 and r["compression"] == "none" and r["head"] in fixed.get(r["mode"], {}))
    t["predicted"] = preds
    t["rel_error"] = (t["predicted"] - t["ips"]) / t["ips"]
    t["rel_se"] = t["ips_se"] / t["ips"]
    t["calibration"] = cal
    t["verdict"] = [("calibration point" if c else verdict(e, s)) for e, s, c in zip(t["rel_error"], t["rel_se"], cal)]
    return t[cols].reset_index(drop=True)


def local_model_section(profile, calib: dict, val: pd.DataFrame) -> list[str]:
    md = ["## Model vs measurement (local profile)", ""]
    if profile is None:
        return md + [f"**{calib.get('missing')}.** The model is not compared with this study's runs."]
    md += ["Inputs, all measured in this study: " + ", ".join(
        [f"t_compute[{h}] = {t * 1e3:.1f} ms/step" for h, t in calib["t_compute"].items()]
        + [f"kappa = {{{', '.join(f'{p}: {k:.3f}' for p, k in sorted(calib['kappa'].items()))}}}",
           f"alpha = {calib['alpha'] * 1e6:.0f} us, B = {calib['bw'] / 1e9:.2f} GB/s (allreduce.json)"]
        + [f"async 1-worker update[{h}] = {o * 1e3:.1f} ms" for h, o in calib["overhead"].items()]
        + [f"async all-reduce 1-worker sub-batch[{h}] = {o * 1e3:.1f} ms" for h, o in calib["async_allreduce_sub"].items()]
        + [f"compression {c}: ratio {v.ratio:.1f}, {v.compress_s_per_B * 1e9:.2f} ns per fp32 byte, "
           f"{'allgather' if v.gather else 'allreduce'}, {'during' if v.overlapped else 'after'} backward"
           for c, v in calib["compressions"].items()]) + ".", ""]
    if val.empty:
        return md + ["No measured point to compare."]
    md.append(md_table(["mode", "head", "compression", "workers", "n", "measured img/s", "SE %", "predicted img/s",
                        "error", "verdict"],
                       [[r["mode"], r["head"], r["compression"], fmt(r["num_workers"], ".0f"), fmt(r["n"], ".0f"),
                         _pm(r["ips"], r["ips_se"]), fmt(r["rel_se"] * 100), fmt(r["predicted"]),
                         f"{r['rel_error'] * 100:+.1f}%" if pd.notna(r["rel_error"]) else "–", r["verdict"]]
                        for _, r in val.iterrows()]))
    test = val[~val["calibration"]]
    if test.empty:
        return md + ["", "Only calibration points were measured: the model is not tested by this study."]
    worst = test.loc[test["rel_error"].abs().idxmax()] if test["rel_error"].notna().any() else test.iloc[0]
    md += ["", f"Points the model was not calibrated on: {len(test)} ({verdict_counts(test)}). Largest error: "
               f"{fmt(worst['rel_error'] * 100, '+.1f')}% ({worst['mode']} {worst['head']} {worst['compression']}, "
               f"{int(worst['num_workers'])} workers, SE {fmt(worst['rel_se'] * 100)}%): {worst['verdict']}."]
    return md


# ------------------------------------------------------------------ projection
def projection_section(profs: dict, shards: int, seed: dict) -> list[str]:
    md = ["## Projection of this machine's model (CPU workers as GPUs)", "",
          f"Modeled speedup over one GPU of the same profile (async: {shards} PS shard{'s' if shards > 1 else ''}); "
          "in brackets the band from varying each assumed input one at a time: "
          f"{scaling.describe_ranges()} (x: factor on the profile's value).", ""]
    rows = []
    for name, prof in profs.items():
        for mode in ("sync", "async"):
            for head in ("gap", "fc4096"):
                if head not in prof.workloads or (mode == "async" and name == "local" and head not in prof.async_update):
                    continue
                lo, hi = scaling.speedup_band(prof, mode, head, scaling.PROJECTION_GPUS, shards)
                cells = [f"{prof.speedup(mode, head, p, shards):.2f} ({lo[i]:.2f}–{hi[i]:.2f})" if p in (2, 8, 48)
                         else f"{prof.speedup(mode, head, p, shards):.2f}" for i, p in enumerate(scaling.PROJECTION_GPUS)]
                pr = prof.predict(mode, head, 48, shards)
                sat = prof.predict(mode, head, 1, shards).saturation_workers if mode == "async" else None
                rows.append([name, mode, head, *cells, pr.bound, fmt(sat, ".1f")])
    if rows:
        md.append(md_table(["profile", "mode", "head", *map(str, scaling.PROJECTION_GPUS), "bound @48",
                            "PS saturates at p"], rows))
    md += ["", f"Seed study for comparison: {seed['text']} — a lower bound (drawn as ▲ with an arrow up).", "",
           "Assumptions and sources:", "",
           "- sync: t = t_compute + t_comm − min(t_comm, overlap × 2/3 × t_compute); hierarchical ring "
           "(2(g−1)α + 2(g−1)/g·n/B within a node, then the same over nodes through one NIC a node); fp16 halves n.",
           "- async: updates/s = min(p / (t_compute + push/pull), S·B_ps / 2n); expected staleness p − 1."]
    for name, prof in profs.items():
        md.append(f"- **{name}**: {prof.description}.")
        md += [f"  - {k}: {v}" for k, v in prof.sources.items()]
        md += [f"  - workload {w.head}: {w.t_compute * 1e3:.1f} ms/step at batch {w.batch}, gradient "
               f"{w.grad_bytes / 1e6:.1f} MB fp32 ({w.source})" for w in prof.workloads.values()]
        md += [f"  - {a}" for a in prof.assumptions]
    return md


GPU_ARMS = (("sync_allreduce", 1), ("async_allreduce", 1), ("sync_ps", 4), ("async_ps", 4))
GPU_HEAD, GPU_BATCH = "gap", 64


def gpu_rows(names: list[str]) -> dict[str, list[dict]]:
    """The measured-terms model's projection with bands, per GPU profile, for every arm."""
    return {n: [r for arm, s in GPU_ARMS for r in scaling.projection_rows(n, GPU_HEAD, GPU_BATCH, arm, s)]
            for n in names}


def gpu_model_section(rows: dict[str, list[dict]], seed: dict) -> list[str]:
    """Projection to 48 GPUs (issue 12 model), the seed table, every input with its source, the K80 check."""
    from compare import validate

    md = ["## Projection to 48 GPUs: the measured-terms model", "",
          f"cnn11 {GPU_HEAD} head, batch {GPU_BATCH} per GPU, fp32 gradients. Speedup over one GPU of the same "
          "profile; in brackets the band from varying each assumed input alone over its stated range (inputs "
          "below); 'moves most': the input whose range moves the 48-GPU figure most. Modeled, not measured.", ""]
    table = []
    for name, rs in rows.items():
        for arm, shards in GPU_ARMS:
            pts = {r["p"]: r for r in rs if r["arm"] == arm and r["shards"] == shards}
            cells = [f"{pts[p]['speedup']:.1f} ({pts[p]['low']:.1f}–{pts[p]['high']:.1f})" if p in (8, 48)
                     else f"{pts[p]['speedup']:.1f}" for p in scaling.PROJECTION_GPUS]
            table.append([name, arm + (f" ({shards} PS)" if arm.endswith("ps") else ""), *cells,
                          str(pts[48]["most"] or "none")])
    md += [md_table(["profile", "arm", *map(str, scaling.PROJECTION_GPUS), "moves most"], table), "",
           f"Seed study: {seed['text']} — a lower bound.", ""]
    if "tsubame2.5" in rows:
        _, seed_md = scaling.seed_table()
        md += ["### What the seed's '>30x at 48 GPUs' implies (tsubame2.5)", "", seed_md, ""]
    for name in rows:
        md += [f"### Inputs: {name}", "", scaling.inputs_markdown(name), ""]
    try:
        md += ["### The model against published multi-node results (K80, tf_cnn_benchmarks)", "",
               validate.report_markdown(), ""]
    except (OSError, ValueError) as e:
        md += [f"(no K80 comparison: {e})", ""]
    return md


# ------------------------------------------------------------------ emulated cluster
def emulated_validation(df: pd.DataFrame, benches: dict) -> tuple[pd.DataFrame, dict, dict]:
    """Predicted vs measured per (link, run kind); per-run points; the inputs per link."""
    ok = df[(df["status"] == "ok") & df["images_per_sec"].notna() & (df["link"] != "")]
    if ok.empty:
        return pd.DataFrame(), {}, {"inputs": {}, "links": [], "missing": []}
    kinds = ok.apply(calibration.emulated_kind, axis=1)
    batch = int(ok["per_worker_batch"].iloc[0])
    plain = ok[ok["compression"] == "none"]["gradient_bytes"].dropna()  # fp32 (a fp16 record's are halved)
    n = float(plain.iloc[0]) if len(plain) else float("nan")
    links = sorted(ok["link"].unique(), key=scaling.rate_bps, reverse=True)
    inputs, rows, points, missing = {}, [], {}, []
    for link in links:
        inp = calibration.link_inputs(df, benches, link, batch)
        for kind in (k for k in EMULATED_RUNS if not k.startswith("ceil-")):  # every arm at 1 and 2 nodes
            g = ok[(ok["link"] == link) & (kinds == kind)]
            if g.empty:
                continue
            points[(link, kind)] = list(g["images_per_sec"])
            mode, p = kind.split("-")[0], int(kind.split("-")[1][0])
            mean = float(g["images_per_sec"].mean())
            se = mean_se(g["images_per_sec"], g["images_per_sec_se"]) / mean
            pred = scaling.emulated_predict(mode, p, inp, batch, n) if inp else float("nan")
            err = (pred - mean) / mean
            cal = p == 1
            why = calibration.NO_BENCH + " for this link" if not inp else \
                "no prediction: no 1-node run of this arm" if math.isnan(pred) else None
            rows.append({"link": link, "run": kind, "n": len(g), "mean": mean, "se": se * mean, "rel_se": se,
                         "predicted": pred, "rel_error": err, "calibration": cal,
                         "verdict": why or ("calibration point" if cal else verdict(err, se))})
        if inp:
            inputs[link] = inp
        else:
            missing.append(link)
    return pd.DataFrame(rows), points, {"inputs": inputs, "links": links, "missing": missing, "batch": batch, "n": n}


def emulated_section(df: pd.DataFrame, val: pd.DataFrame, info: dict, benches: dict) -> list[str]:
    n, batch = info.get("n", float("nan")), info.get("batch")
    md = ["## Emulated cluster: model inputs per link rate (all measured in this study)", "",
          f"n = {fmt(n / 1e6, '.2f')} MB of fp32 gradients (the records' gradient_bytes), batch {batch} per worker.", ""]
    if info["inputs"]:
        md.append(md_table(["link", "tc rate (MB/s)", "alpha (ms)", "B (MB/s)", "B / rate", "t1s sync step (ms)",
                            "t1a async update (ms)", "t1r async all-reduce sub-batch (ms)", "kappa(2)", "allreduce(n) model (ms)", "bench runs",
                            "bench exchange of n (ms) / n at the tc rate (ms)"],
                           [[link, fmt(scaling.rate_bps(link) / 8e6, ".0f"), fmt(i["alpha"] * 1e3, ".2f"),
                             fmt(i["bw"] / 1e6, ".0f"), fmt(i["bw"] * 8 / scaling.rate_bps(link), ".2f"),
                             fmt(i["t1s"] * 1e3, ".0f") + f" (n={i['n_s1']})", fmt(i["t1a"] * 1e3 if i.get("t1a") else None, ".0f") + f" (n={i['n_a1']})",
                             fmt(i["t1r"] * 1e3 if i.get("t1r") else None, ".0f") + f" (n={i.get('n_r1', 0)})",
                             fmt(i["kappa"], ".3f") + f" (n={i['n_ceil']})",
                             fmt(scaling.ring_time(n, 2, i["alpha"], i["bw"]) * 1e3, ".0f"), str(i["bench_reps"]),
                             f"{fmt(i['bench_times'][-1] * 1e3, '.0f')} / {fmt(n / (scaling.rate_bps(link) / 8) * 1e3, '.0f')}"]
                            for link, i in info["inputs"].items()]))
    for link in info["missing"]:
        md.append(f"- {link}: **{calibration.NO_BENCH}** (or no 1-node run) at this link rate: no prediction.")
    md += ["", "## Emulated cluster: predicted vs measured, every point", "",
           "Measured = mean ± SE over repeats (one run: its own SE over windows); 1-node points calibrate the "
           "model (t1s, t1a) and are exact by construction; 2-node points test it.", ""]
    if not val.empty:
        md.append(md_table(["link", "run", "n", "measured img/s", "SE %", "predicted img/s", "error", "verdict"],
                           [[r["link"], r["run"], str(r["n"]), _pm(r["mean"], r["se"]), fmt(r["rel_se"] * 100),
                             fmt(r["predicted"]), fmt(r["rel_error"] * 100, "+.1f") + ("%" if pd.notna(r["rel_error"]) else ""),
                             r["verdict"]] for _, r in val.iterrows()]))
        test = val[~val["calibration"] & val["rel_error"].notna()]
        if len(test):
            md += ["", f"2-node points: {len(test)} ({verdict_counts(test)})."]
            for link in info["links"]:
                t = test[test["link"] == link]
                if len(t):
                    w = t.loc[t["rel_error"].abs().idxmax()]
                    md.append(f"- {link}: largest error {w['rel_error'] * 100:+.1f}% ({w['run']}, SE "
                              f"{w['rel_se'] * 100:.1f}%): {w['verdict']}")
    when = []
    ok = df[(df["status"] == "ok") & (df["link"] != "")]
    for link in info["links"]:
        starts = sorted(str(s)[11:16] for s in ok[ok["link"] == link]["started_at"])
        bench_at = sorted(str(b.get("measured_at", ""))[11:16] for b in benches.get(link.lower(), []))
        when.append(f"- {link}: runs started {', '.join(dict.fromkeys(starts))}; bench {', '.join(bench_at) or 'none'} (UTC)")
    return md + ["", "When each input was measured (the model pairs inputs and 2-node points of the same link rate):",
                 "", *when]


def emulated_compression(df: pd.DataFrame, info: dict) -> pd.DataFrame:
    """Sync runs on 2 nodes per (link, compression) when a link has compressed ones (issue 15): images/sec, bytes,
    compress time, against none's on the same link, and the emulated model with each method's measured cost
    (its bytes ratio and compress time from the records; t1s, kappa, alpha and B as for the other points)."""
    ok = usable(df)
    ok = ok[(ok["link"] != "") & (ok["mode"] == "sync")]
    if ok.empty or set(ok["compression"]) == {"none"}:
        return pd.DataFrame()
    costs = calibration.compression_costs(df)
    n, rows = info.get("n", math.nan), []
    for link in info["links"]:
        here = ok[ok["link"] == link]
        two, one = here[here["num_workers"] == 2], here[(here["num_workers"] == 1) & (here["compression"] == "none")]
        if set(two["compression"]) <= {"none"}:
            continue
        base = two[two["compression"] == "none"]["images_per_sec"]
        b_mean = float(base.mean()) if len(base) else math.nan
        b_se = mean_se(base, two[two["compression"] == "none"]["images_per_sec_se"]) if len(base) else math.nan
        one_ips = float(one["images_per_sec"].mean()) if len(one) else math.nan
        inp = info["inputs"].get(link)
        for comp in sorted(set(two["compression"]), key=lambda c: (c != "none", c)):
            g = two[two["compression"] == comp]
            mean, se = float(g["images_per_sec"].mean()), mean_se(g["images_per_sec"], g["images_per_sec_se"])
            try:
                cost = scaling.compression_cost(comp, costs)  # the records' own cost, else a known one
            except scaling.ModelError:
                cost = None
            pred = scaling.emulated_predict("sync", 2, inp, int(g["per_worker_batch"].iloc[0]), n, cost) \
                if inp and cost is not None and not math.isnan(n) else math.nan
            words, rel, rel_se = difference(mean, se, b_mean, b_se)
            err = (pred - mean) / mean
            rows.append({"link": link, "compression": comp, "n": len(g), "mean": mean, "se": se,
                         "runs": list(g["images_per_sec"]), "one_node": one_ips,
                         "sent": float(g["bytes_sent_per_step"].mean()),
                         "compress_ms": float(g["compress_time_s_per_step"].fillna(0.0).mean()) * 1e3,
                         "vs_none": rel, "vs_none_se": rel_se, "vs_none_words": words,
                         "speedup_1n": mean / one_ips if one_ips else math.nan,
                         "predicted": pred, "rel_error": err,
                         "verdict": verdict(err, se / mean) if not math.isnan(pred) else calibration.NO_BENCH})
    return pd.DataFrame(rows)


def emulated_compression_section(comp: pd.DataFrame) -> list[str]:
    if comp.empty:
        return []
    md = ["## Compressed gradients on the emulated links (sync arm, 2 workers on 2 nodes, issue 15)", "",
          "Per link rate: each method's images/sec (mean ± SE over repeats) against none's on the same link "
          "(*higher*/*lower* only beyond 2 SE of the ratio, else *indistinguishable*), the speedup of 2 nodes over "
          "1 uncompressed worker on 1 node, the bytes each worker handed Horovod a step and the compress + "
          "decompress time (records), and the emulated model with that method's bytes ratio and compress time "
          "(measured in these records, not fitted) in place of none's.", ""]
    for link, g in comp.groupby("link", sort=False):
        none_sent = g[g["compression"] == "none"]["sent"].mean()
        md += [f"{link}:", "", md_table(
            ["method", "runs", "images/sec", "vs none", "2 nodes / 1 node", "sent MB/step", "fewer bytes",
             "compress ms/step", "model img/s", "error", "verdict"],
            [[r["compression"], str(r["n"]), _pm(r["mean"], r["se"]),
              "(baseline)" if r["compression"] == "none" else
              f"{fmt(r['vs_none'] * 100, '+.0f')}% ± {fmt(r['vs_none_se'] * 100, '.0f')}: {r['vs_none_words']}",
              fmt(r["speedup_1n"], ".2f"), fmt(r["sent"] / 1e6, ".2f"),
              fmt(none_sent / r["sent"] if r["sent"] else math.nan, ".1f") + "x", fmt(r["compress_ms"], ".0f"),
              fmt(r["predicted"]), fmt(r["rel_error"] * 100, "+.1f") + ("%" if pd.notna(r["rel_error"]) else ""),
              r["verdict"]] for _, r in g.iterrows()]), ""]
    return md


# ------------------------------------------------------------------ convergence (issue 6)
def convergence_runs(df: pd.DataFrame, target: float) -> pd.DataFrame:
    """One row per ok main run whose curve holds held-out top-1 at >= 2 epochs: when it first reached
    `target` (epoch, wall-clock s since training start, images), or reached=False; best and final accuracy."""
    rows = []
    for _, r in df[(df["status"] == "ok") & (df["role"] == "main")].iterrows():
        curve = [c for c in (r["_record"].get("curve") or []) if "val_top1" in c and "wall_s" in c]
        if len(curve) < 2:
            continue
        hit = next((c for c in curve if c["val_top1"] >= target), None)
        rows.append({"run_id": r["run_id"], "mode": r["mode"], "num_workers": int(r["num_workers"]),
                     "compression": r["compression"], "seed": (r["_record"].get("config") or {}).get("seed"),
                     "epochs": len(curve), "reached": hit is not None, "epoch": hit["epoch"] if hit else None,
                     "time_s": hit["wall_s"] if hit else None, "images": hit["images"] if hit else None,
                     "best": max(c["val_top1"] for c in curve), "final": curve[-1]["val_top1"],
                     "total_s": curve[-1]["wall_s"], "images_per_sec": r["images_per_sec"], "curve": curve})
    cols = ["run_id", "mode", "num_workers", "compression", "seed", "epochs", "reached", "epoch", "time_s",
            "images", "best", "final", "total_s", "images_per_sec", "curve"]
    out = pd.DataFrame(rows, columns=cols)
    for col in ("time_s", "images", "epoch"):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    return out.sort_values(plots.CONV_KEY + ["seed", "run_id"]).reset_index(drop=True) if len(out) else out


def _stats(s: pd.Series) -> tuple[float, float, float, float]:
    return (s.mean() if len(s) else math.nan, s.std(ddof=1) if len(s) > 1 else math.nan,
            s.min() if len(s) else math.nan, s.max() if len(s) else math.nan)


def convergence_summary(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for key, g in runs.groupby(plots.CONV_KEY, sort=True):
        hit = g[g["reached"]]
        t, im = _stats(hit["time_s"]), _stats(hit["images"])
        rows.append({**dict(zip(plots.CONV_KEY, key)), "n": len(g), "reached": len(hit),
                     **dict(zip(("time_mean", "time_sd", "time_min", "time_max"), t)),
                     **dict(zip(("images_mean", "images_sd", "images_min", "images_max"), im)),
                     "epoch_mean": hit["epoch"].mean() if len(hit) else math.nan,
                     "best_mean": g["best"].mean(), "final_mean": g["final"].mean(),
                     "final_sd": g["final"].std(ddof=1) if len(g) > 1 else math.nan,
                     "ips_mean": pd.to_numeric(g["images_per_sec"], errors="coerce").mean()})
    return pd.DataFrame(rows)


def _spread(mean, sd, lo, hi, spec=".1f") -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{fmt(mean, spec)} ± {fmt(sd, spec)} ({fmt(lo, spec)}–{fmt(hi, spec)})"


def convergence_section(runs: pd.DataFrame, summary: pd.DataFrame, target: float) -> list[str]:
    md = ["## Convergence: time and images to " f"{target:.0%} held-out top-1", "",
          "Every run evaluates the held-out split after every epoch; a run reaches the target at the first epoch "
          "whose held-out top-1 is at or above it (epoch-end times, evaluation included, since training start). "
          "Mean ± SD over the runs that reached it (min–max in brackets); a run that never reached it is counted "
          "in `reached` and listed below.", "",
          md_table(["mode", "workers", "compression", "reached", "time to target (s)", "images to target",
                    "epoch (mean)", "best top-1 (mean)", "final top-1 (mean)", "images/sec (mean)"],
                   [[r["mode"], str(int(r["num_workers"])), r["compression"], f"{r['reached']}/{r['n']}",
                     _spread(r["time_mean"], r["time_sd"], r["time_min"], r["time_max"]),
                     _spread(r["images_mean"], r["images_sd"], r["images_min"], r["images_max"], ".0f"),
                     fmt(r["epoch_mean"]), fmt(r["best_mean"], ".3f"), fmt(r["final_mean"], ".3f"),
                     fmt(r["ips_mean"])] for _, r in summary.iterrows()]),
          "", "Every run:", "",
          md_table(["run", "seed", "epochs", f"reached {target:.0%}", "epoch", "time (s)", "images", "best top-1",
                    "final top-1"],
                   [[r["run_id"], fmt(r["seed"], ".0f"), str(r["epochs"]),
                     "yes" if r["reached"] else "**never** (within the epoch budget)", fmt(r["epoch"], ".0f"),
                     fmt(r["time_s"]), fmt(r["images"], ".0f"), fmt(r["best"], ".3f"), fmt(r["final"], ".3f")]
                    for _, r in runs.iterrows()])]
    return md


# ------------------------------------------------------------------ compressed gradients (issue 15)
ACCURACY_TOLERANCE = 0.01  # "within 1 point of none's final held-out top-1"
# (head, batch per GPU) of the compression projection: the GPU section's workload, the large fc4096 head, and
# fc4096 at the small batch where the model has the interconnect bind (where fewer bytes can pay)
COMPRESSION_WORKLOADS = (("gap", GPU_BATCH), ("fc4096", GPU_BATCH), ("fc4096", 4))


def compression_projection_rows(costs: dict) -> dict[str, list[dict]]:
    """tsubame2.5, sync all-reduce: each measured compression method's projection ('head, batch' -> rows),
    when the study measured any method beyond none."""
    if not any(c != "none" for c in costs):
        return {}
    methods = {"none": scaling.KNOWN_COMPRESSIONS["none"], **costs}
    return {f"{h}, batch {b}": [r for c in methods.values()
                                for r in scaling.projection_rows("tsubame2.5", h, b, "sync_allreduce", compression=c)]
            for h, b in COMPRESSION_WORKLOADS}


def accuracy_words(delta: float) -> str:
    """A method's final held-out top-1 against none's (delta = method - none, a fraction)."""
    if delta is None or math.isnan(delta):
        return "–"
    if delta >= -ACCURACY_TOLERANCE:
        return f"within {ACCURACY_TOLERANCE * 100:.0f} point of none ({delta * 100:+.1f})"
    return f"falls short of none by {-delta * 100:.1f} points"


def compression_section(df: pd.DataFrame, table: pd.DataFrame, summary: pd.DataFrame, val: pd.DataFrame,
                        target: float, proj: dict[str, list[dict]], no_model: str) -> list[str]:
    """Per worker count with sync runs without and with compression: bytes per step (records), final held-out
    top-1 vs none's, time to target, compress time, images/sec and the local model; then the GPU projection."""
    ok = usable(df)
    sync = ok[(ok["mode"] == "sync") & (ok["link"] == "")]
    ps = [p for p in sorted(sync["num_workers"].unique())
          if "none" in set(sync[sync["num_workers"] == p]["compression"])
          and len(set(sync[sync["num_workers"] == p]["compression"])) > 1]
    if not ps:  # compressed runs only on the emulated links: their section is above; the projection here
        return _compression_projection(proj, ["## Gradient compression on modeled GPUs (issue 15)", "",
                                              "Each method's bytes ratio and compress time come from this study's "
                                              "sync records (the emulated links' section above).", ""]) if proj else []
    md = ["## Gradient compression (sync arm, issue 15)", "",
          "Per method, from the records: bytes each worker handed Horovod a step (`bytes_sent_per_step`; what it got "
          "back: `bytes_received_per_step`) and that against none's, the compress + decompress time a step "
          "(`compress_time_s_per_step`), images/sec (mean ± SE), time to target and the final held-out top-1 "
          f"(mean ± SD over seeds) against none's: *within {ACCURACY_TOLERANCE * 100:.0f} point* or by how much it "
          "falls short. The async PS arm has no compression: ParameterServerStrategy pushes fp32 gradients "
          "through the variables' own apply ops and exposes no hook (its records say `compression_supported: false`).", ""]
    for p in ps:
        g = sync[sync["num_workers"] == p]
        none_sent = g[g["compression"] == "none"]["bytes_sent_per_step"].mean()
        none_final = _summary_value(summary, "sync", p, "none", "final_mean")
        rows = []
        for comp in sorted(set(g["compression"]), key=lambda c: (c != "none", c)):
            m = g[g["compression"] == comp]
            t = table[(table["mode"] == "sync") & (table["num_workers"] == p) & (table["compression"] == comp)
                      & (table["link"] == "")]
            v = val[(val["mode"] == "sync") & (val["num_workers"] == p) & (val["compression"] == comp)] \
                if not val.empty else val
            sent, final = m["bytes_sent_per_step"].mean(), _summary_value(summary, "sync", p, comp, "final_mean")
            rows.append([comp, str(len(m)), fmt(sent / 1e3, ".1f"), fmt(m["bytes_received_per_step"].mean() / 1e3, ".1f"),
                         fmt(none_sent / sent if sent else math.nan, ".1f", "–") + ("x" if sent and none_sent else ""),
                         fmt(m["compress_time_s_per_step"].mean() * 1e3, ".1f"),
                         _pm(t.iloc[0]["ips"], t.iloc[0]["ips_se"]) if len(t) else "–",
                         _spread(*[_summary_value(summary, "sync", p, comp, k)
                                   for k in ("time_mean", "time_sd", "time_min", "time_max")]),
                         f"{fmt(_summary_value(summary, 'sync', p, comp, 'reached'), '.0f')}/{len(m)}",
                         f"{fmt(final, '.3f')} ± {fmt(_summary_value(summary, 'sync', p, comp, 'final_sd'), '.3f')}",
                         "(baseline)" if comp == "none" else accuracy_words(final - none_final),
                         fmt(v.iloc[0]["predicted"]) if len(v) else "–",
                         v.iloc[0]["verdict"] if len(v) else no_model])
        md += [f"{int(p)} workers:", "",
               md_table(["method", "runs", "sent kB/step", "received kB/step", "fewer bytes than none",
                         "compress ms/step", "images/sec", f"time to {target:.0%} (s)", "reached",
                         "final top-1 (mean ± SD)", "vs none", "local model img/s", "verdict"], rows), ""]
    return _compression_projection(proj, md)


def _compression_projection(proj: dict[str, list[dict]], md: list[str]) -> list[str]:
    if proj:
        md += ["### Compressed gradients on tsubame2.5 (modeled, not measured)", "",
               "The measured-terms model's sync all-reduce (batch per GPU as given) with each method's measured "
               "bytes ratio, its compress time per fp32 gradient "
               "byte carried to the paper's gradient (an assumption: the band varies it from x"
               f"{scaling.COMPRESS_SCALE_RANGE[0]:g} to x{scaling.COMPRESS_SCALE_RANGE[1]:g}, a GPU faster than this "
               "CPU core at it up to as slow), an allgather's bytes growing with p (top-k), and no overlap with "
               "backward for the methods that exchange after it. Speedup over one GPU (band):", "",
               md_table(["workload", "method", "8 GPUs", "48 GPUs", "moves most @48"],
                        [[h, r8["compression"], f"{r8['speedup']:.1f} ({r8['low']:.1f}–{r8['high']:.1f})",
                          f"{r48['speedup']:.1f} ({r48['low']:.1f}–{r48['high']:.1f})", str(r48["most"] or "none")]
                         for h, rs in proj.items()
                         for r8, r48 in [(a, b) for a in rs for b in rs
                                         if a["compression"] == b["compression"] and a["p"] == 8 and b["p"] == 48]]), ""]
    return md


def _summary_value(summary: pd.DataFrame, mode: str, p: int, comp: str, col: str) -> float:
    if summary.empty or col not in summary:
        return math.nan
    s = summary[(summary["mode"] == mode) & (summary["num_workers"] == p) & (summary["compression"] == comp)]
    return float(s.iloc[0][col]) if len(s) and pd.notna(s.iloc[0][col]) else math.nan


# ------------------------------------------------------------------ the seed's async all-reduce (issue 16)
HYPOTHESIS = ("The seed's hypothesis: shortening the weight-update period matters most for speed, at the price "
              "of stale weights. The async all-reduce arm tests it: each rank computes without waiting and a "
              "communication thread applies whatever has accumulated, so an update's period is the all-reduce's, "
              "not the slowest rank's step.")


def async_allreduce_section(df: pd.DataFrame, table: pd.DataFrame, val: pd.DataFrame, summary: pd.DataFrame,
                            profile, target: float, no_model: str) -> list[str]:
    ok = usable(df)
    ar = ok[(ok["mode"] == "async_allreduce") & (ok["link"] == "")]
    if ar.empty:
        return []
    md = ["## Asynchronous all-reduce (the seed's method, issue 16)", "", HYPOTHESIS, "",
          "Measured beside the other arms at the same worker count (images/sec mean ± SE). An update's period: "
          "1 / updates per second (sync: one update a global batch, so batch × workers / images per second). "
          "Effective mini-batch: sub-batches summed into an update; staleness: updates applied between the weights "
          "a sub-batch was computed on and its own update (exact histograms in the records, all runs pooled). "
          "Model: the local profile's async all-reduce arm (images/sec by compute alone, updates/sec by the "
          "all-reduce period).", ""]
    workload = ["head", "width", "image_size", "per_worker_batch"]
    keys = sorted(set(map(tuple, ar[workload].itertuples(index=False))))
    key = dict(zip(workload, keys[0]))  # one workload: the arms compared on the same one
    md += [f"Workload: cnn11 {key['head']} head, width {key['width']:g}, {key['image_size']:.0f} px, batch "
           f"{key['per_worker_batch']:.0f} per worker" + (f" ({len(keys) - 1} other workload(s) of this arm: see the "
                                                           "measured table)" if len(keys) > 1 else "") + ".", ""]

    def same(d: pd.DataFrame) -> pd.DataFrame:
        mask = pd.Series(True, index=d.index)
        for k, v in key.items():
            mask &= d[k] == v
        return d[mask]

    ar, table = same(ar), same(table)
    rows, facts = [], {}
    hists = {f: pooled_histograms(same(df), "async_allreduce", f) for f in ("effective_batch", "staleness")}
    for p, g in ar.groupby("num_workers"):
        p = int(p)
        t = {m: table[(table["mode"] == m) & (table["num_workers"] == p) & (table["compression"] == "none")
                      & (table["link"] == "")] for m in MODES}
        ips = {m: (t[m].iloc[0]["ips"], t[m].iloc[0]["ips_se"]) if len(t[m]) else (math.nan, math.nan) for m in MODES}
        ups = float(g["updates_per_sec"].mean())
        ups_se = mean_se(g["updates_per_sec"])
        sync_period = p * float(key["per_worker_batch"]) / ips["sync"][0]
        eff, stale = (histogram_stats(hists[f].get(p, {})) for f in ("effective_batch", "staleness"))
        v = val[(val["mode"] == "async_allreduce") & (val["num_workers"] == p) & (val["head"] == key["head"])] \
            if not val.empty else val
        pred = None
        if profile is not None:
            try:
                pred = profile.predict("async_allreduce", key["head"], p)
            except scaling.ModelError:
                pred = None
        facts[p] = {"ips": ips, "period": 1 / ups if ups else math.nan, "sync_period": sync_period,
                    "ups": ups, "ups_se": ups_se, "stale": stale, "eff": eff}
        rows.append([str(p), str(len(g)), _pm(*ips["async_allreduce"]), _pm(*ips["sync"]), _pm(*ips["async"]),
                     fmt(g["compute_images_per_sec"].mean()), _pm(ups, ups_se, ".2f"),
                     f"{fmt(1e3 / ups if ups else math.nan, '.0f')} / {fmt(sync_period * 1e3, '.0f')}",
                     f"{fmt(eff['mean'], '.2f')} / {fmt(eff['p95'], '.0f')} / {fmt(eff['max'], '.0f')}",
                     f"{fmt(stale['mean'], '.2f')} / {fmt(stale['p95'], '.0f')} / {fmt(stale['max'], '.0f')}",
                     fmt(pred.images_per_sec) if pred else "–", fmt(pred.updates_per_sec, ".2f") if pred else "–",
                     v.iloc[0]["verdict"] if len(v) else no_model])
    md += [md_table(["workers", "runs", "async all-reduce img/s", "sync img/s", "PS img/s", "ranks' compute img/s",
                     "updates/s", "update period ms (this / sync)", "effective batch mean / p95 / max (sub-batches)",
                     "staleness mean / p95 / max", "model img/s", "model updates/s", "model verdict (img/s)"], rows), ""]
    md += hypothesis_words(facts, summary, target)
    return md + [""]


def hypothesis_words(facts: dict, summary: pd.DataFrame, target: float) -> list[str]:
    """What the measured numbers say about the hypothesis, at the largest worker count measured for both arms."""
    both = [p for p, f in facts.items() if p > 1 and not math.isnan(f["ips"]["sync"][0])]
    if not both:
        return ["What the measurements say: nothing yet — no multi-worker async all-reduce run with a sync run "
                "beside it."]
    p = max(both)
    f = facts[p]
    word, rel, se = difference(*f["ips"]["async_allreduce"], *f["ips"]["sync"])
    speed = {"higher": f"**higher** than the sync arm's by {rel * 100:.1f}% (SE {se * 100:.1f}%: beyond 2 SE)",
             "lower": f"**lower** than the sync arm's by {-rel * 100:.1f}% (SE {se * 100:.1f}%: beyond 2 SE)",
             "indistinguishable": f"not distinguishable from the sync arm's ({rel * 100:+.1f}%, SE {se * 100:.1f}%: "
                                  "within 2 SE)",
             "untestable": f"{fmt(rel * 100, '+.1f')}% against the sync arm's, with no SE to test it"}[word]
    period = f["period"] / f["sync_period"] if f["sync_period"] else math.nan
    lines = ["What the measurements say (words from the numbers above):", "",
             f"- At {p} workers the async all-reduce updated the weights every {fmt(f['period'] * 1e3, '.0f')} ms, "
             f"the sync arm every {fmt(f['sync_period'] * 1e3, '.0f')} ms "
             f"({'shorter' if period < 1 else 'not shorter'}: ratio {fmt(period, '.2f')}), summing "
             f"{fmt(f['eff']['mean'], '.2f')} sub-batches an update.",
             f"- Its images/sec was {speed}.",
             f"- The price: its sub-batches were {fmt(f['stale']['mean'], '.2f')} updates stale on average "
             f"(p95 {fmt(f['stale']['p95'], '.0f')}, max {fmt(f['stale']['max'], '.0f')}); the sync arm's are never stale."]
    if not period < 1:
        lines.append(f"- So at {p} workers here the update period was not shorter than the sync arm's: these runs do "
                     "not test the hypothesis's speed claim.")
    elif word == "higher":
        lines.append(f"- So at {p} workers here a shorter update period came with more images/sec: consistent with "
                     "the hypothesis's speed claim.")
    else:
        lines.append(f"- So at {p} workers here the shorter update period did not show as more images/sec "
                     f"({'lower' if word == 'lower' else 'no difference beyond 2 SE' if word != 'untestable' else 'no SE'}):"
                     " these runs do not support the hypothesis's speed claim.")
    ar_img = _summary_value(summary, "async_allreduce", p, "none", "images_mean")
    sy_img = _summary_value(summary, "sync", p, "none", "images_mean")
    if not (math.isnan(ar_img) or math.isnan(sy_img)):
        ar_t = _summary_value(summary, "async_allreduce", p, "none", "time_mean")
        sy_t = _summary_value(summary, "sync", p, "none", "time_mean")
        lines.append(f"- To {target:.0%} held-out top-1 it needed {ar_img:.0f} images (sync {sy_img:.0f}: ratio "
                     f"{ar_img / sy_img:.2f}) and {fmt(ar_t)} s (sync {fmt(sy_t)} s: ratio {fmt(ar_t / sy_t, '.2f')}), "
                     "means over the seeds that reached it (see the convergence table for the spread).")
    elif not summary.empty:
        lines.append(f"- Time to accuracy: no async all-reduce or sync run at {p} workers reached {target:.0%} "
                     "(see the convergence table).")
    return lines


# ------------------------------------------------------------------ reference beside
def reference_section(study_dir: str, table: pd.DataFrame) -> list[str]:
    name = os.path.basename(os.path.normpath(study_dir))
    ref_dir = os.path.join(os.path.dirname(os.path.normpath(study_dir)), "reference", name)
    if os.path.abspath(ref_dir) == os.path.abspath(study_dir) or not os.path.isdir(ref_dir):
        return []
    try:
        ref = load(ref_dir)
    except FrameError as e:
        return ["## Beside the reference study", "", f"results/reference/{name}: {e}."]
    rt = speedup_table(ref.df)
    key = ["mode", "head", "compression", "link", "num_workers"]
    both = table.merge(rt, on=key, how="outer", suffixes=("", "_ref"))
    shas = sorted({str(s)[:10] for s in ref.df["git_sha"]})
    hosts = sorted(set(ref.df["host"]))
    days = sorted({str(s)[:10] for s in ref.df["started_at"]})
    md = ["## Beside the reference study", "",
          f"Reference: `{ref_dir}` (hosts {', '.join(hosts)}, git {', '.join(shas)}, {' to '.join(dict.fromkeys([days[0], days[-1]]))}; "
          f"its own report: {os.path.join(ref_dir, 'report.md')}). Same configuration, this study's runs against its runs.", "",
          md_table(["mode", "head", "compression", "link", "workers", "this study img/s (n)", "reference img/s (n)",
                    "this speedup", "reference speedup"],
                   [[r["mode"], r["head"], r["compression"], r["link"] or "–", fmt(r["num_workers"], ".0f"),
                     f"{_pm(r['ips'], r['ips_se'])} ({fmt(r['n'], '.0f')})",
                     f"{_pm(r['ips_ref'], r['ips_se_ref'])} ({fmt(r['n_ref'], '.0f')})",
                     _pm(r["speedup"], r["speedup_se"], ".3f"), _pm(r["speedup_ref"], r["speedup_se_ref"], ".3f")]
                    for _, r in both.sort_values(key).iterrows()])]
    return md


# ------------------------------------------------------------------ the report
def _generated_readme(path: str, name: str) -> bool:
    """True when README.md is the one line write_report writes (a curated study's README, written by hand with
    its conditions, is never overwritten; found 2026-12-06 when regenerating reports replaced three)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text.startswith(f"Study `{name}`: ") and text.count("\n") <= 1 and "then `python -m compare report`" in text


def write_report(study_dir: str, profiles: list[str] | None = None, ps_shards: int = 1, out_dir: str | None = None,
                 command: str = "python -m compare report", target: float = 0.90,
                 notes: list[str] | None = None) -> str:
    """Write report.md and PNGs into out_dir (default study_dir); returns the report path. FrameError: nothing written."""
    profiles = list(profiles or scaling.PROFILE_NAMES)
    scaling.check_profile_names(profiles)
    frame = load(study_dir)
    df = frame.df
    info = _study_info(study_dir)
    out_dir = out_dir or study_dir
    os.makedirs(out_dir, exist_ok=True)
    seed = scaling.load_profile_data()["seed_claim"]
    table = speedup_table(df)
    cores = len(info.get("cores") or []) or 2
    local, calib = calibration.calibrate_local(df, table, calibration.load_bench(study_dir), cores)
    val = validation_table(table, local, calib)
    # The measured CPU workers' own projection (local); GPU profiles through the measured-terms model.
    profs = {"local": local} if "local" in profiles and local else {}
    gpus = gpu_rows([n for n in profiles if n != "local"])
    benches = calibration.load_link_benches(study_dir)
    dil_mask = df["_record"].apply(lambda r: isinstance(r.get("dilation"), dict))  # issue 14: its own section
    eval_, points, einfo = emulated_validation(df[~dil_mask], benches)

    figs: dict[str, plt.Figure | None] = {}
    if (table["link"] == "").any():
        where = ("CPU workers on this machine (one pinned core each)" if info.get("cluster") == "local"
                 else "workers (one a GPU or CPU task, as the jobs ran)")
        figs["measured.png"] = plots.plot_measured(df, table, local, os.path.join(out_dir, "measured.png"), where)
    if profs:
        figs["projection.png"] = plots.plot_projection(profs, seed, ps_shards, os.path.join(out_dir, "projection.png"))
    if gpus:
        figs["projection_gpus.png"] = plots.plot_gpu_projection(gpus, seed, os.path.join(out_dir, "projection_gpus.png"))
    figs["staleness.png"] = plots.plot_staleness(df, os.path.join(out_dir, "staleness.png"))
    conv = convergence_runs(df, target)
    summary = convergence_summary(conv) if not conv.empty else pd.DataFrame()
    comp_rows = compression_projection_rows(calib.get("compressions") or calibration.compression_costs(df))
    if comp_rows:
        figs["projection_compression.png"] = plots.plot_compression_projection(
            comp_rows, seed, os.path.join(out_dir, "projection_compression.png"))
    figs["async_allreduce.png"] = plots.plot_async_allreduce(df, os.path.join(out_dir, "async_allreduce.png"))
    if not conv.empty:
        for x, name in (("wall_s", "accuracy_vs_time.png"), ("images", "accuracy_vs_images.png")):
            figs[name] = plots.plot_accuracy_curves(conv, target, os.path.join(out_dir, name), x=x)
    if not eval_.empty:
        figs["emulated_validation.png"] = plots.plot_emulated_validation(
            eval_, points, einfo["links"], os.path.join(out_dir, "emulated_validation.png"))
    if einfo["inputs"]:
        figs["emulated_allreduce.png"] = plots.plot_emulated_allreduce(
            einfo["inputs"], einfo["n"], os.path.join(out_dir, "emulated_allreduce.png"))
        figs["emulated_projection.png"] = plots.plot_emulated_projection(
            einfo["inputs"], einfo["n"], einfo["batch"], seed, os.path.join(out_dir, "emulated_projection.png"))
    ecomp = emulated_compression(df[~dil_mask], einfo) if einfo["links"] else pd.DataFrame()
    if not ecomp.empty:
        figs["emulated_compression.png"] = plots.plot_emulated_compression(
            ecomp, os.path.join(out_dir, "emulated_compression.png"))
    figs = {k: v for k, v in figs.items() if v is not None}
    for fig in figs.values():
        plt.close(fig)

    name = os.path.basename(os.path.normpath(study_dir))
    fails = failed_runs(df)
    n_ok = int((df["status"] == "ok").sum())
    md = [f"# Scaling study `{name}`: " + " vs ".join(MODES[m] for m in MODES if m in set(df["mode"])), "",
          f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by `compare report`"
          + (f" ({info['cluster']} backend)" if info.get("cluster") else "") + ".", "",
          "## Conditions", "", *conditions(study_dir, df, info, command, notes or []), "",
          "## Runs", "",
          f"{len(df)} valid records: {n_ok} ok ({int(((df['status'] == 'ok') & (df['role'] == 'ceiling')).sum())} of "
          f"them side-by-side ceiling runs), {len(fails)} failed (listed, excluded from the statistics); "
          f"{frame.rejected} line(s) rejected (torn, or lacking the schema's required fields)."]
    if len(fails):
        md += ["", md_table(["run", "mode", "workers", "head", "link", "error"],
                            [[r.run_id, r.mode, fmt(r.num_workers, ".0f"), r.head, r.link or "–", str(r.error or "")[:200]]
                             for r in fails.itertuples()])]
    md += ["", *measured_section(df, table, calib), "",
           "## How the model's errors are worded", "",
           f"One rule in every report (goal {GOAL:.0%}; error and SE relative to the measured mean): *within the goal* "
           f"when |error| ≤ {GOAL:.0%} and the point's SE ≤ {GOAL:.0%}; *consistent within noise* when |error| ≤ 2 SE "
           f"but SE > {GOAL:.0%} (the measurement cannot test the goal); otherwise *misses*.", ""]
    if (table["link"] == "").any():
        md += [*local_model_section(local, calib, val), ""]
    if einfo["links"]:
        md += [*emulated_section(df, eval_, einfo, benches), ""]
        md += emulated_compression_section(ecomp)
    if dil_mask.any():
        from compare import dilated
        dcfg = info.get("config") or {}
        md += dilated.section(study_dir, list(df[dil_mask]["_record"]), dcfg.get("max_d_change", 0.03),
                              dcfg.get("min_link_fraction", 0.9))
    if profs:
        md += [*projection_section(profs, ps_shards, seed), ""]
    if gpus:
        md += [*gpu_model_section(gpus, seed), ""]
    if not conv.empty:
        md += [*convergence_section(conv, summary, target), ""]
    no_model = calib.get("missing") or "no prediction"  # why a point has no local-model prediction
    md += compression_section(df, table, summary, val, target, comp_rows, no_model)
    md += async_allreduce_section(df, table, val, summary, local, target, no_model)
    stale = usable(df)
    stale = stale[(stale["mode"] == "async") & stale["staleness_mean"].notna()]
    if not stale.empty:
        md += ["## Async staleness (parameter servers)", "",
               md_table(["workers", "runs", "mean", "p95", "max", "model (p − 1)"],
                        [[str(int(p)), str(len(g)), fmt(g["staleness_mean"].mean(), ".2f"),
                          fmt(g["staleness_p95"].mean(), ".1f"), fmt(g["staleness_max"].max(), ".0f"),
                          str(scaling.expected_staleness(int(p)))] for p, g in stale.groupby("num_workers")]), ""]
    md += reference_section(study_dir, table)
    md += ["", "## Figures", ""] + [f"![{k}]({k})" for k in figs]
    days = sorted({str(s)[:10] for s in df["started_at"]})
    readme = os.path.join(out_dir, "README.md")
    if not os.path.exists(readme) or _generated_readme(readme, name):  # a hand-written one holds conditions: kept
        with open(readme, "w", encoding="utf-8") as f:
            f.write(f"Study `{name}`: {n_ok} ok runs on {info.get('cpu') or ', '.join(sorted(set(df['host'])))}, "
                    f"{' to '.join(dict.fromkeys([days[0], days[-1]]))}; made by `{info.get('command') or 'jobs (see records)'}`"
                    " then `python -m compare report`; see report.md.\n")
    path = os.path.join(out_dir, "report.md")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    os.replace(path + ".tmp", path)
    return path
