"""`python -m compare report --cluster emulated`: predicted vs measured per link rate. pandas + matplotlib only.

The model (compare/scaling.py's alpha-beta ring and PS forms; one worker per emulated node, one link a node):
  inputs, all measured in the study, in the same passes over link rate L as the 2-node points:
    t1s  = sync step of 1 worker on 1 node          (sync-1n runs: batch / images per second, median)
    t1a  = async update of 1 worker, PS on its node (async-1n runs: batch / images per second, median)
    alpha_L, B_L from the Horovod MPI allreduce microbenchmark across the two nodes at link rate L
    kappa = sync-1n rate / rate of each of two 1-worker runs side by side on n1 and n2 (ceil-2n runs): the
            two emulated nodes share this machine's 2 cores (and its noise), so p > 1 computes slower
  sync, p workers on p nodes:   step = kappa t1s + t_ar,  t_ar = 2(p-1) alpha_L + 2(p-1)/p * n / B_L
  async, p workers, PS on n1:   worker k's update = t1a (+ 2 alpha_L + 2 n / B_L when k is not on the
                                PS's node: it pulls n and pushes n over the link); rate = sum_k 1/update_k,
                                capped by the PS's service time (t1a - t1s) per update. No kappa: t1a is
                                measured with chief, PS and worker already sharing the 2 cores (kappa
                                measures two compute-bound processes side by side, the sync condition)
  n = the model's fp32 gradient bytes (the records' gradient_bytes).
The 1-node runs are calibration points (exact by construction); the 2-node runs test the model.
"""
from __future__ import annotations

import datetime as _dt
import glob
import json
import math
import os
import platform
import re
import shlex
import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from compare import scaling  # noqa: E402
from compare.emulated import EmulatedError  # noqa: E402
from train.record import read_records  # noqa: E402

GOAL = 0.05
RATE_MULT = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
LINK_COLORS = ["tab:green", "tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:olive"]


