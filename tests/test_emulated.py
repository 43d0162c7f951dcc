"""The emulated-cluster study (issue 8): model math per link, the report on fixtures, and a tiny real study.

The end-to-end test brings up its own 2-node cluster (slurm.localcluster: netns nodes, tc-shaped link),
runs every run type of `python -m compare run --cluster emulated` once at one link rate with a tiny model,
then `compare report --cluster emulated`. Root and SLURM are required: without them the test skips, and
under CI=true it fails instead.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, child_env, records
from compare import emulated_report as er
from compare import scaling

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


# ---------------------------------------------------------------- model math per link
def test_sync_model_per_link():
    n, batch, t1s = 64e6, 32, 0.1
    # p = 1: no communication, the calibration point itself
    assert er.sync_ips(t1s, 1, n, 0.01, 1e8, batch) == pytest.approx(batch / t1s)
    # p = 2: ring 2(p-1) alpha + 2(p-1)/p n / B = 2 alpha + n / B, with the compute slowed by kappa
    for alpha, bw in ((0.001, 1e9), (0.03, 7e7), (0.03, 1.1e7)):
        step = 1.3 * t1s + 2 * alpha + n / bw
        assert er.sync_ips(t1s, 2, n, alpha, bw, batch, kappa=1.3) == pytest.approx(2 * batch / step)
    # a slower link never helps
    rates = [er.sync_ips(t1s, 2, n, 0.01, bw, batch) for bw in (1e9, 1e8, 1e7)]
    assert rates == sorted(rates, reverse=True)


def test_async_model_per_link():
    n, batch, t1a = 64e6, 32, 0.3
    assert er.async_ips(t1a, 1, n, 0.01, 1e8, batch) == pytest.approx(batch / t1a)
    # worker 0 beside the PS; worker 1 pulls n and pushes n over its link
    alpha, bw = 0.02, 1e8
    t_remote = t1a + 2 * alpha + 2 * n / bw
    assert er.async_ips(t1a, 2, n, alpha, bw, batch) == pytest.approx(batch * (1 / t1a + 1 / t_remote))
    # the PS serves one update at a time in kappa (t1a - t1s): a fast link cannot beat that cap
    capped = er.async_ips(t1a, 2, n, 1e-6, 1e12, batch, kappa=1.0, t1s=0.05)  # 2/0.3 updates/s > 1/0.25
    assert capped == pytest.approx(batch / 0.25)
    # the PS's link cap: B / 2n updates/s for the remote workers
    many = er.async_ips(t1a, 48, n, 0.0, bw, batch)
    assert many == pytest.approx(batch * (1 / t1a + bw / (2 * n)))


def test_alpha_beta_fit_per_link_recovers_the_link():
    n = 71.9e6
    for alpha, bw in ((0.005, 2.5e8), (0.03, 7e7), (0.03, 1.2e7)):
        sizes = [n * f for f in (0.0625, 0.25, 0.5, 1.0)]
        times = [scaling.ring_time(s, 2, alpha, bw) for s in sizes]
        a, b = scaling.fit_alpha_beta(sizes, times, 2)
        assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(bw, rel=1e-6)


# ---------------------------------------------------------------- the report on hand-written fixtures
def _rec(link: str, run: str, rep: int, ips: float, copy: str | None = None) -> dict:
    mode, nodes = run.split("-")
    tag = f"role=main;cluster=emulated;link={link};run={run};rep={rep}" + (f";copy={copy}" if copy else "")
    return {"status": "ok", "mode": "sync" if mode == "ceil" else mode,
            "num_workers": 2 if nodes == "2n" and mode != "ceil" else 1, "images_per_sec": ips,
            "per_worker_batch": 32, "gradient_bytes": 64e6, "hosts": ["n1"], "tag": tag,
            "link": {"rate": link, "delay_ms": 0.0, "nodes": 2}, "versions": {"python": "3.11"},
            "started_at": "2026-11-27T09:00:00+00:00", "git_sha": "abc"}


def _bench(path: Path, link: str, alpha: float, bw: float, n: float = 64e6) -> None:
    pattern = [{"factor": f, "bytes": int(n * f), "median_s": scaling.ring_time(n * f, 2, alpha, bw)}
               for f in (0.25, 0.5, 1.0)]
    path.write_text(json.dumps({"alpha_s": alpha, "bw_Bps": bw, "pattern": pattern, "singles": [], "link": link}))


def test_report_on_fixtures_predicted_vs_measured(tmp_path):
    study = tmp_path / "emulated"
    study.mkdir()
    links = {"1gbit": (0.03, 7e7), "200mbit": (0.03, 1.2e7)}
    recs = []
    for link, (alpha, bw) in links.items():
        _bench(study / f"linkbench-{link}-r1.json", link, alpha, bw)
        inp = {"t1s": 32 / 250, "t1a": 32 / 120, "alpha": alpha, "bw": bw, "kappa": 250 / 200}
        for rep in (1, 2):
            recs += [_rec(link, "sync-1n", rep, 250), _rec(link, "async-1n", rep, 120),
                     _rec(link, "ceil-2n", rep, 200, "n1"), _rec(link, "ceil-2n", rep, 200, "n2")]
            # 2-node points: the model's own prediction, +-2 % between repeats
            for run in ("sync-2n", "async-2n"):
                recs.append(_rec(link, run, rep, er.predict(run, inp, 32, 64e6) * (1.02 if rep == 1 else 0.98)))
    recs.append({**_rec("1gbit", "sync-2n", 3, 0.0), "status": "failed", "images_per_sec": None, "error": "boom"})
    (study / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    path = er.write_report(str(study))
    md = Path(path).read_text()
    assert "## Predicted vs measured, every point" in md
    for link in links:
        for run in ("sync-1n", "sync-2n", "async-1n", "async-2n"):
            assert re.search(rf"\| {link} \| {run} \| 2 \|", md), (link, run)
        assert re.search(rf"- \*\*{link}: [+-]0\.\d%\*\*", md), md  # largest error per link
    assert "Largest error over all link rates" in md and "1 failed" in md and "sync @48" in md
    for png in ("emulated_validation.png", "emulated_allreduce.png", "emulated_projection.png"):
        assert (study / png).stat().st_size > 10_000


def test_report_without_emulated_runs_is_one_line_exit_2(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "runs.jsonl").write_text(json.dumps({"status": "ok", "tag": "role=main"}) + "\n")
    p = subprocess.run([sys.executable, "-m", "compare", "report", "--cluster", "emulated", "--results-dir",
                        str(tmp_path), "--study", "s"], cwd=ROOT, env=child_env(), capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "s" / "report.md").exists()


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
    reason = None
    if os.geteuid() != 0:
        reason = "the emulated cluster needs root"
    elif missing := [p for p in ("slurmctld", "slurmd", "sbatch", "munged", "ip", "tc", "nsenter") if not shutil.which(p)]:
        reason = f"missing {', '.join(missing)}"
    if reason:
        if IN_CI:
            pytest.fail(f"must run under CI=true, but: {reason}")
        pytest.skip(reason)
    results, state = tmp_path / "results", tmp_path / "lc"
    cmd = [sys.executable, "-m", "compare", "run", "--cluster", "emulated", "--links", "1gbit", "--study", "tiny",
           "--results-dir", str(results), "--state-dir", str(state), "--net-id", str(_free_net_id()),
           "--head", "fc4096", "--width", "0.125", "--per-worker-batch", "8", "--sync-steps", "6",
           "--async-steps", "16", "--warmup-steps", "1", "--bench-reps", "2", "--bench-factors", "0.125,1",
           "--timeout", "180"]
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(TF_NUM_INTRAOP_THREADS="1"), capture_output=True, text=True,
                       timeout=900)
    assert not state.exists(), "the study must take its cluster down"
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    recs = [r for r in records(results, "tiny") if r.get("status") == "ok"]
    runs = sorted(re.search(r"run=([\w-]+)", r["tag"]).group(1) for r in recs)
    assert runs == ["async-1n", "async-2n", "ceil-2n", "ceil-2n", "sync-1n", "sync-2n"], runs
    for r in recs:
        assert r["link"] == {"rate": "1gbit", "delay_ms": 0.0, "nodes": 2}, r["link"]
    two = {re.search(r"run=([\w-]+)", r["tag"]).group(1): r for r in recs if r["num_workers"] == 2}
    assert two["sync-2n"]["hosts"] == ["n1", "n2"] and two["async-2n"]["hosts"] == ["n1", "n2"]
    bench = json.loads((results / "tiny" / "linkbench-1gbit-r1.json").read_text())
    assert bench["alpha_s"] >= 0 and 0 < bench["bw_Bps"] < 1.25e8 * 1.05  # cannot beat the shaped rate
    assert bench["hosts"] == ["n1", "n2"]

    rep = subprocess.run([sys.executable, "-m", "compare", "report", "--cluster", "emulated", "--study", "tiny",
                          "--results-dir", str(results)], cwd=ROOT, env=child_env(), capture_output=True,
                         text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr
    md = (results / "tiny" / "report.md").read_text()
    assert "## Predicted vs measured, every point" in md
    for run in ("sync-1n", "sync-2n", "async-1n", "async-2n"):
        row = re.search(rf"\| 1gbit \| {run} \| 1 \| ([\d.]+) \([^)]*\) \| ([\d.]+) \| ([+-][\d.]+)% \|", md)
        assert row, (run, md)
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0 and math.isfinite(float(row.group(3)))
    assert re.search(r"- \*\*1gbit: [+-][\d.]+%\*\*", md)
