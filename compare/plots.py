"""Every figure of the reports. matplotlib (Agg); no TensorFlow.

Rules kept here: no curve hidden under another (separate panels per profile and mode, distinct markers,
direct labels nudged apart); the seed's ">30x at 48 GPUs" drawn as a lower bound (a triangle with an
arrow up), not a point; measured CPU workers and modeled GPUs never share an axis; every projection has
a band (each assumed input varied over its stated range); per-run points beside mean ± SE.
"""
from __future__ import annotations

import math
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from compare import scaling  # noqa: E402
from compare.frame import GROUP, histogram_stats, per_run, pooled_histograms  # noqa: E402
from compare.plan import MODES  # noqa: E402

MODE_COLORS = {"sync": "tab:blue", "async": "tab:orange", "async_allreduce": "tab:red"}
SERIES_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:cyan"]
HEAD_STYLES = {"gap": ("o", "-"), "fc4096": ("s", "-.")}
LINK_COLORS = ["tab:green", "tab:blue", "tab:red", "tab:purple", "tab:brown", "tab:olive"]
GROUP_COLORS = {("sync", "gap", "none"): "tab:blue", ("async", "gap", "none"): "tab:orange",
                ("sync", "gap", "fp16"): "tab:green", ("sync", "fc4096", "none"): "tab:purple",
                ("async", "fc4096", "none"): "tab:brown", ("sync", "fc4096", "fp16"): "tab:olive",
                ("async_allreduce", "gap", "none"): "tab:red", ("async_allreduce", "fc4096", "none"): "tab:pink"}
CONV_COLORS = {("sync", "none"): "tab:blue", ("sync", "fp16"): "tab:green", ("async", "none"): "tab:orange",
               ("async_allreduce", "none"): "tab:red"}
CONV_STYLES = {1: "--", 2: "-"}
CONV_KEY = ["mode", "num_workers", "compression"]
EXTRA_COLORS = SERIES_COLORS + ["tab:gray", "tab:pink", "tab:red", "black"]


def distinct_colors(keys: list, fixed: dict) -> dict:
    """A color per key: its fixed color when it has one, else the first palette color no other key uses (the
    compression study once drew fp16 and powersgd:4 both green)."""
    out = {k: fixed[k] for k in keys if k in fixed}
    for k in keys:
        if k not in out:
            out[k] = next((c for c in EXTRA_COLORS if c not in out.values()), "black")
    return out


def _save(fig: plt.Figure, path: str) -> plt.Figure:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def group_label(r) -> str:
    extra = f", {r['compression']}" if r["compression"] != "none" else ""
    extra += f", {int(r['num_ps'])} PS" if r["mode"] == "async" else ""
    return f"{r['mode']} {r['head']}{extra}"


def seed_lower_bound(ax, seed: dict) -> None:
    """The seed study's '>30x at 48 GPUs': a triangle at 30 with an arrow up (a lower bound, not a point)."""
    x, y = seed["gpus"], seed["speedup"]
    ax.plot([x], [y], marker="^", markersize=11, color="crimson", linestyle="none", zorder=6,
            label=f"seed study (2015): >{y:.0f}x at {x} GPUs, a lower bound")
    ax.annotate("", xy=(x, y * 1.9), xytext=(x, y), zorder=6,
                arrowprops=dict(arrowstyle="-|>", color="crimson", lw=1.8))


def seed_efficiency_bound(ax, seed: dict) -> float:
    """The seed's '>30x at 48 GPUs' on an efficiency axis: a triangle at 30/48 with an arrow up; returns 30/48."""
    bound = seed["speedup"] / seed["gpus"]
    ax.plot([seed["gpus"]], [bound], marker="^", markersize=11, color="crimson", linestyle="none", zorder=6,
            label=f"seed study: >{seed['speedup']:g}x at {seed['gpus']} GPUs (efficiency > {bound:.2f}), a lower bound")
    ax.annotate("", xy=(seed["gpus"], min(1.0, bound + 0.2)), xytext=(seed["gpus"], bound),
                arrowprops=dict(arrowstyle="->", color="crimson", lw=1.5))
    return bound