def rate_bps(link: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(bit|kbit|mbit|gbit)", str(link).lower())
    return float(m.group(1)) * RATE_MULT[m.group(2)] if m else float("nan")


# ------------------------------------------------------------------ the model (pure)
def sync_step(t1s: float, p: int, n: float, alpha: float, bw: float, kappa: float = 1.0) -> float:
    """One worker a node: kappa * t1s + ring allreduce of n over p nodes."""
    return kappa * t1s + scaling.ring_time(n, p, alpha, bw)


def sync_ips(t1s: float, p: int, n: float, alpha: float, bw: float, batch: int, kappa: float = 1.0) -> float:
    return p * batch / sync_step(t1s, p, n, alpha, bw, kappa)


def async_ips(t1a: float, p: int, n: float, alpha: float, bw: float, batch: int, kappa: float = 1.0,
              t1s: float | None = None, local_workers: int = 1, shards: int = 1) -> float:
    """Images/sec of p async workers, one a node, the PS on node 1 with `local_workers` of them.

    A worker on the PS's node updates every kappa * t1a; a worker on another node also pulls n and pushes n
    over its link: kappa * t1a + 2 alpha + 2n / B. Caps (scaling.ps_update_rate's form): the PS's link
    carries 2n per remote update (S * B / 2n), and the PS serves one update at a time in its measured
    service time kappa * (t1a - t1s) (the part of a 1-node update beyond the sync step).
    """
    scaling._check_p(p)
    local = min(p, local_workers)
    remote = p - local
    t_local = kappa * t1a
    t_remote = kappa * t1a + 2 * alpha + 2 * n / bw
    remote_rate = min(remote / t_remote, shards * bw / (2 * n)) if remote else 0.0
    rate = local / t_local + remote_rate
    if t1s is not None and t1a > t1s:
        rate = min(rate, shards / (kappa * (t1a - t1s)))
    return batch * rate


def predict(run: str, inputs: dict, batch: int, n: float) -> float:
    mode, nodes = run.split("-")
    p = int(nodes[0])
    if mode == "sync":
        k = inputs.get("kappa", 1.0) if p > 1 else 1.0
        return sync_ips(inputs["t1s"], p, n, inputs["alpha"], inputs["bw"], batch, k)
    return async_ips(inputs["t1a"], p, n, inputs["alpha"], inputs["bw"], batch, 1.0, inputs["t1s"])


def project(inputs: dict, n: float, batch: int, gpus=scaling.PROJECTION_GPUS) -> dict:
    """Speedup at p nodes, one worker a node, with this link's alpha and B (sync: kappa(2); async: one PS)."""
    out = {"sync": {}, "async": {}}
    base_s = batch / inputs["t1s"]
    base_a = batch / inputs["t1a"]
    for p in gpus:
        k = inputs.get("kappa", 1.0) if p > 1 else 1.0
        out["sync"][p] = sync_ips(inputs["t1s"], p, n, inputs["alpha"], inputs["bw"], batch, k) / base_s
        out["async"][p] = async_ips(inputs["t1a"], p, n, inputs["alpha"], inputs["bw"], batch, 1.0,
                                    inputs["t1s"]) / base_a
    return out


# ------------------------------------------------------------------ loading
def _tag(tag) -> dict:
    return dict(part.split("=", 1) for part in str(tag or "").split(";") if "=" in part)


def load(study_dir: str) -> pd.DataFrame:
    path = os.path.join(study_dir, "runs.jsonl")
    if not os.path.isfile(path):
        raise EmulatedError(f"no runs file: {path}")
    recs, _ = read_records(path)
    rows = []
    for r in recs:
        t = _tag(r.get("tag"))
        if t.get("cluster") != "emulated":
            continue
        rows.append({"status": r.get("status"), "run": t.get("run"), "rep": int(t.get("rep", 0)),
                     "link": (r.get("link") or {}).get("rate") or t.get("link"), "tag_link": t.get("link"),
                     "mode": r.get("mode"), "num_workers": r.get("num_workers"), "ips": r.get("images_per_sec"),
                     "batch": r.get("per_worker_batch"), "grad_bytes": r.get("gradient_bytes"),
                     "hosts": ",".join(r.get("hosts") or []), "run_id": r.get("run_id"), "error": r.get("error"),
                     "staleness": (r.get("staleness") or {}).get("mean"), "_record": r})
    if not rows:
        raise EmulatedError(f"{path} holds no emulated-cluster records")
    return pd.DataFrame(rows)


def load_benches(study_dir: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(study_dir, "linkbench-*-r*.json"))):
        m = re.search(r"linkbench-(.+)-r(\d+)\.json$", os.path.basename(path))
        try:
            with open(path, encoding="utf-8") as f:
                out.setdefault(m.group(1), []).append(json.load(f))
        except (OSError, ValueError):
            continue
    return out


def bench_points(benches: list[dict]) -> tuple[list[float], list[float]]:
    """(bytes, time) of the scaled gradient exchanges: per factor, the median over bench runs."""
    by_size: dict[int, list[float]] = {}
    for d in benches:
        for s in d["pattern"]:
            by_size.setdefault(int(s["bytes"]), []).append(float(s["median_s"]))
    sizes = sorted(by_size)
    return sizes, [statistics.median(by_size[s]) for s in sizes]


