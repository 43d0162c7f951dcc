"""The emulated-cluster study (issue 8): model math per link, the report on fixtures, and a tiny real study.

The end-to-end test brings up its own 2-node cluster (slurm.localcluster: netns nodes, tc-shaped link),
runs every run type of `python -m compare run --cluster emulated` once at one link rate with a tiny model,
then `compare report`. Root and SLURM are required: without them the test skips, and under CI=true it
fails instead. Run it under `flock /work/slurm-tests.lock` (one SLURM cluster at a time).
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, child_env, require_root_and
from compare import scaling
from compare.report import write_report
from test_compare import rec
from train import record



# ---------------------------------------------------------------- model math per link
def test_sync_model_per_link():
    n, batch, t1s = 64e6, 32, 0.1
    assert scaling.emulated_sync_ips(t1s, 1, n, 0.01, 1e8, batch) == pytest.approx(batch / t1s)
    for alpha, bw in ((0.001, 1e9), (0.03, 7e7), (0.03, 1.1e7)):
        step = 1.3 * t1s + 2 * alpha + n / bw
        assert scaling.emulated_sync_ips(t1s, 2, n, alpha, bw, batch, kappa=1.3) == pytest.approx(2 * batch / step)
    rates = [scaling.emulated_sync_ips(t1s, 2, n, 0.01, bw, batch) for bw in (1e9, 1e8, 1e7)]
    assert rates == sorted(rates, reverse=True)  # a slower link never helps


def test_async_model_per_link():
    n, batch, t1a = 64e6, 32, 0.3
    assert scaling.emulated_async_ips(t1a, 1, n, 0.01, 1e8, batch) == pytest.approx(batch / t1a)
    alpha, bw = 0.02, 1e8  # worker 0 beside the PS; worker 1 pulls n and pushes n over its link
    t_remote = t1a + 2 * alpha + 2 * n / bw
    assert scaling.emulated_async_ips(t1a, 2, n, alpha, bw, batch) == pytest.approx(batch * (1 / t1a + 1 / t_remote))
    capped = scaling.emulated_async_ips(t1a, 2, n, 1e-6, 1e12, batch, kappa=1.0, t1s=0.05)
    assert capped == pytest.approx(batch / 0.25)  # the PS serves one update at a time in t1a - t1s
    many = scaling.emulated_async_ips(t1a, 48, n, 0.0, bw, batch)
    assert many == pytest.approx(batch * (1 / t1a + bw / (2 * n)))  # the PS's link cap


def test_alpha_beta_fit_per_link_recovers_the_link():
    n = 71.9e6
    for alpha, bw in ((0.005, 2.5e8), (0.03, 7e7), (0.03, 1.2e7)):
        sizes = [n * f for f in (0.0625, 0.25, 0.5, 1.0)]
        a, b = scaling.fit_alpha_beta(sizes, [scaling.ring_time(s, 2, alpha, bw) for s in sizes], 2)
        assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(bw, rel=1e-6)


def test_emulated_band_contains_the_projection():
    inp = {"t1s": 0.13, "t1a": 0.27, "alpha": 0.03, "bw": 7e7, "kappa": 1.25}
    mid = scaling.emulated_speedups(inp, 64e6, 32, "sync")
    lo, hi = scaling.emulated_band(inp, 64e6, 32, "sync")
    assert all(a <= m <= b for a, m, b in zip(lo, mid, hi)) and hi[-1] > lo[-1]


# ---------------------------------------------------------------- the report on hand-written fixtures
def _rec(link: str, kind: str, rep: int, ips: float, copy: int = 0) -> dict:
    mode, nodes = kind.split("-")
    p = int(nodes[0])
    ceiling = mode == "ceil"
    return rec(f"{kind}-{link}-r{rep}-c{copy}", "sync" if ceiling else mode, 1 if ceiling else p, ips,
               role="ceiling" if ceiling else "main", copies=p if ceiling else 1, head="fc4096", host="n1",
               hosts=[f"n{k + 1}" for k in range(1 if ceiling else p)], per_worker_batch=32, gradient_bytes=64e6,
               link={"rate": link, "delay_ms": None, "nodes": 2}, study="emulated")


def _bench(path: Path, link: str, alpha: float, bw: float, n: float = 64e6) -> None:
    pattern = [{"factor": f, "bytes": int(n * f), "median_s": scaling.ring_time(n * f, 2, alpha, bw)}
               for f in (0.25, 0.5, 1.0)]
    path.write_text(json.dumps({"alpha_s": alpha, "bw_Bps": bw, "pattern": pattern, "singles": [], "link": link,
                                "measured_at": "2026-11-27T09:00:00Z"}))


def emulated_fixture(study: Path, links: dict, bench_links, ar_one_node: bool = True) -> None:
    study.mkdir(parents=True)
    recs = []
    for link, (alpha, bw) in links.items():
        if link in bench_links:
            _bench(study / f"linkbench-{link}-r0.json", link, alpha, bw)
        inp = {"t1s": 32 / 250, "t1a": 32 / 120, "t1r": 32 / 240, "alpha": alpha, "bw": bw, "kappa": 250 / 200}
        for rep in (0, 1):
            recs += [_rec(link, "sync-1n", rep, 250), _rec(link, "async-1n", rep, 120),
                     _rec(link, "ceil-2n", rep, 200, 0), _rec(link, "ceil-2n", rep, 200, 1)]
            recs += [_rec(link, "async_allreduce-1n", rep, 240)] if ar_one_node else []
            for kind in ("sync-2n", "async-2n", "async_allreduce-2n"):  # the model's prediction, +-2 % between repeats
                mode = kind.split("-")[0]
                pred = scaling.emulated_predict(mode, 2, inp, 32, 64e6)
                recs.append(_rec(link, kind, rep, pred * (1.02 if rep == 0 else 0.98)))
    recs.append({**_rec("1gbit", "sync-2n", 3, 1.0), "status": "failed", "images_per_sec": None, "mfu": None,
                 "error": "boom"})
    (study / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_report_on_fixtures_predicted_vs_measured(tmp_path):
    study = tmp_path / "emulated"
    emulated_fixture(study, {"1gbit": (0.03, 7e7), "200mbit": (0.03, 1.2e7)}, ("1gbit", "200mbit"))
    md = Path(write_report(str(study))).read_text()
    assert "## Emulated cluster: predicted vs measured, every point" in md
    for link in ("1gbit", "200mbit"):
        for kind in ("sync-1n", "async-1n", "async_allreduce-1n"):
            assert re.search(rf"\| {link} \| {kind} \| 2 \| .* \| calibration point \|", md), (link, kind)
        for kind in ("sync-2n", "async-2n", "async_allreduce-2n"):  # error 0, SE 2 %: the words follow the numbers
            assert re.search(rf"\| {link} \| {kind} \| 2 \| .* \| [+-]0\.0% \| within the goal \|", md), (link, kind)
    assert "2-node points: 6 (6 within the goal, 0 consistent within noise, 0 misses)" in md and "1 failed" in md
    for png in ("emulated_validation.png", "emulated_allreduce.png", "emulated_projection.png", "projection_gpus.png"):
        assert (study / png).stat().st_size > 10_000, png
    assert "shared with other engineers" not in md and "slurm-wlm" not in md  # no run's conclusions in code


def test_async_allreduce_on_emulated_links(tmp_path):
    """The seed's arm on the emulated nodes: compute-bound while the ring keeps up, so the model's 2-node
    rate is 2 workers at the contended 1-node sub-batch time; without a 1-node run of the arm, no prediction."""
    inp = {"t1s": 0.128, "t1a": 0.25, "t1r": 0.125, "alpha": 0.03, "bw": 1.2e7, "kappa": 1.25}
    assert scaling.emulated_predict("async_allreduce", 2, inp, 32, 64e6) == pytest.approx(2 * 32 / (0.125 * 1.25))
    assert scaling.emulated_predict("async_allreduce", 1, inp, 32, 64e6) == pytest.approx(32 / 0.125)
    assert math.isnan(scaling.emulated_predict("async_allreduce", 2, {**inp, "t1r": None}, 32, 64e6))
    study = tmp_path / "emulated"
    emulated_fixture(study, {"1gbit": (0.03, 7e7)}, ("1gbit",), ar_one_node=False)
    md = Path(write_report(str(study))).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| 1gbit | async_allreduce-2n |"))
    assert "no prediction: no 1-node run of this arm" in row and "inf" not in row
    assert re.search(r"\| 1gbit \| sync-2n \| 2 \| .* \| within the goal \|", md)  # the other arms unaffected


def test_link_without_bench_gets_no_prediction(tmp_path):
    study = tmp_path / "emulated"
    emulated_fixture(study, {"1gbit": (0.03, 7e7), "200mbit": (0.03, 1.2e7)}, ("1gbit",))
    md = Path(write_report(str(study))).read_text()
    assert "200mbit: **no prediction: no allreduce measurement**" in md
    row = next(line for line in md.splitlines() if line.startswith("| 200mbit | sync-2n |"))
    assert "no prediction: no allreduce measurement" in row and "inf" not in row


def test_report_without_valid_runs_is_one_line_exit_2(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "runs.jsonl").write_text(json.dumps({"status": "ok", "mode": "sync"}) + "\n")
    p = subprocess.run([sys.executable, "-m", "compare", "report", "--results-dir", str(tmp_path), "--study", "s"],
                       cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert sorted(x.name for x in (tmp_path / "s").iterdir()) == ["runs.jsonl"]


# ---------------------------------------------------------------- end to end on a real 2-node cluster
def _free_net_id() -> int:
    used = set(os.listdir("/var/run/netns")) if os.path.isdir("/var/run/netns") else set()
    for i in range(200, 250):
        if not Path(f"/sys/class/net/br{i}").exists() and not any(n.startswith(f"lc{i}n") for n in used):
            return i
    raise RuntimeError("no free --net-id")


@pytest.mark.slow
@pytest.mark.slurm
def test_tiny_emulated_study_end_to_end(tmp_path):
    require_root_and(("slurmctld", "slurmd", "sbatch", "munged", "ip", "tc", "nsenter"), "the emulated cluster")
    results, state = tmp_path / "results", tmp_path / "lc"
    cmd = [sys.executable, "-m", "compare", "run", "--cluster", "emulated", "--links", "1gbit", "--study", "tiny",
           "--results-dir", str(results), "--state-dir", str(state), "--net-id", str(_free_net_id()),
           "--heads", "fc4096", "--width", "0.125", "--per-worker-batch", "8", "--steps-per-epoch", "6",
           "--async-steps-per-epoch", "16", "--warmup-steps", "1", "--bench-reps", "2", "--bench-factors", "0.125,1",
           "--timeout", "180", "--no-progress", "--load-interval", "5", "--compressions", "none,topk:0.01:0"]
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=900)
    assert not state.exists(), "the study must take its cluster down"
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs, rejected = record.read_valid(str(results / "tiny" / "runs.jsonl"))
    ok = [r for r in recs if r["status"] == "ok"]
    assert rejected == 0 and len(ok) == len(recs) == 9, [(r["run_id"], r.get("error")) for r in recs]
    kinds = sorted((r["mode"], r["num_workers"], r["role"], r["copies"], r["compression"]) for r in ok)
    assert kinds == [("async", 1, "main", 1, "none"), ("async", 2, "main", 1, "none"),
                     ("async_allreduce", 1, "main", 1, "none"), ("async_allreduce", 2, "main", 1, "none"),
                     ("sync", 1, "ceiling", 2, "none"), ("sync", 1, "ceiling", 2, "none"), ("sync", 1, "main", 1, "none"),
                     ("sync", 2, "main", 1, "none"), ("sync", 2, "main", 1, "topk:0.01:0")]  # compressed: 2 nodes only
    plain, topk = (next(r for r in ok if r["num_workers"] == 2 and r["mode"] == "sync" and r["compression"] == c)
                   for c in ("none", "topk:0.01:0"))
    assert topk["bytes_sent_per_step"] < plain["bytes_sent_per_step"] / 10 and topk["compression_ratio"] > 10
    for r in ok:
        assert r["link"]["rate"] == "1gbit" and 0 < r["mfu"] <= 1
    two = [r for r in ok if r["num_workers"] == 2]
    assert all(sorted(r["hosts"]) == ["n1", "n2"] for r in two)
    bench = json.loads((results / "tiny" / "linkbench-1gbit-r0.json").read_text())
    assert bench["alpha_s"] >= 0 and 0 < bench["bw_Bps"] < 1.25e8 * 1.05  # cannot beat the shaped rate
    assert (results / "tiny" / "load.jsonl").stat().st_size > 0
    rep = subprocess.run([sys.executable, "-m", "compare", "report", "--study", "tiny", "--results-dir", str(results)],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    md = (results / "tiny" / "report.md").read_text()
    for kind in ("sync-2n", "async-2n", "async_allreduce-2n"):
        # one run: its SE over windows ("–" when its updates gave one window)
        row = re.search(rf"\| 1gbit \| {kind} \| 1 \| [\d.]+ ± [\d.–]+ \| [\d.–]+ \| ([\d.]+) \| ([+-][\d.]+)% \| (.+) \|", md)
        assert row and float(row.group(1)) > 0, (kind, md)
        assert row.group(3) in ("within the goal", "consistent within noise", "misses")
    sec = md.split("## Compressed gradients on the emulated links")[1].split("\n## ")[0]
    assert re.search(r"\| topk:0\.01:0 \| 1 \| [\d.]+ ± [\d.–]+ \| [+-]\d+% ± [\d–]+: (higher|lower|indistinguishable|untestable) \|", sec), sec
    assert (results / "tiny" / "emulated_compression.png").stat().st_size > 10_000


def test_compressed_gradients_on_emulated_links(tmp_path):
    """Issue 15 on the emulated links: compressed sync runs on 2 nodes are their own points beside none's; the
    model moves each method's measured bytes (ratio) and adds its measured compress time."""
    inp = {"t1s": 0.128, "t1a": 0.25, "alpha": 0.03, "bw": 1.2e7, "kappa": 1.25}
    topk = scaling.CompressionCost("topk:0.01", ratio=20.0, compress_s_per_B=1e-9, gather=True, overlapped=False)
    want = 2 * 32 / (1.25 * 0.128 + scaling.ring_time(64e6 / 20, 2, 0.03, 1.2e7) + 1e-9 * 64e6)
    assert scaling.emulated_predict("sync", 2, inp, 32, 64e6, topk) == pytest.approx(want)
    assert scaling.emulated_predict("sync", 1, inp, 32, 64e6, topk) == pytest.approx(32 / 0.128)  # no one to send to
    with pytest.raises(scaling.ModelError):
        scaling.emulated_predict("async", 2, inp, 32, 64e6, topk)
    study = tmp_path / "emulated"
    emulated_fixture(study, {"200mbit": (0.03, 1.2e7)}, ("200mbit",))
    recs = [json.loads(line) for line in (study / "runs.jsonl").read_text().splitlines()]
    params = int(64e6 / 4)  # the fixture's fp32 gradient_bytes
    for r in recs:  # the sync trainer's byte counts, none included
        r["trainable_params"] = params
        if r["mode"] == "sync" and r["role"] == "main":
            r |= {"bytes_sent_per_step": 4 * params, "bytes_received_per_step": 4 * params, "compression_ratio": 1.0}
    for rep, ips in ((0, 60.0), (1, 58.0)):  # topk: 20x fewer bytes, well above none's ~14 img/s
        r = _rec("200mbit", "sync-2n", rep, ips)
        recs.append({**r, "run_id": f"topk-{rep}", "trainable_params": params, "compression": "topk:0.01",
                     "compression_ratio": 20.0,
                     "bytes_sent_per_step": 4 * params / 20, "bytes_received_per_step": 2 * 4 * params / 20,
                     "compress_time_s_per_step": 0.064})
    (study / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    md = Path(write_report(str(study))).read_text()
    assert re.search(r"\| 200mbit \| sync-2n \| 2 \| .* \| within the goal \|", md)  # none's point unchanged
    assert "sync-2n+topk" not in md.split("## Emulated cluster: predicted vs measured")[1].split("\n## ")[0]
    sec = md.split("## Compressed gradients on the emulated links")[1].split("\n## ")[0]
    row = next(line for line in sec.splitlines() if line.startswith("| topk:0.01 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "2" and cells[3].endswith(": higher") and cells[6] == "20.0x" and cells[7] == "64"
    cost = scaling.CompressionCost("topk:0.01", 20.0, 0.064 / (4 * params), True, False)
    assert float(cells[8]) == pytest.approx(scaling.emulated_predict("sync", 2, inp, 32, 64e6, cost), rel=0.01)
    assert float(cells[8]) > float(next(line for line in sec.splitlines() if line.startswith("| none |")).split("|")[9])
    assert (study / "emulated_compression.png").stat().st_size > 10_000
