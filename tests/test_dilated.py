"""The time-dilated emulation (issue 14): the step's pieces, the fidelity checks on hand-written study files,
and real runs (Horovod over Gloo on this machine; the quick preset on SLURM nodes in network namespaces).

Real runs assert on the records they write, never on stdout. The namespace test must run under
`flock /work/slurm-tests.lock` (one SLURM cluster at a time) and brings up its own cluster (own state dir and
net id), which the study takes down.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, child_env, records, require_root_and
from compare import dilated, scaling
from compare.plan import PlanError, plan, preset
from train import record



# ---------------------------------------------------------------- pure pieces
def test_grad_counts_are_the_keras_models_tensors():
    import tensorflow as tf  # noqa: F401  (the Keras model is the reference)
    from train.model import cnn11

    for head, size, classes in (("gap", 224, 1000), ("fc4096", 32, 10)):
        keras = [int(w.shape.num_elements()) for w in cnn11((size, size, 3), classes, head, 1.0).trainable_weights]
        assert dilated.grad_counts(head, size, classes) == keras
    counts = dilated.grad_counts("gap")
    assert len(counts) == 35 and 4 * sum(counts) == 42045088  # the anchor's n_grad_tensors and grad_bytes


def test_byte_dilation_keeps_every_tensor():
    counts = dilated.grad_counts("gap")
    sent = dilated.dilated_counts(counts, 256)
    assert len(sent) == len(counts) and all(s >= 1 for s in sent)
    assert sum(sent) == pytest.approx(sum(counts) / 256, rel=1e-3)


def test_ready_offsets_follow_the_curve():
    counts = dilated.grad_counts("gap")[::-1]
    curve = scaling.measured_terms("tsubame2.5")["ready_curves"]["gap"]["ready_curve"]
    x = dilated.ready_offsets(counts, curve)
    assert len(x) == len(counts) and x == sorted(x) and 0 <= x[0] and x[-1] <= 1
    # the byte share ready by a quarter of backward is the curve's own (within one tensor)
    share = sum(c for c, t in zip(counts, x) if t <= 0.25) / sum(counts)
    by_quarter = max(y for t, y in curve if t <= 0.25)
    assert abs(share - by_quarter) < 0.12
    # a single end-of-step delay would make every tensor ready at 1: per-layer placement starts most bytes early
    assert share > 0.5
    # the first layer's gradient is backward's last result, for every head (fc4096's rounded curve reads 1.0
    # from 0.908 of backward on: its last tensors once sat there, and a slow rank then delayed no step)
    for head in ("gap", "fc4096"):
        c = dilated.grad_counts(head)[::-1]
        x = dilated.ready_offsets(c, scaling.measured_terms("tsubame2.5")["ready_curves"][head]["ready_curve"])
        assert x[-1] == 1.0 and x[-2] < 1.0 and x == sorted(x)


def test_quick_plan_and_rates():
    cfg = preset("dilated-quick")
    runs = plan(cfg)
    at_d = [(r.mode, r.workers, r.nodes) for r in runs if r.dilation == cfg.dilation]
    assert at_d == [(m, p, n) for p, n in ((1, 1), (2, 1), (4, 2)) for m in ("sync", "async_allreduce")]
    [check] = [r for r in runs if r.dilation == 2 * cfg.dilation]
    assert check.workers == 4 and check.mode == "sync"  # the dilation check is made on the sync arm
    b = dilated.link_Bps("tsubame2.5")
    for r in runs:
        assert dilated.rate_Bps(r.link) == pytest.approx(b / (cfg.byte_dilation * r.dilation), rel=1e-3)
    assert len({r.run_ids()[0] for r in runs}) == len(runs)
    with pytest.raises(PlanError):
        preset("dilated-quick", byte_dilation=10**9)  # B/(K·D) too slow to shape
    # a study of the PS arm alone checks dilation on that arm, at the largest p it runs
    ps_only = plan(preset("dilated", modes=("async",), async_max_workers=24))
    assert {r.mode for r in ps_only} == {"async"} and max(r.workers for r in ps_only) == 24
    [check] = [r for r in ps_only if r.dilation == 4.0]
    assert (check.mode, check.workers) == ("async", 24)


def test_ps_shards_each_behind_their_own_node_link(tmp_path):
    cfg = preset("dilated", modes=("async",), ps=3, results_dir=str(tmp_path), study="s")
    run = next(r for r in plan(cfg) if r.workers == 6 and r.dilation == cfg.dilation)
    argv = dilated.DilatedBackend().async_command(cfg, run, "rid")
    hostfile = next(a.split("=", 1)[1] for a in argv if a.startswith("SLURM_HOSTFILE="))
    tasks = Path(hostfile).read_text().split()
    # chief, 3 PS shards on n1, n2, n3 (the model's S shards, each its own link), then 3 workers a node
    assert tasks == ["n1", "n1", "n2", "n3", "n1", "n1", "n1", "n2", "n2", "n2"]
    assert argv[argv.index("--ps") + 1] == "3" and argv[argv.index("-n") + 1] == str(len(tasks))


def test_t_compute_comes_from_the_model():
    data = scaling.load_profile_data()
    for profile in dilated.PROFILES:
        terms = scaling.measured_terms(profile, data)
        want = scaling.compute_s(terms, scaling.input_values(terms), "gap", 64, data["paper_workload"])
        assert dilated.step_plan(profile, "gap", 64)["t_compute_s"] == want
        assert dilated.model_point(profile, "gap", 64, 1)["t_compute_s"] == want


# ---------------------------------------------------------------- fidelity on hand-written study files
def _rec(p: int, d: float, ips: float, link: str, host: str, sha: str, run_id: str) -> dict:
    nodes = max(1, (p + 1) // 2)
    return {k: None for k in record.REQUIRED_FIELDS} | {
        "schema_version": record.SCHEMA_VERSION, "run_id": run_id, "started_at": "2026-11-28T23:00:00+00:00",
        "status": "ok", "mode": "sync", "model": "cnn11", "head": "gap", "dataset": "synthetic", "image_size": 224,
        "num_workers": p, "num_ps": 0, "per_worker_batch": 4, "global_batch": 4 * p, "steps": 10, "warmup_steps": 2,
        "images_per_sec": ips, "images_per_sec_se": 0.001 * ips, "step_time_s": {"p50": 1.0, "p95": 1.0},
        "compression": "none", "versions": {}, "hosts": [f"n{i + 1}" for i in range(nodes)], "git_sha": sha,
        "git_dirty": False, "config": {}, "study": "fx", "role": "main", "copies": 1, "cpu_affinity": [0],
        "intra_op_threads": 1, "host": host, "link": {"rate": link, "delay_ms": None, "nodes": 2},
        "dilation": {"D": d, "K": 256, "profile": "tsubame2.5", "delay": "per_layer", "t_compute_s": 0.26,
                     "t_compute_source": "test", "link_rate": link, "emulated_link_Bps": 5e9, "grad_tensors": 35,
                     "grad_bytes_full": 42045088, "grad_bytes_sent": 164000, "controller": "mpi", "nodes": nodes,
                     "exposed_s_p50": 0.001, "host_busy_fraction": 0.01, "host_cpu_s_per_step": 0.01,
                     "real_step_s": 0.5,
                     "timeline": {"file": f"{run_id}.timeline.json", "steps": 8, "tensors_per_step": 35, "messages": 3,
                                  "step_s": 0.27, "before_comm_s": 0.1, "backward_s": 0.15, "wait_other_s": 0.01,
                                  "exposed_comm_s": 0.01, "start_latency_s": 0.005, "allreduce_busy_s": 0.02}}}


def _fixture(study: Path, drift: float, bench_fraction: float, **overrides) -> None:
    """The quick preset's study, every run done at this commit on this host: `compare run` only checks fidelity."""
    cfg = preset("dilated-quick", results_dir=str(study.parent), study=study.name, **overrides)
    sha = record.git_state()[0]
    study.mkdir(parents=True)
    lines = []
    for r in plan(cfg):
        p = r.workers
        one = 4 / (dilated.step_plan("tsubame2.5", "gap", 4)["t_compute_s"])
        ips = p * one * (1 + drift if r.dilation != cfg.dilation else 1.0)
        rec = _rec(p, r.dilation, ips, r.link, socket.gethostname(), sha, r.run_ids()[0])
        if r.mode == "async_allreduce":  # train/dilated_async_allreduce.py's fields: one update per t_compute
            rec |= {"mode": "async_allreduce", "updates_per_sec": 1 / 0.26, "allreduce_s": {"p50": 0.25},
                    "effective_batch": {"mean": float(p)}, "staleness": {"mean": 0.5, "max": 1}}
            rec["dilation"] = {**rec["dilation"], "delay": "sub_batch"}
        if r.mode == "async":  # train/dilated_ps.py's fields
            rec |= {"mode": "async", "num_ps": 1}
            rec["dilation"] = {**rec["dilation"], "delay": "dataset_sleep"}
        lines.append(rec)
    (study / "runs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for link in {r.link for r in plan(cfg)}:
        Path(dilated.bench_path(str(study), link, 0)).write_text(
            json.dumps({"bw_Bps": bench_fraction * dilated.rate_Bps(link), "alpha_s": 1e-4, "pattern": [{}]}))


def _compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compare", *args], cwd=ROOT, env=child_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.mark.skipif(os.geteuid() != 0, reason="--cluster dilated needs root")
def test_failed_fidelity_check_fails_the_study(tmp_path):
    study = tmp_path / "results" / "fx"
    _fixture(study, drift=0.10, bench_fraction=0.95)  # doubling D moved images/sec by 10%: the host was measured
    p = _compare("run", "--preset", "dilated-quick", "--study", "fx", "--results-dir", str(study.parent),
                 "--state-dir", str(tmp_path / "lc"), "--no-progress")
    fid = json.loads((study / "fidelity.json").read_text())
    assert p.returncode == 1 and not fid["ok"]
    assert [c["check"] for c in fid["checks"] if not c["ok"]] == ["dilation"]
    assert "+10.0%" in fid["reason"] and "\n" not in fid["reason"]
    assert p.stderr.strip().splitlines()[-1].startswith("compare run: fidelity check failed: sync at p=4")
    assert not (tmp_path / "lc").exists()  # nothing was brought up: every run was already done
    assert _compare("report", "--study", "fx", "--results-dir", str(study.parent)).returncode == 0
    md = (study / "report.md").read_text()
    assert "**Fidelity check failed:" in md
    section = md.split("## Time-dilated emulation")[1].split("\n## ")[0]
    assert "within the goal" not in section and "model speedup" not in section


def test_a_ps_only_study_is_checked_on_its_own_arm(tmp_path):
    study = tmp_path / "results" / "fx"
    _fixture(study, drift=0.10, bench_fraction=0.95, modes=("async",))
    fid = dilated.fidelity(str(study))
    [check] = [c for c in fid["checks"] if c["check"] == "dilation"]
    assert not fid["ok"] and not check["ok"] and check["mode"] == "async" and check["value"] == pytest.approx(0.10)
    assert fid["reason"].startswith("async at p=4, D=2 -> 4")


def test_slow_link_bench_fails_and_passing_study_is_compared(tmp_path):
    study = tmp_path / "results" / "fx"
    _fixture(study, drift=0.01, bench_fraction=0.5)
    (study / "load.jsonl").write_text(json.dumps({"t": "x", "loadavg1": 1.0, "host": "h"}) + "\n")
    fid = dilated.fidelity(str(study))
    assert not fid["ok"] and all(c["check"].startswith("link") for c in fid["checks"] if not c["ok"])
    for path in study.glob("dilatedbench-*.json"):
        d = json.loads(path.read_text())
        path.write_text(json.dumps({**d, "bw_Bps": d["bw_Bps"] / 0.5 * 0.95}))
    with open(study / "runs.jsonl", "a") as f:  # an async record (train/dilated_ps.py's fields) gets its own table
        a = _rec(2, 2.0, 30.0, "78125kbit", "n1", "x", "async-p2")
        a["dilation"].pop("nodes")
        f.write(json.dumps({**a, "mode": "async", "num_ps": 1, "dilation": {**a["dilation"], "delay": "dataset_sleep"}}) + "\n")
    from compare.report import write_report
    (study / "README.md").write_text("Study `fx`: conditions written by hand.\nSecond line.\n")
    md = Path(write_report(str(study))).read_text()
    assert (study / "README.md").read_text() == "Study `fx`: conditions written by hand.\nSecond line.\n"  # kept
    assert "### async_ps (1 PS): tsubame2.5" in md
    # where the time goes: the sync arm from its records' timeline breakdown (emulated ms), the PS arm's update
    # period (2 workers x 4 images / 30 img/s = 266.7 ms) less its 260 ms of compute
    assert "| 4 | 270.0 | 100.0 | 150.0 | 10.0 | 10.0 | 5.0 | 20.0 | 3 / 35 |" in md
    assert "| 2 | 266.7 | 260.0 | 6.7 ± 0.3 | 2.5% |" in md  # the fixture's rate SE is 0.1% of it
    section = md.split("## Time-dilated emulation")[1].split("\n## ")[0]
    assert json.loads((study / "fidelity.json").read_text())["ok"]
    assert "model speedup" in section and "Fidelity check failed" not in section
    # p = 4: emulated speedup 4.00 against the model's own (straggler, overhead): its error is worded
    want = dilated.model_point("tsubame2.5", "gap", 4, 4)["speedup"]
    assert "| 4 | 2 | 1 |" in section and f"{want:.2f}" in section
    # the async all-reduce arm: its own section, its update rate beside the model's 1/max(t_ar, t_c)
    ar = section.split("### async_allreduce: tsubame2.5")[1].split("### ")[0]
    t_c = dilated.step_plan("tsubame2.5", "gap", 4)["t_compute_s"]
    assert f"| 4 | {1 / 0.26:.4g} | 4.00 | 0.50 | 1 | 250.0 | {1 / t_c:.4g} | {(1 / t_c * 0.26 - 1):+.1%} | 4.00 |" in ar
    assert "](dilated.png)" in section and (study / "dilated.png").stat().st_size > 10_000  # emulated beside model


# ---------------------------------------------------------------- real runs
def _step(results: Path, run_id: str, np_: int = 2, program: str = "train.dilated_step", **flags) -> dict:
    args = [f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]
    cmd = [str(Path(sys.executable).parent / "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}",
           sys.executable, "-m", program, "--study", "t", "--results-dir", str(results),
           "--run-id", run_id, *args]
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    [rec] = [r for r in records(results) if r["run_id"] == run_id]
    assert not record.problems(rec)
    return rec


@pytest.mark.slow
def test_per_layer_overlap_dilation_and_byte_dilation(results):
    """2 ranks over Gloo on this machine (no link shaping), h200 profile, batch 64, D = 40.
    Overlap: full-size tensors (K = 1), communication (~10 ms here) smaller than the dilated backward pass
    (~470 ms): placed per layer it hides behind backward; after one end-of-step delay it is exposed.
    Dilation: D = 80 gives the same emulated images/sec within the check's 3%.
    Byte dilation: K = 16 sends 1/16 of the bytes in as many tensors and gives the same images/sec within 3%."""
    common = dict(profile="h200", per_worker_batch=64, steps=5, warmup_steps=1, step_cv=0)
    layer = _step(results, "layer", dilation=40, byte_dilation=1, delay="per_layer",
                  hvd_timeline=results / "layer.timeline.json", **common)
    end = _step(results, "end", dilation=40, byte_dilation=1, delay="end", hvd_timeline=results / "end.timeline.json",
                **common)
    slower = _step(results, "layer-d80", dilation=80, byte_dilation=1, delay="per_layer", **common)
    small = _step(results, "k16", dilation=40, byte_dilation=16, delay="per_layer", **common)
    dl, de = layer["dilation"], end["dilation"]
    assert dl["grad_tensors"] == 35 and dl["grad_bytes_sent"] == dl["grad_bytes_full"] == 42045088
    assert dl["controller"] == "gloo" and dl["fusion_threshold_B"] == 67108864 and dl["cycle_time_ms"] == 40
    assert de["exposed_s_p50"] > 0 and dl["exposed_s_p50"] < 0.5 * de["exposed_s_p50"], (dl, de)
    assert layer["images_per_sec"] > end["images_per_sec"]
    # the emulated step is the model's compute plus what is exposed
    assert layer["images_per_sec"] == pytest.approx(2 * 64 / (dl["t_compute_s"] + dl["exposed_s_mean"]), rel=0.03)
    assert abs(slower["images_per_sec"] / layer["images_per_sec"] - 1) < 0.03, (slower, layer)
    # Horovod's own timeline (rank 0) tells the same story in emulated seconds: the backward window is the
    # profile's, per-layer delays leave less of the reduction exposed than one delay at the end, and a step is
    # what the record's rate says
    tl, te = dl["timeline"], de["timeline"]
    for t, rec in ((tl, layer), (te, end)):
        assert "error" not in t and t["tensors_per_step"] == 35 and 1 <= t["messages"] <= 35 and t["steps"] == 5
        assert t["step_s"] == pytest.approx(2 * 64 / rec["images_per_sec"], rel=0.05), (t, rec["images_per_sec"])
    assert tl["backward_s"] == pytest.approx(dl["backward_fraction"] * dl["t_compute_s"], rel=0.1), tl
    assert te["backward_s"] < 0.1 * tl["backward_s"]            # every gradient handed over at once
    assert te["exposed_comm_s"] > 0 and tl["exposed_comm_s"] < 0.5 * te["exposed_comm_s"], (tl, te)
    assert "timeline" not in slower["dilation"]                  # off unless asked for
    ds = small["dilation"]
    assert ds["grad_tensors"] == dl["grad_tensors"] and ds["fusion_threshold_B"] == 67108864 // 16
    assert ds["grad_bytes_sent"] == pytest.approx(dl["grad_bytes_sent"] / 16, rel=1e-3)
    assert abs(small["images_per_sec"] / layer["images_per_sec"] - 1) < 0.03, (small, layer)


@pytest.mark.slow
def test_a_step_waits_for_the_slowest_rank(results):
    """3 ranks whose compute times spread by step_cv = 0.5 (each rank's mean exactly t_compute): a synchronous
    step ends when the slowest rank's last allreduce returns, so the emulated rate falls to about
    p·batch / (t_compute·(1 + cv·E[max of p normals])) = 0.70 of p·batch / t_compute. Ranks that did not wait
    for each other (the allreduces' results unused) ran at ~0.97 of it."""
    rec = _step(results, "straggle", np_=3, profile="tsubame2.5", per_worker_batch=64, dilation=0.1,
                byte_dilation=256, steps=16, warmup_steps=2, step_cv=0.5)
    d = rec["dilation"]
    ideal = 3 * 64 / d["t_compute_s"]
    model = ideal / (1 + 0.5 * scaling.normal_max_factor(3))
    assert d["step_cv"] == 0.5 and rec["images_per_sec"] < 0.85 * ideal, (rec["images_per_sec"], ideal)
    assert rec["images_per_sec"] == pytest.approx(model, rel=0.12), (rec["images_per_sec"], model)


@pytest.mark.slow
def test_async_allreduce_arm_compute_never_waits(results):
    """The seed's method dilated (issue 16), 2 ranks over Gloo on this machine, no link shaping.
    Compute-bound (tsubame2.5, batch 4, K = 256: an all-reduce of 164 KB against 0.26 s of compute): every
    update carries about one sub-batch a rank, staleness at most 1. Communication-bound (h200, batch 64, K = 1:
    the 42 MB gradient set against ~20 ms of compute): updates carry several sub-batches a rank, yet images/sec
    stays the compute rate: a rank never waits for the network."""
    fast = _step(results, "ar-fast", program="train.dilated_async_allreduce", profile="tsubame2.5",
                 per_worker_batch=4, dilation=1, byte_dilation=256, steps=12, warmup_steps=2, step_cv=0)
    slow = _step(results, "ar-slow", program="train.dilated_async_allreduce", profile="h200", per_worker_batch=64,
                 dilation=1, byte_dilation=1, steps=120, warmup_steps=2, step_cv=0)
    for rec, steps in ((fast, 14), (slow, 122)):
        d = rec["dilation"]
        assert rec["mode"] == "async_allreduce" and d["delay"] == "sub_batch" and d["controller"] == "gloo"
        assert rec["sub_batches"] == 2 * steps and rec["staleness"]["n"] == 2 * steps  # counted exactly
        assert rec["effective_batch"]["n"] == rec["updates"]  # the mean is a float: compare to rounding, not ==
        assert rec["effective_batch"]["mean"] * rec["updates"] == pytest.approx(rec["sub_batches"], rel=1e-9)
        ideal = 2 * rec["per_worker_batch"] / d["t_compute_s"]
        assert 0.9 * ideal < rec["images_per_sec"] <= 1.03 * ideal, (rec["run_id"], rec["images_per_sec"], ideal)
        assert 0.9 * ideal < rec["compute_images_per_sec"] <= 1.02 * ideal
    t_c = fast["dilation"]["t_compute_s"]
    assert fast["effective_batch"]["mean"] < 2.5 and fast["staleness"]["max"] <= 1
    assert fast["updates_per_sec"] == pytest.approx(1 / t_c, rel=0.15)  # the period is compute's
    assert slow["effective_batch"]["mean"] > 4 and slow["allreduce_s"]["p50"] > 2 * slow["dilation"]["t_compute_s"]
    assert slow["updates_per_sec"] < 0.5 / slow["dilation"]["t_compute_s"]  # the all-reduce sets the period


@pytest.mark.slow
@pytest.mark.slurm
def test_quick_dilated_study_on_namespace_nodes(tmp_path):
    from test_emulated import _free_net_id

    require_root_and(("slurmctld", "slurmd", "srun", "munged", "ip", "tc", "nsenter"), "the namespace cluster")
    results, state = tmp_path / "results", tmp_path / "lc"
    # p = 1 and 2 ranks, one a node (the 2-rank ring crosses the shaped link), sync, async all-reduce and PS
    # with 2 shards (shard 0 on n1 beside the chief, shard 1 on n2: a placement SlurmClusterResolver got
    # wrong), then sync p = 2 at 2D
    p = _compare("run", "--preset", "dilated-quick", "--workers", "1,2", "--ranks-per-node", "1", "--study", "q",
                 "--modes", "sync,async_allreduce,async", "--ps", "2",
                 "--results-dir", str(results), "--state-dir", str(state), "--net-id", str(_free_net_id()),
                 "--bench-reps", "2", "--no-progress", "--timeout", "240")
    assert not state.exists(), "the study must take its cluster down"
    recs, rejected = record.read_valid(str(results / "q" / "runs.jsonl"))
    ok = [r for r in recs if r["status"] == "ok"]
    assert rejected == 0 and len(ok) == len(recs) == 7, [(r["run_id"], r.get("error")) for r in recs]
    for r in ok:
        d = r["dilation"]
        assert d["controller"] == ("grpc" if r["mode"] == "async" else "mpi")
        assert d["link_rate"] == r["link"]["rate"] and d["K"] == 256 and d["ranks"] == r["num_workers"]
        assert r["link"]["tcp_congestion_control"] == "reno"  # the nodes' TCP, as the backend set it
        if r["mode"] != "async":
            assert d["nodes"] == len(set(r["hosts"])) and d["host_cpu_s_per_step"] > 0
    assert sorted((r["mode"], r["num_workers"], r["dilation"]["D"]) for r in ok) == [
        ("async", 1, 2), ("async", 2, 2), ("async_allreduce", 1, 2), ("async_allreduce", 2, 2), ("sync", 1, 2),
        ("sync", 2, 2), ("sync", 2, 4)]
    for r in ok:  # every shard served: the PS tasks ran on both nodes, workers on theirs
        if r["mode"] == "async":
            assert r["num_ps"] == 2 and {"n1", "n2"} <= set(r["hosts"]), r["hosts"]
        else:
            assert len(set(r["hosts"])) == r["num_workers"], r["hosts"]
    for r in ok:  # sleeps, not compute: the emulated rate is the profile's, within what exposed comm costs
        one = r["per_worker_batch"] / r["dilation"]["t_compute_s"]
        top = 1.06 if r["mode"] == "async" else 1.02  # PS: a least-squares slope over 8 updates a worker
        assert 0.85 * one * r["num_workers"] < r["images_per_sec"] <= top * one * r["num_workers"], r["run_id"]
    ar2 = next(r for r in ok if r["mode"] == "async_allreduce" and r["num_workers"] == 2)
    assert ar2["sub_batches"] == 2 * (8 + 2) and ar2["updates_per_sec"] > 0 and ar2["staleness"]["n"] == 20
    fid = json.loads((results / "q" / "fidelity.json").read_text())
    assert p.returncode == (0 if fid["ok"] else 1), p.stderr[-2000:]
    assert {c["check"] for c in fid["checks"]} >= {"dilation", "host load"}
    rep = _compare("report", "--results-dir", str(results), "--study", "q")
    assert rep.returncode == 0, rep.stderr[-2000:]
    text = (results / "q" / "report.md").read_text()  # each arm its section; the model only when fidelity held
    assert "### sync_allreduce: tsubame2.5" in text and "### async_allreduce: tsubame2.5" in text
    assert "### async_ps (2 PS): tsubame2.5" in text and "push + pull + PS queue + dispatch" in text
    assert "sub-batches per update" in text and ("model updates/s = 1/max(t_ar, t_c)" in text) == fid["ok"]
    for r in ok:  # the backend records a Horovod timeline of every sync run and breaks it down into the record
        t = r["dilation"].get("timeline")
        assert (t is not None) == (r["mode"] == "sync"), r["run_id"]
        if t:
            assert "error" not in t and (results / "q" / "logs" / t["file"]).stat().st_size > 0
            assert t["tensors_per_step"] == r["dilation"]["grad_tensors"] and t["steps"] == 8
            assert t["step_s"] == pytest.approx(r["global_batch"] / r["images_per_sec"], rel=0.1), r["run_id"]
    assert "Where a step's time goes at each p" in text


@pytest.mark.parametrize("argv,words", [
    (["-m", "train.dilated_step", "--dilation", "0"], "--dilation must be > 0"),
    (["-m", "train.dilated_step", "--byte-dilation", "0"], "--byte-dilation must be >= 1"),
    (["-m", "train.dilated_step", "--profile", "dgx"], "invalid choice"),
    (["-m", "train.dilated_async_allreduce", "--steps", "1"], "--steps must be >= 2"),
    (["-m", "train.dilated_async_allreduce", "--delay", "end"], "unrecognized arguments"),
    (["-m", "compare", "run", "--cluster", "dilated", "--profile", "dgx"], "--profile: choose"),
    (["-m", "compare", "run", "--preset", "dilated-quick", "--byte-dilation", "1000000000"], "too slow to shape"),
])
def test_bad_input_one_line_exit_2_nothing_written(argv, words, tmp_path):
    p = subprocess.run([sys.executable, *argv, "--results-dir", str(tmp_path / "r")], cwd=ROOT, env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and words in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_async_arm_local_cluster(results):
    """The async arm (ParameterServerStrategy, 1 PS + 2 workers on loopback): compute is tf.data's sleep on
    each worker; the global update counter gives the emulated rate, compute-bound here (tiny pushes)."""
    cmd = [sys.executable, "-m", "train.dilated_ps", "--workers", "2", "--ps", "1", "--profile", "tsubame2.5",
           "--per-worker-batch", "4", "--dilation", "2", "--byte-dilation", "256", "--steps", "6",
           "--warmup-steps", "2", "--study", "t", "--results-dir", str(results), "--run-id", "ps"]
    p = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    [rec] = records(results)
    assert not record.problems(rec) and rec["mode"] == "async" and rec["num_ps"] == 1 and rec["num_workers"] == 2
    d = rec["dilation"]
    assert d["grad_tensors"] == 35 and d["delay"] == "dataset_sleep" and rec["steps"] == 2 * (6 + 2)
    ideal = 2 * 4 / d["t_compute_s"]
    assert 0.8 * ideal < rec["images_per_sec"] < 1.15 * ideal, (rec["images_per_sec"], ideal)