def link_inputs(df: pd.DataFrame, benches: dict, link: str, n: float, batch: int, pool: bool = False) -> dict | None:
    """Model inputs at one link rate: alpha and B from that link's bench; t1s, t1a and kappa from the runs
    that cross no link (1-node runs, side-by-side runs) made in the same pass over this link rate (the host's
    load drifts by a factor of 2-3 within minutes: inputs from the same minutes track it), or pooled over
    every link rate when `pool`."""
    ok = df[(df["status"] == "ok") & df["ips"].notna()]
    here = ok[ok["link"] == link]
    if here.empty:
        return None
    if not pool:
        ok = here
    s1, a1 = ok[ok["run"] == "sync-1n"]["ips"], ok[ok["run"] == "async-1n"]["ips"]
    b = benches.get(link, [])
    if s1.empty or a1.empty or not b:
        return None
    sizes, times = bench_points(b)
    alpha, bw = scaling.fit_alpha_beta(sizes, times, 2)
    ceil = ok[ok["run"] == "ceil-2n"]["ips"]
    kappa = float(s1.median()) / float(ceil.median()) if len(ceil) else 1.0
    return {"t1s": batch / float(s1.median()), "t1a": batch / float(a1.median()), "alpha": alpha, "bw": bw,
            "kappa": kappa, "n_ceil": len(ceil),
            "bench_sizes": sizes, "bench_times": times, "bench_reps": len(b), "n_s1": len(s1), "n_a1": len(a1)}


def validation(df: pd.DataFrame, benches: dict) -> tuple[pd.DataFrame, dict]:
    ok = df[(df["status"] == "ok") & df["ips"].notna()]
    batch = int(ok["batch"].iloc[0])
    n = float(ok["grad_bytes"].dropna().iloc[0])
    links = sorted(ok["link"].unique(), key=rate_bps, reverse=True)
    inputs, rows = {}, []
    for link in links:
        inp = link_inputs(df, benches, link, n, batch)
        if inp is None:
            continue
        inputs[link] = inp
        for run in ("sync-1n", "sync-2n", "async-1n", "async-2n"):
            g = ok[(ok["link"] == link) & (ok["run"] == run)]["ips"]
            if g.empty:
                continue
            pred = predict(run, inp, batch, n)
            med = float(g.median())
            rows.append({"link": link, "run": run, "n": len(g), "median": med, "min": float(g.min()),
                         "max": float(g.max()), "predicted": pred, "rel_error": (pred - med) / med,
                         "spread": (float(g.max()) - float(g.min())) / med if len(g) > 1 else float("nan"),
                         "calibration": run.endswith("1n")})
    return pd.DataFrame(rows), {"inputs": inputs, "batch": batch, "n": n, "links": list(inputs)}