def direct_labels(ax, items: list[tuple[float, float, str, str]], min_ratio: float = 1.3) -> None:
    """Text at each curve's right end (x, y, text, color), nudged apart so no label covers another (log y)."""
    placed: list[float] = []
    for x, y, text, color in sorted(items, key=lambda it: it[1]):
        if not (y > 0 and math.isfinite(y)):
            continue
        ly = max([y] + [p * min_ratio for p in placed])
        placed.append(ly)
        ax.annotate(text, (x, y), xytext=(x * 1.12, ly), fontsize=7.5, color=color, va="center",
                    arrowprops=dict(arrowstyle="-", color=color, lw=0.6, alpha=0.6) if ly != y else None)


def _log2_gpus(ax, label: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ticks = list(scaling.PROJECTION_GPUS)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_xlim(0.85, 48 * 3.2)  # room on the right for the direct labels
    ax.set_xlabel(label)
    ax.grid(True, which="major", alpha=0.3)


def _speedup_yaxis(ax, low: float) -> None:
    ticks = [v for v in (1 / 32, 1 / 16, 0.125, 0.25, 0.5) if v >= low * 0.8] + [1, 2, 4, 8, 16, 32, 48]
    ax.set_yticks(ticks)
    ax.set_yticklabels([f"{v:g}" if v >= 1 else f"1/{round(1 / v)}" for v in ticks])
    ax.set_ylim(min(low, 1) * 0.8, 64 * 1.6)


# ------------------------------------------------------------------ measured (CPU workers on this machine)
def plot_measured(df: pd.DataFrame, table: pd.DataFrame, local: scaling.Profile | None, path: str,
                  xlabel: str = "CPU workers on this machine (one pinned core each)") -> plt.Figure:
    """Three panels over the measured worker counts only: images/sec, speedup, efficiency. Each group:
    every run (small hollow points), mean ± SE (filled, offset), and the local model where it predicts."""
    t = table[table["link"] == ""]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    groups = list(t.groupby([c for c in GROUP if c != "link"], dropna=False, sort=True))
    width = 0.7 / max(1, len(groups))
    ps = sorted(t["num_workers"].unique()) or [1]
    colors = distinct_colors([(g.iloc[0]["mode"], g.iloc[0]["head"], g.iloc[0]["compression"]) for _, g in groups],
                             GROUP_COLORS)
    for i, (_, g) in enumerate(groups):
        r0 = g.iloc[0]
        color = colors[(r0["mode"], r0["head"], r0["compression"])]
        dx = (i - (len(groups) - 1) / 2) * width
        marker = HEAD_STYLES.get(r0["head"], ("D", "-"))[0]
        base = r0["base_ips"]
        for _, r in g.iterrows():
            runs = per_run(df, r)
            x = r["num_workers"] + dx
            for k, (ax, scale) in enumerate(zip(axes, (1.0, 1.0 / base if base == base else math.nan,
                                                       1.0 / (base * r["num_workers"]) if base == base else math.nan))):
                if not math.isfinite(scale):
                    continue
                ax.plot([x - width * 0.3] * len(runs), runs * scale, marker, mfc="none", color=color, alpha=0.6,
                        markersize=5, linestyle="none",
                        label=f"{group_label(r0)}: each run" if (r["num_workers"] == ps[0] and k == 0) else None)
        cols = (("ips", "ips_se"), ("speedup", "speedup_se"), ("efficiency", "efficiency_se"))
        for ax, (col, se) in zip(axes, cols):
            gg = g[g[col].notna()]
            if gg.empty:  # e.g. fp16 runs only at 2 workers: no 1-worker baseline, no speedup to draw
                continue
            ax.errorbar(gg["num_workers"] + dx + width * 0.2, gg[col], yerr=gg[se].fillna(0), fmt=marker,
                        color=color, capsize=4, markersize=7, markeredgecolor="black",
                        label=f"{group_label(r0)}: mean ± SE (n = {'/'.join(str(int(v)) for v in gg['n'])})")
            if local is not None and r0["head"] in local.workloads:
                pred = _predicted(local, gg, col)
                ax.plot(gg["num_workers"] + dx + width * 0.5, pred, "x", color="black", markersize=8, mew=1.8,
                        label="local model" if i == 0 else None)
    axes[0].set_ylabel("images/sec, all workers")
    axes[0].set_title("Throughput")
    axes[1].plot(ps, ps, color="gray", linestyle="--", linewidth=1, label="ideal (speedup = workers)")
    axes[1].set_ylabel("speedup over the 1-worker mean of the same group")
    axes[1].set_title("Speedup")
    axes[2].axhline(1.0, color="gray", linestyle="--", linewidth=1, label="ideal")
    axes[2].set_ylabel("efficiency (speedup / workers)")
    axes[2].set_title("Efficiency")
    if not t["speedup"].notna().any():  # e.g. the compression study: 2 workers only
        for ax in axes[1:]:
            ax.text(0.5, 0.5, "no 1-worker runs in this study:\nno speedup to draw", transform=ax.transAxes,
                    ha="center", va="center", fontsize=10, color="dimgray")
    for ax in axes:
        ax.set_xticks(ps)
        ax.set_xlim(min(ps) - 0.5, max(ps) + 0.5)
        ax.set_xlabel(xlabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("Measured on this machine (no projection here: modeled GPUs are in projection_gpus.png)")
    return _save(fig, path)


def _predicted(local: scaling.Profile, g: pd.DataFrame, col: str) -> list[float]:
    out = []
    for _, r in g.iterrows():
        try:
            ips = local.predict(r["mode"], r["head"], int(r["num_workers"]), max(int(r["num_ps"]), 1),
                                r["compression"]).images_per_sec
            one = local.predict(r["mode"], r["head"], 1, max(int(r["num_ps"]), 1), r["compression"]).images_per_sec
        except scaling.ModelError:
            out.append(math.nan)
            continue
        out.append({"ips": ips, "speedup": ips / one, "efficiency": ips / one / r["num_workers"]}[col])
    return out


# ------------------------------------------------------------------ projection (modeled GPUs)
def plot_projection(profiles: dict[str, scaling.Profile], seed: dict, shards: int, path: str,
                    heads: tuple[str, ...] = ("gap", "fc4096")) -> plt.Figure:
    """One panel per (mode, profile): each head's modeled speedup with its sensitivity band, ideal, the
    seed's lower bound; curves labeled at their right end."""
    names = list(profiles)
    fig, axes = plt.subplots(2, max(1, len(names)), figsize=(5.4 * max(1, len(names)), 9), squeeze=False)
    gpus = np.array(scaling.PROJECTION_GPUS)
    for col, name in enumerate(names):
        prof = profiles[name]
        for row, mode in enumerate(("sync", "async")):
            ax = axes[row][col]
            ax.plot(gpus, gpus, color="gray", linestyle="--", linewidth=1, label="ideal")
            labels, lows = [(gpus[-1], 48.0, "ideal 48x", "gray")], [1.0]
            for head in heads:
                if head not in prof.workloads or (mode == "async" and name == "local" and head not in prof.async_update):
                    continue
                marker, style = HEAD_STYLES[head]
                y = [prof.speedup(mode, head, int(p), shards) for p in gpus]
                lo, hi = scaling.speedup_band(prof, mode, head, gpus, shards)
                color = MODE_COLORS[mode] if head == "gap" else "tab:purple"
                ax.fill_between(gpus, lo, hi, color=color, alpha=0.15, linewidth=0,
                                label=f"{head}: band, assumed inputs varied")
                ax.plot(gpus, y, style, marker=marker, mfc="none" if head == "fc4096" else color, markersize=6,
                        color=color, label=f"{head}: model")
                labels.append((gpus[-1], y[-1], f"{head} {y[-1]:.1f}x", color))
                lows += lo
            seed_lower_bound(ax, seed)
            direct_labels(ax, labels)
            unit = "modeled workers (1 core = 1 'GPU')" if name == "local" else "modeled GPUs"
            _log2_gpus(ax, f"{unit} (log2)")
            _speedup_yaxis(ax, min(lows))
            ax.set_ylabel(f"{mode}: modeled speedup over 1 GPU")
            ax.set_title(f"{name}, {mode} ({prof.per_node} per node)")
            ax.legend(fontsize=6.5, loc="upper left")
    title = (f"Projected speedup per profile (async: {shards} PS shard{'s' if shards > 1 else ''}); "
             f"bands: each assumed input varied one at a time ({scaling.describe_ranges()})")
    fig.suptitle(textwrap.fill(title, width=int(95 * max(1, len(names)))), fontsize=9)
    return _save(fig, path)


# ------------------------------------------------------------------ async staleness, convergence
def plot_staleness(df: pd.DataFrame, path: str) -> plt.Figure | None:
    hists = pooled_histograms(df, "async", "staleness")
    if not hists:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    width = 0.8 / len(hists)
    for i, (p, h) in enumerate(sorted(hists.items())):
        ks = sorted(h)
        total = sum(h.values())
        mean = sum(k * v for k, v in h.items()) / total
        ax.bar(np.array(ks) + (i - (len(hists) - 1) / 2) * width, [h[k] / total for k in ks], width=width,
               label=f"{p} worker{'s' if p > 1 else ''}: measured mean {mean:.2f} "
                     f"(model: mean {scaling.expected_staleness(p)} = p − 1)")
    ax.set_xticks(sorted({k for h in hists.values() for k in h}))  # staleness is a whole number of updates
    ax.set_xlabel("staleness of an applied gradient (updates by other workers since its read)")
    ax.set_ylabel("fraction of updates")
    ax.set_title("Async staleness histogram, all repeats pooled")
    ax.legend(fontsize=8)
    return _save(fig, path)


def conv_label(mode: str, p: int, compression: str) -> str:
    return f"{mode} p={p}" + (f", {compression}" if compression != "none" else "")


def plot_accuracy_curves(runs: pd.DataFrame, target: float, path: str, x: str = "wall_s") -> plt.Figure | None:
    """Held-out top-1 vs wall time (x='wall_s') or images (x='images'), one panel per (mode, compression) so
    no configuration hides another: per worker count every seed (thin line), the mean over seeds at each
    epoch (thick line, its own marker) and the seeds' min–max (band); the target dashed."""
    if runs.empty:
        return None
    order = list(MODES)
    panels = sorted({(m, c) for m, c in zip(runs["mode"], runs["compression"])},
                    key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k[1] != "none", k[1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), sharex=True, sharey=True, squeeze=False)
    colors = distinct_colors(panels, CONV_COLORS)
    for i, (ax, (mode, comp)) in enumerate(zip(axes[0], panels)):
        color = colors[(mode, comp)]
        for p, g in runs[(runs["mode"] == mode) & (runs["compression"] == comp)].groupby("num_workers", sort=True):
            n_ep = int(g["epochs"].min())
            xs = np.array([[c[x] for c in curve[:n_ep]] for curve in g["curve"]], dtype=float)
            ys = np.array([[c["val_top1"] for c in curve[:n_ep]] for curve in g["curve"]], dtype=float)
            style = CONV_STYLES.get(int(p), ":")
            for xr, yr in zip(xs, ys):
                ax.plot(xr, yr, style, color=color, linewidth=0.6, alpha=0.45)
            ax.plot(xs.mean(axis=0), ys.mean(axis=0), style, color=color, marker="o" if p > 1 else "s",
                    mfc=color if p > 1 else "white", linewidth=2,
                    label=f"{conv_label(mode, int(p), comp)} (mean of {len(g)} seed{'s' if len(g) > 1 else ''})")
            ax.fill_between(xs.mean(axis=0), ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.12, linewidth=0)
        ax.axhline(target, color="crimson", linestyle=":", linewidth=1.2, label=f"target {target:.0%} top-1")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{mode}" + (f", {comp}" if comp != "none" else ""))
        ax.set_xlabel("wall-clock seconds since training start (evaluation included)" if x == "wall_s"
                      else "training images processed (all workers)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("held-out top-1 accuracy (evaluated every epoch)")
    fig.suptitle(f"Accuracy vs {'wall time' if x == 'wall_s' else 'images'} (thick: mean over seeds; thin: each "
                 "seed; band: min–max)")
    return _save(fig, path)


# ------------------------------------------------------------------ the emulated cluster
def plot_emulated_validation(val: pd.DataFrame, points: dict, links: list[str], path: str) -> plt.Figure:
    """Per mode: per link rate, every run (hollow), mean ± SE (filled), model (black bar), 1 vs 2 nodes."""
    modes = [m for m in MODES if val["run"].str.startswith(f"{m}-").any()] or ["sync"]
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 5.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for nodes, marker, dx in (("1n", "o", -0.2), ("2n", "s", 0.12)):
            kind = f"{mode}-{nodes}"
            sub = val[val["run"] == kind].set_index("link")
            ls = [link for link in links if link in sub.index]
            if not ls:
                continue
            color = "tab:gray" if nodes == "1n" else MODE_COLORS[mode]
            xs = [links.index(link) + dx for link in ls]
            for x, link in zip(xs, ls):
                pts = points.get((link, kind), [])
                ax.plot([x - 0.06] * len(pts), pts, marker, mfc="none", color=color, alpha=0.7, linestyle="none")
            ax.errorbar([x + 0.03 for x in xs], [sub.loc[link, "mean"] for link in ls],
                        yerr=[0 if math.isnan(sub.loc[link, "se"]) else sub.loc[link, "se"] for link in ls],
                        fmt=marker, color=color, capsize=3, markeredgecolor="black",
                        label=f"{nodes[0]} node{'s' if nodes == '2n' else ''}: mean ± SE (hollow: each run)")
            pred = [sub.loc[link, "predicted"] for link in ls]
            ax.plot([x + 0.12 for x in xs], pred, marker="_", markersize=12, mew=2.5, linestyle="none", color="black",
                    label="model (beside the measurement)" if nodes == "2n" else None)
            if nodes == "2n":
                for x, link in zip(xs, ls):
                    ax.annotate(f"{sub.loc[link, 'rel_error'] * 100:+.1f}%", (x + 0.12, sub.loc[link, "predicted"]),
                                textcoords="offset points", xytext=(10, 6), fontsize=8)
        ax.set_xticks(range(len(links)))
        ax.set_xticklabels(links)
        ax.set_xlim(-0.6, len(links) - 0.4)
        ax.set_xlabel("link rate per node (tc tbf)")
        ax.set_ylabel("images/sec (all workers)")
        ax.set_title(f"{mode}: 1 worker on 1 node vs 2 workers on 2 nodes")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.1)  # room for the error labels above the highest model bar
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle("Emulated cluster: model (black bars) vs measured; label = model error at 2 nodes", fontsize=11)
    return _save(fig, path)


def plot_emulated_compression(comp: pd.DataFrame, path: str) -> plt.Figure:
    """Per link rate: each compression's 2-node sync images/sec (bar: mean ± SE; hollow: each run), the model
    beside it (black bar), and 1 uncompressed worker on 1 node (dashed): above it, two nodes pay."""
    links = list(dict.fromkeys(comp["link"]))
    fig, axes = plt.subplots(1, len(links), figsize=(max(7.5, 5.5 * len(links)), 5.4), squeeze=False)
    methods = list(dict.fromkeys(sorted(comp["compression"], key=lambda c: (c != "none", c))))
    colors = distinct_colors(methods, {"none": "tab:blue", "fp16": "tab:green"})
    for ax, link in zip(axes[0], links):
        g = comp[comp["link"] == link].set_index("compression")
        ms = [m for m in methods if m in g.index]
        xs = range(len(ms))
        ax.bar(xs, [g.loc[m, "mean"] for m in ms], yerr=[0 if math.isnan(g.loc[m, "se"]) else g.loc[m, "se"] for m in ms],
               color=[colors[m] for m in ms], alpha=0.75, capsize=3, label="2 workers on 2 nodes: mean ± SE")
        for x, m in zip(xs, ms):
            pts = g.loc[m, "runs"]
            ax.plot([x - 0.15] * len(pts), pts, "o", mfc="none", color="black", alpha=0.6,
                    label="each run" if x == 0 else None)
        ax.plot([x + 0.25 for x in xs], [g.loc[m, "predicted"] for m in ms], marker="_", markersize=14, mew=2.5,
                linestyle="none", color="black", label="model (bytes ratio, compress time measured)")
        one = g["one_node"].iloc[0]
        if not math.isnan(one):
            ax.axhline(one, color="gray", linestyle="--", label="1 worker on 1 node, none")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(ms, rotation=20)
        ax.set_ylabel("images/sec (both workers)")
        ax.set_title(f"{link} per node")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.suptitle("Emulated cluster: sync all-reduce, compressed gradients, 2 workers on 2 nodes", fontsize=11)
    return _save(fig, path)


def plot_emulated_allreduce(inputs: dict, n: float, path: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, (link, inp) in enumerate(inputs.items()):
        c = LINK_COLORS[i % len(LINK_COLORS)]
        sizes = inp["bench_sizes"]
        ax.plot([s / 1e6 for s in sizes], [t * 1e3 for t in inp["bench_times"]], "o", color=c,
                label=f"{link}: measured (median of {inp['bench_reps']} bench run(s))")
        grid = [sizes[0] * (sizes[-1] / sizes[0]) ** (k / 60) for k in range(61)]
        ax.plot([s / 1e6 for s in grid], [scaling.ring_time(s, 2, inp["alpha"], inp["bw"]) * 1e3 for s in grid], "-",
                color=c, alpha=0.7, label=f"{link}: fit α = {inp['alpha'] * 1e3:.2f} ms, B = {inp['bw'] / 1e6:.0f} MB/s")
    ax.axvline(n / 1e6, color="gray", linestyle=":", label=f"gradient n = {n / 1e6:.1f} MB")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes allreduced: the model's gradient tensors, each scaled by f (MB, fp32)")
    ax.set_ylabel("time (ms), slowest rank's median")
    ax.set_title("Horovod MPI allreduce between the two netns nodes (np = 2)\nand the alpha-beta fit per link")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7.5, loc="upper left")
    return _save(fig, path)


def plot_emulated_projection(inputs: dict, n: float, batch: int, seed: dict, path: str) -> plt.Figure:
    """One panel per (mode, link): that link's measured alpha, B and compute projected to 48 nodes, band from
    varying alpha, B and kappa over their stated ranges."""
    links = list(inputs)
    modes = ["sync"] + (["async"] if all(i.get("t1a") for i in inputs.values()) else [])  # t1a: an async-1n run
    fig, axes = plt.subplots(len(modes), max(1, len(links)), figsize=(4.8 * max(1, len(links)), 4.3 * len(modes)),
                             squeeze=False)
    gpus = np.array(scaling.PROJECTION_GPUS)
    for col, link in enumerate(links):
        for row, mode in enumerate(modes):
            ax = axes[row][col]
            ax.plot(gpus, gpus, color="gray", linestyle="--", linewidth=1, label="ideal")
            y = scaling.emulated_speedups(inputs[link], n, batch, mode, gpus)
            lo, hi = scaling.emulated_band(inputs[link], n, batch, mode, gpus)
            color = LINK_COLORS[col % len(LINK_COLORS)]
            ax.fill_between(gpus, lo, hi, color=color, alpha=0.2, linewidth=0, label="band: α, B ×½–×2, κ ×0.8–×1.25")
            ax.plot(gpus, y, "-o", color=color, markersize=4, label="model (p = 2 measured, see table)")
            direct_labels(ax, [(gpus[-1], y[-1], f"{y[-1]:.2f}x", color)])
            seed_lower_bound(ax, seed)
            _log2_gpus(ax, "modeled nodes, one worker each (log2)")
            _speedup_yaxis(ax, min(lo + [1.0]))
            ax.set_ylabel(f"{mode}: modeled speedup over 1 node")
            ax.set_title(f"{mode}, link {link}")
            ax.legend(fontsize=6.5, loc="upper left")
    fig.suptitle("Emulated cluster projected to 48 nodes with each link's measured inputs", fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------ the GPU model (measured terms, issue 12)
ARM_STYLES = {"sync_allreduce": ("tab:blue", "o"), "async_allreduce": ("tab:green", "D"),
              "sync_ps": ("tab:purple", "s"), "async_ps": ("tab:orange", "v")}


def efficiency_panel(ax, series: list[tuple[str, list[dict], str, str]], seed: dict) -> None:
    """Modeled efficiency (speedup / GPUs) of each (tag, projection rows sorted by p, color, marker) with its
    band, end labels nudged apart, the ideal line and the seed's lower bound (a triangle with an arrow up)."""
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="ideal (efficiency 1)")
    ends = []
    for tag, pts, color, marker in series:
        p = np.array([r["p"] for r in pts], dtype=float)
        ax.fill_between(p, [r["low"] / q for r, q in zip(pts, p)], [r["high"] / q for r, q in zip(pts, p)],
                        color=color, alpha=0.15, linewidth=0)
        ax.plot(p, [r["speedup"] / q for r, q in zip(pts, p)], "-", marker=marker, color=color, markersize=5,
                mfc="none", label=f"{tag}: model; band: inputs varied")
        ends.append([pts[-1]["speedup"] / p[-1], f"{tag}: {pts[-1]['speedup']:.1f}x", color])
    ends.sort(key=lambda e: e[0])
    for k in range(1, len(ends)):  # nudge the end labels apart (linear axis)
        ends[k][0] = max(ends[k][0], ends[k - 1][0] + 0.045)
    for y, text, color in ends:
        ax.annotate(text, (48, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=7.5,
                    color=color, annotation_clip=False)
    seed_efficiency_bound(ax, seed)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(scaling.PROJECTION_GPUS))
    ax.set_xticklabels([str(g) for g in scaling.PROJECTION_GPUS])
    ax.set_xlabel("modeled GPUs (log2)")
    ax.set_ylim(0, 1.12)
    ax.set_ylabel("modeled efficiency = speedup / GPUs")


def plot_gpu_projection(rows: dict[str, list[dict]], seed: dict, path: str) -> plt.Figure | None:
    """One panel per GPU profile: each arm's modeled efficiency (speedup / GPUs) with its band (every
    assumed input varied alone over its stated range) and the seed's lower bound (>30x at 48 = 0.625).
    Efficiency, not speedup, on the y axis: near-linear curves would lie on top of each other.
    rows: profile -> scaling.projection_rows output of every arm."""
    if not rows:
        return None
    names = list(rows)
    fig, axes = plt.subplots(1, len(names), figsize=(6.4 * len(names), 5.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        series = []
        for arm, shards in dict.fromkeys((r["arm"], r["shards"]) for r in rows[name]):
            pts = sorted((r for r in rows[name] if (r["arm"], r["shards"]) == (arm, shards)), key=lambda r: r["p"])
            series.append((arm + (f" ({shards} PS)" if arm.endswith("ps") else ""), pts, *ARM_STYLES[arm]))
        efficiency_panel(ax, series, seed)
        ax.set_title(f"{name}: cnn11 {pts[0]['head']} head, batch {pts[0]['batch']} per GPU")
        ax.legend(fontsize=6.5, loc="lower left")
    fig.suptitle("Modeled GPUs (no measurement here): the measured-terms model of compare/scaling.py", fontsize=9)
    return _save(fig, path)


# ------------------------------------------------------------------ the time-dilated cluster (issue 14)
def plot_dilated(rows: list[dict], seed: dict, path: str, compared: bool) -> plt.Figure | None:
    """Emulated efficiency (speedup / p) per arm: filled markers with ±1 SE bars, the model's prediction for the
    same profile as an open-marker line of the same color (only when every fidelity check passed), the seed's
    lower bound. rows: compare/dilated.py section rows (arm, p, speedup, rel_se, model)."""
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.6, 4.8))
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=1, label="ideal (efficiency 1)")
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for k, arm in enumerate(arms):
        pts = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["p"])
        color, marker = ARM_STYLES.get(arm, ARM_STYLES["async_ps"])  # "async_ps (S PS)" carries its shards
        p = np.array([r["p"] for r in pts], dtype=float) * (1 + 0.03 * (k - (len(arms) - 1) / 2))  # no overlap
        eff = np.array([r["speedup"] for r in pts]) / np.array([r["p"] for r in pts])
        ax.errorbar(p, eff, yerr=eff * np.array([r["rel_se"] for r in pts]), fmt=marker, color=color, markersize=6,
                    capsize=3, label=f"{arm}: emulated (D, K dilated), ±1 SE")
        if compared:
            ax.plot(p, [r["model"] / r["p"] for r in pts], "--", marker=marker, mfc="none", color=color, alpha=0.8,
                    label=f"{arm}: model (compare/scaling.py), same profile")
    seed_here = rows[0]["profile"] == "tsubame2.5"  # the seed's ">30x at 48" is a claim about TSUBAME 2.5
    bound = seed_efficiency_bound(ax, seed) if seed_here else 1.0
    ticks = sorted({r["p"] for r in rows} | ({seed["gpus"]} if seed_here else set()))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    per_node = max(math.ceil(r["p"] / r["nodes"]) for r in rows)
    ax.set_xlabel(f"emulated GPUs (ranks; {per_node} a node)")
    lo = min(min(r["speedup"] / r["p"] for r in rows), bound)
    hi = max((r["speedup"] / r["p"] * (1 + r["rel_se"]) for r in rows if r["rel_se"] == r["rel_se"]), default=1.0)
    ax.set_ylim(max(0.0, lo - 0.1), max(1.04, hi + 0.01))
    ax.set_ylabel("efficiency = speedup / GPUs")
    ax.grid(True, alpha=0.3)
    r0 = rows[0]
    ax.set_title(f"Time-dilated {r0['profile']}: cnn11 {r0['head']} head, batch {r0['batch']} per GPU, "
                 f"D = {r0['D']:g}, K = {r0['K']}" + ("" if compared else " (fidelity check failed: no model)"),
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    return _save(fig, path)


# ------------------------------------------------------------------ the async all-reduce arm (issue 16)
def plot_async_allreduce(df: pd.DataFrame, path: str) -> plt.Figure | None:
    """Two panels: sub-batches per update (the effective mini-batch) and staleness of each sub-batch, one bar
    series per worker count, all repeats pooled (exact histograms from the records)."""
    panels = (("effective_batch", "sub-batches summed into one update (all ranks)", "fraction of updates",
               "Effective mini-batch"),
              ("staleness", "staleness of a sub-batch (updates applied since its weights)", "fraction of sub-batches",
               "Staleness"))
    hists = {field: pooled_histograms(df, "async_allreduce", field) for field, *_ in panels}
    if not any(hists.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, (field, xlabel, ylabel, title) in zip(axes, panels):
        h_by_p = hists[field]
        width = 0.8 / max(1, len(h_by_p))
        for i, (p, h) in enumerate(sorted(h_by_p.items())):
            ks, st = sorted(h), histogram_stats(h)
            ax.bar(np.array(ks) + (i - (len(h_by_p) - 1) / 2) * width, [h[k] / st["n"] for k in ks], width=width,
                   color=SERIES_COLORS[i % len(SERIES_COLORS)],
                   label=f"{p} worker{'s' if p > 1 else ''}: mean {st['mean']:.2f} (n = {st['n']})")
        ax.set_xticks(sorted({k for h in h_by_p.values() for k in h}))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        links = sorted({str(x) for x in df.get("link", pd.Series(dtype=str)).dropna() if x})
        ax.set_title(f"{title}, all repeats pooled" + (f" (links {', '.join(links)} together)" if links else ""))
        ax.legend(fontsize=8)
    fig.suptitle("Async all-reduce (the seed's method): what each update summed, and how stale it was")
    return _save(fig, path)


# ------------------------------------------------------------------ compressed gradients on modeled GPUs (issue 15)
def plot_compression_projection(rows: dict[str, list[dict]], seed: dict, path: str) -> plt.Figure | None:
    """One panel per workload (head, batch): each compression method's modeled efficiency (sync all-reduce, tsubame2.5) with its
    band; the method's measured ratio and compress time carried over (compare/scaling.py: project).
    rows: workload label -> scaling.projection_rows output of every method (one panel each)."""
    if not rows:
        return None
    fig, axes = plt.subplots(1, len(rows), figsize=(6.4 * len(rows), 5.2), squeeze=False)
    for ax, rs in zip(axes[0], rows.values()):
        methods = list(dict.fromkeys(r["compression"] for r in rs))
        efficiency_panel(ax, [(m, sorted((r for r in rs if r["compression"] == m), key=lambda r: r["p"]),
                               SERIES_COLORS[i % len(SERIES_COLORS)], "osDv^<>"[i % 7]) for i, m in enumerate(methods)],
                         seed)
        ax.set_title(f"{rs[0]['profile']}, sync all-reduce: cnn11 {rs[0]['head']} head, batch {rs[0]['batch']} per GPU",
                     fontsize=9)
        ax.legend(fontsize=6.5, loc="lower left")
    fig.suptitle("Compressed gradients on modeled GPUs: each method's measured bytes ratio and compress time "
                 "(per fp32 byte, this study's CPU workers) in the measured-terms model", fontsize=9)
    return _save(fig, path)