# ------------------------------------------------------------------ plots
def _fmt(v, spec=".1f", na="–") -> str:
    try:
        return na if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def plot_validation(val: pd.DataFrame, info: dict, path: str) -> plt.Figure:
    """Measured (median, min-max bar) vs predicted images/sec, one panel per mode, links on the x axis."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    links = info["links"]
    for ax, mode in zip(axes, ("sync", "async")):
        for k, (nodes, marker, dx) in enumerate((("1n", "o", -0.12), ("2n", "s", 0.12))):
            run = f"{mode}-{nodes}"
            sub = val[val["run"] == run].set_index("link")
            xs = [i + dx for i, l in enumerate(links) if l in sub.index]
            ls = [l for l in links if l in sub.index]
            if not ls:
                continue
            med = [sub.loc[l, "median"] for l in ls]
            err = [[sub.loc[l, "median"] - sub.loc[l, "min"] for l in ls], [sub.loc[l, "max"] - sub.loc[l, "median"] for l in ls]]
            color = "tab:gray" if nodes == "1n" else ("tab:blue" if mode == "sync" else "tab:orange")
            ax.errorbar(xs, med, yerr=err, fmt=marker, color=color, capsize=3,
                        label=f"measured, {nodes[0]} node{'s' if nodes == '2n' else ''} (median, min–max)")
            ax.plot(xs, [sub.loc[l, "predicted"] for l in ls], marker="_", markersize=22, mew=2.5, linestyle="none",
                    color="black", label="model" if k == 1 else None)
            if nodes == "2n":
                for x, l in zip(xs, ls):
                    ax.annotate(f"{sub.loc[l, 'rel_error'] * 100:+.1f}%", (x, sub.loc[l, "predicted"]),
                                textcoords="offset points", xytext=(8, 6), fontsize=8)
        ax.set_xticks(range(len(links)))
        ax.set_xticklabels(links)
        ax.set_xlabel("link rate per node (tc tbf)")
        ax.set_ylabel("images/sec (all workers)")
        ax.set_title(f"{mode}: 1 worker on 1 node vs 2 workers on 2 nodes")
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle("Emulated cluster: model (black bars) vs measured; label = model error at 2 nodes", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def plot_allreduce(info: dict, path: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, link in enumerate(info["links"]):
        inp = info["inputs"][link]
        c = LINK_COLORS[i % len(LINK_COLORS)]
        sizes = inp["bench_sizes"]
        ax.plot([s / 1e6 for s in sizes], [t * 1e3 for t in inp["bench_times"]], "o", color=c,
                label=f"{link}: measured (median of {inp['bench_reps']} bench run(s))")
        grid = [sizes[0] * (sizes[-1] / sizes[0]) ** (k / 60) for k in range(61)]
        ax.plot([s / 1e6 for s in grid], [scaling.ring_time(s, 2, inp["alpha"], inp["bw"]) * 1e3 for s in grid], "-",
                color=c, alpha=0.7,
                label=f"{link}: fit α = {inp['alpha'] * 1e3:.2f} ms, B = {inp['bw'] / 1e6:.0f} MB/s")
    ax.axvline(info["n"] / 1e6, color="gray", linestyle=":", label=f"gradient n = {info['n'] / 1e6:.1f} MB")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = [2, 5, 10, 20, 50, 100]
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlabel("bytes allreduced: the model's 39 gradient tensors, each scaled by f (MB, fp32)")
    ax.set_ylabel("time (ms), slowest rank's median")
    ax.set_title("Horovod MPI allreduce between the two netns nodes (np = 2)\nand the alpha-beta fit per link")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def plot_projection(info: dict, clusters: dict, seed: dict, path: str) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.8), sharey=True)
    gpus = scaling.PROJECTION_GPUS
    for ax, mode in zip(axes, ("sync", "async")):
        ax.plot(gpus, gpus, color="lightgray", linestyle="-", label="ideal")
        for i, link in enumerate(info["links"]):
            pr = project(info["inputs"][link], info["n"], info["batch"])[mode]
            ax.plot(gpus, [pr[p] for p in gpus], marker="o", markersize=3, color=LINK_COLORS[i % len(LINK_COLORS)],
                    label=f"emulated, {link} (α, B measured; p = 2 checked, see table)")
        for name, prof in clusters.items():
            if "fc4096" in prof.workloads:
                ax.plot(gpus, [prof.speedup(mode, "fc4096", p) for p in gpus], linestyle="--" if name == "tsubame2.5" else ":",
                        color="black" if name == "tsubame2.5" else "tab:gray", linewidth=1.5 if name == "tsubame2.5" else 2.5,
                        label=f"{name} profile, fc4096 224² (same model form)")
        ax.plot([seed["gpus"]], [seed["speedup"]], marker="*", markersize=14, color="crimson", linestyle="none",
                label=f"seed: >{seed['speedup']:.0f}x at {seed['gpus']}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xticks(gpus)
        ax.set_xticklabels([str(p) for p in gpus])
        ax.set_yticks([1 / 32, 1 / 16, 0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 48])
        ax.set_yticklabels(["1/32", "1/16", "1/8", "1/4", "1/2", "1", "2", "4", "8", "16", "32", "48"])
        ax.set_ylim(1 / 40, 64)
        ax.set_xlabel("workers (one per node)")
        ax.set_title(f"{mode}: modeled speedup, cnn11 fc4096")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("speedup over 1 worker")
    axes[1].legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


# ------------------------------------------------------------------ report
def _load_text(study_dir: str) -> str:
    """The host's 1-minute load average sampled during the study (load.jsonl), if it was recorded."""
    try:
        with open(os.path.join(study_dir, "load.jsonl"), encoding="utf-8") as f:
            rows = [json.loads(ln) for ln in f if ln.strip()]
        loads = [float(r["loadavg1"]) for r in rows]
    except (OSError, ValueError, KeyError):
        rows, loads = [], []
    if not loads:
        return "load average not recorded"
    return (f"1-minute load average of the 2-core host, sampled every 15 s from {rows[0]['at']} to {rows[-1]['at']}: "
            f"median {statistics.median(loads):.1f}, range {min(loads):.1f}–{max(loads):.1f}, n = {len(loads)}")


def _conditions(study_dir: str, df: pd.DataFrame, argv: list[str] | None) -> list[str]:
    meta = {}
    try:
        with open(os.path.join(study_dir, "emulated.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        pass
    ok = df[df["status"] == "ok"]
    recs = list(ok["_record"])
    versions = sorted({json.dumps(r.get("versions") or {}, sort_keys=True) for r in recs})
    shas = sorted({f"{(r.get('git_sha') or '?')[:10]}{' (dirty)' if r.get('git_dirty') else ''}" for r in recs})
    starts = sorted(str(r.get("started_at")) for r in recs if r.get("started_at"))
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    cfg = meta.get("config") or {}
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores, {platform.platform()}; shared with other engineers' jobs "
        "(a noisy host: medians and min–max over repeats are quoted)",
        "- cluster: slurm/localcluster.py, 2 SLURM nodes n1, n2 (slurm-wlm 22.05) in their own network namespaces "
        "on one bridge, **1 CPU each declared to SLURM, but both nodes share this machine's 2 cores** (no cpuset: "
        "task/none); every node's egress shaped by tc tbf at the link rate (no netem: this kernel lacks it, so no "
        "added delay)",
        f"- versions: {'; '.join(versions) or '?'}; OpenMPI (Debian 12) via srun --mpi=pmix; report: pandas "
        f"{pd.__version__}, matplotlib {matplotlib.__version__}",
        f"- code: git {', '.join(shas) or '?'}; runs from {starts[0] if starts else '?'} to {starts[-1] if starts else '?'}",
        f"- workload: cnn11 {cfg.get('head', '?')} head, width {cfg.get('width', '?')}, synthetic {cfg.get('image_size', '?')}² "
        f"px, 10 classes, batch {cfg.get('per_worker_batch', '?')} per worker, sync {cfg.get('sync_steps', '?')} / async "
        f"{cfg.get('async_steps', '?')} steps with {cfg.get('warmup_steps', '?')} warm-up steps excluded, 1 intra-op thread per process",
        "- runs: sync-1n = sync.sbatch -N1 -n1 (n1); sync-2n = sync.sbatch -N2 -n2 (Horovod over MPI across n1, n2); "
        "async-1n = async.sbatch -N1 -n3 (chief, PS, worker on n1); async-2n = async.sbatch -N2 -n4 plane=3 "
        "(chief, PS, worker 0 on n1; worker 1 on n2); all `sbatch --wait --exclusive`",
        f"- run command: `{meta.get('command', '?')}`",
        f"- report command: `python -m compare {shlex.join(argv or ['report', '--cluster', 'emulated'])}`",
    ]


def write_report(study_dir: str, out_dir: str | None = None, argv: list[str] | None = None) -> str:
    df = load(study_dir)
    benches = load_benches(study_dir)
    val, info = validation(df, benches)
    if val.empty:
        raise EmulatedError(f"{study_dir}: no link rate has both 1-node runs and an allreduce benchmark")
    out_dir = out_dir or study_dir
    os.makedirs(out_dir, exist_ok=True)
    data = scaling.load_profile_data()
    seed = data["seed_claim"]
    clusters = {name: scaling.cluster_profile(name, data) for name in ("tsubame2.5", "h200")}
    figs = {"emulated_validation.png": plot_validation(val, info, os.path.join(out_dir, "emulated_validation.png")),
            "emulated_allreduce.png": plot_allreduce(info, os.path.join(out_dir, "emulated_allreduce.png")),
            "emulated_projection.png": plot_projection(info, clusters, seed, os.path.join(out_dir, "emulated_projection.png"))}
    for fig in figs.values():
        plt.close(fig)
    batch, n = info["batch"], info["n"]
    md = ["# Emulated cluster: the scaling model against real nodes joined by a throttled link", "",
          f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by "
          "`python -m compare report --cluster emulated` (compare/emulated_report.py).", "",
          "## Conditions", "", *_conditions(study_dir, df, argv), ""]
    fails = df[df["status"] != "ok"]
    md += ["## Runs", "", f"{len(df)} records: {int((df['status'] == 'ok').sum())} ok, {len(fails)} failed "
           "(listed, excluded)." + ("" if fails.empty else "")]
    if len(fails):
        md += ["", _md_table(["link", "run", "rep", "error"], [[str(r.link), str(r.run), str(r.rep),
                                                                  str(r.error or "")[:160].replace("|", "/").replace("\n", " ")]
                                                                 for r in fails.itertuples()])]
    md += ["", "## Model inputs per link rate (all measured in this study)", "",
           f"n = {n / 1e6:.2f} MB of fp32 gradients (the records' gradient_bytes), batch {batch} per worker.", "",
           _md_table(["link", "tc rate (MB/s)", "alpha (ms)", "B (MB/s)", "B / rate", "t1s sync step (ms)",
                      "t1a async update (ms)", "kappa(2)", "allreduce(n) model (ms)", "bench reps"],
                     [[link, _fmt(rate_bps(link) / 8e6, ".0f"), _fmt(inp["alpha"] * 1e3, ".2f"), _fmt(inp["bw"] / 1e6, ".0f"),
                       _fmt(inp["bw"] * 8 / rate_bps(link), ".2f"), _fmt(inp["t1s"] * 1e3, ".0f") + f" (n={inp['n_s1']})",
                       _fmt(inp["t1a"] * 1e3, ".0f") + f" (n={inp['n_a1']})",
                       _fmt(inp["kappa"], ".3f") + f" (n={inp['n_ceil']})",
                       _fmt(scaling.ring_time(n, 2, inp["alpha"], inp["bw"]) * 1e3, ".0f"), str(inp["bench_reps"])]
                      for link, inp in info["inputs"].items()]), ""]
    when = []
    for link in info["links"]:
        ok = df[(df["status"] == "ok") & (df["link"] == link)]
        parts = []
        for run in ("sync-1n", "sync-2n", "async-1n", "async-2n", "ceil-2n"):
            starts = sorted(str(r.get("started_at", ""))[11:16] for r in ok[ok["run"] == run]["_record"])
            if starts:
                parts.append(f"{run} {', '.join(dict.fromkeys(starts))}")
        benches_at = sorted(str(b.get("measured_at", ""))[11:16] for b in benches.get(link, []))
        when.append(f"- {link}: " + "; ".join(parts) + f"; bench {', '.join(benches_at)} (UTC)")
    md += ["When each input was measured (start times; the model pairs inputs and 2-node points of the same "
           "link rate, so minutes apart on a host whose load moves):", "", *when, ""]
    md += ["## Predicted vs measured, every point", "",
           "Measured = median images/sec over repeats (min–max in brackets); 1-node points calibrate the model "
           "(t1s, t1a) and are exact by construction; 2-node points test it.", ""]
    md.append(_md_table(["link", "run", "n", "measured img/s (min–max)", "predicted img/s", "rel. error", "note"],
                        [[r["link"], r["run"], str(r["n"]), f"{_fmt(r['median'])} ({_fmt(r['min'])}–{_fmt(r['max'])})",
                          _fmt(r["predicted"]), f"{r['rel_error'] * 100:+.1f}%",
                          "calibration" if r["calibration"] else ""] for _, r in val.iterrows()]))
    md += ["", "Largest error per link rate (2-node points):", ""]
    test = val[~val["calibration"]]
    worst_all = None
    for link in info["links"]:
        t = test[test["link"] == link]
        if t.empty:
            continue
        w = t.loc[t["rel_error"].abs().idxmax()]
        if worst_all is None or abs(w["rel_error"]) > abs(worst_all["rel_error"]):
            worst_all = w
        spread = t["spread"].max()
        md.append(f"- **{link}: {w['rel_error'] * 100:+.1f}%** ({w['run']}) — "
                  f"{'within' if abs(w['rel_error']) <= GOAL else 'MISSES'} the {GOAL * 100:.0f}% goal; "
                  f"run-to-run spread (max−min)/median at 2 nodes up to {_fmt(spread * 100, '.0f')}%")
    if worst_all is not None:
        md += ["", f"**Largest error over all link rates: {worst_all['rel_error'] * 100:+.1f}% "
                   f"({worst_all['run']} at {worst_all['link']}).**"]
    md += ["", "### Reading the errors", ""]
    for link, inp in info["inputs"].items():
        wire = n / (rate_bps(link) / 8)
        ex = inp["bench_times"][-1]
        md.append(f"- {link}: the bench's exchange of the full gradient took {ex * 1e3:.0f} ms; the shaped rate alone "
                  f"needs {wire * 1e3:.0f} ms for n one way ({ex / wire:.1f}x). "
                  + ("The link sets the pace: this is the regime the alpha-beta term describes."
                     if ex / wire < 3 else
                     "The link is not what limits the exchange: TCP over veth, MPI and Horovod copies run on the same "
                     "2 shared cores as both workers (and other users' jobs), so the exchange is CPU-bound and moves "
                     "with the machine's load between the bench and the training runs."))
    md += ["- Noise: the 1-node calibration runs themselves moved by up to "
           f"{_fmt(100 * (val[val['calibration'] & (val['run'] == 'sync-1n')]['median'].max() / val[val['calibration'] & (val['run'] == 'sync-1n')]['median'].min() - 1), '.0f')}% "
           "between link rates, though nothing in them crosses a link: the host was shared with other engineers' "
           f"sweeps ({_load_text(study_dir)}). Every input (t1s, t1a, kappa, alpha, B) "
           "is measured minutes apart from the 2-node points it predicts, so errors of this size at the CPU-bound "
           "link are what the host allows, not what the model could fix per point.",
           "- sync at the slower links: Horovod issues the gradients as they are produced during the backward pass, "
           "in more fused messages than the bench's one-shot exchange, and each message pays alpha again (tens of "
           "ms through the shaped TCP link); that term is not modeled (likely cause of a few % too fast at 1 Gbit; "
           "not measured here: it needs a Horovod timeline)."]
    md += ["", "## Next to the 48-GPU projection", "",
           "The same model form with each link's measured alpha and B, one worker a node, projected to 48 nodes "
           "(sync: ring over p nodes; async: one PS on one node, the other p − 1 workers across the link, capped "
           "at B / 2n updates/s by the PS's link), beside the cluster profiles' projection for the same fc4096 head:", ""]
    rows = []
    for link, inp in info["inputs"].items():
        pr = project(inp, n, batch)
        rows.append([f"emulated {link}", *[_fmt(pr["sync"][p], ".2f") for p in scaling.PROJECTION_GPUS],
                     _fmt(pr["async"][48], ".2f")])
    for name, prof in clusters.items():
        rows.append([f"{name} (profile)", *[_fmt(prof.speedup("sync", "fc4096", p), ".2f") for p in scaling.PROJECTION_GPUS],
                     _fmt(prof.speedup("async", "fc4096", 48), ".2f")])
    md.append(_md_table(["profile", *[f"sync @{p}" for p in scaling.PROJECTION_GPUS], "async @48"], rows))
    md += ["", f"Seed study: {seed['text']}. The cluster profiles' communication term is this same alpha-beta ring "
           "term; the emulated study is where that term meets measurement across real (shaped) links.", "",
           "## The model", "", *[ln.strip() for ln in (__doc__ or "").split("\n")[2:13]], "",
           "## Figures", ""] + [f"![{k}]({k})" for k in figs]
    path = os.path.join(out_dir, "report.md")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")
    os.replace(tmp, path)
    return path
