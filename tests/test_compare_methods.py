"""compare/ for issues 15 and 16 on hand-written records (no training): the async all-reduce arm and the
compression study through the one pipeline (plan, backend commands, frame, model, report, plots), and (slow) a
tiny real `compare run` of the compression preset's shape. Asserts on files and records, never on stdout."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compare import calibration, frame, plan, plots, report, scaling
from compare.__main__ import main
from compare.local import LocalBackend
from tests.test_compare import BENCH, rec, write_runs
from train import record

ROOT = Path(__file__).resolve().parents[1]
PARAMS = 627706  # rec()'s trainable_params
GRAD = 4 * PARAMS


def hist(counts: dict[int, int]) -> dict:
    values = [k for k, n in counts.items() for _ in range(n)]
    return {**record.summarize(values)}


# ------------------------------------------------------------------ plan and launch (issue 15's preset)
def test_compression_preset_plans_every_method_in_the_sync_arm(tmp_path: Path):
    cfg = plan.preset("compression", results_dir=str(tmp_path))
    assert cfg.study == "compression" and cfg.dataset == "digits" and cfg.repeats == 3
    runs = plan.plan(cfg)
    assert {(r.mode, r.workers) for r in runs} == {("sync", 2)} and all(r.role == "main" for r in runs)
    assert sorted({r.compression for r in runs}) == sorted(("none", "fp16", "powersgd:4", "topk:0.01", "sign"))
    assert len(runs) == 5 * 3 and [r.repeat for r in runs] == sorted(r.repeat for r in runs)
    topk = next(r for r in runs if r.compression == "topk:0.01" and r.repeat == 2)
    [(rid, argv)] = LocalBackend().commands(cfg, topk)
    flags = dict(zip(argv, argv[1:]))
    assert "train.sync_allreduce" in argv and flags["--compression"] == "topk:0.01" and flags["--seed"] == "2"
    assert flags["--dataset"] == "digits" and float(flags["--lr"]) == cfg.lr and rid == topk.run_ids()[0]


def test_no_compressed_async_runs_are_planned(tmp_path: Path):
    cfg = plan.StudyConfig(results_dir=str(tmp_path), compressions=("none", "powersgd:2"), workers=(2,), ceiling=False)
    kinds = {(r.mode, r.compression) for r in plan.plan(cfg)}
    assert kinds == {("sync", "none"), ("sync", "powersgd:2"), ("async", "none"), ("async_allreduce", "none")}


@pytest.mark.parametrize("args, words", [
    (["--compressions", "none,zip"], "unknown compression 'zip'"),
    (["--compressions", "topk:2"], "topk:F needs a fraction"),
    (["--modes", "async", "--compressions", "sign"], "no mode of async runs compression sign"),
    (["--modes", "ps"], "unknown value 'ps'"),
    (["--async-allreduce-lr", "0"], "--async-allreduce-lr"),
    (["--preset", "dilated-quick", "--compressions", "none,fp16"], "dilated backend runs uncompressed gradients only"),
])
def test_bad_method_arguments_one_line_exit_2_nothing_written(tmp_path: Path, capsys, args, words):
    with pytest.raises(SystemExit) as e:
        main(["run", "--results-dir", str(tmp_path / "results"), "--study", "x", *args])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------------ the model (hand-computed)
def _profile(**kw) -> scaling.Profile:
    wl = {"gap": scaling.Workload("gap", 64, 0.5, 4.0e6)}
    return scaling.local_profile(1e-3, 1e9, wl, {1: 1.0, 2: 1.1}, {}, 2, **kw)


def test_async_allreduce_arm_images_by_compute_updates_by_the_allreduce_period():
    prof = _profile(async_allreduce_sub={"gap": 0.6})
    one, two = prof.predict("async_allreduce", "gap", 1), prof.predict("async_allreduce", "gap", 2)
    assert one.images_per_sec == pytest.approx(64 / 0.6) and one.updates_per_sec == pytest.approx(1 / 0.6)
    t_ar = 2 * 1e-3 + 4.0e6 / 1e9  # ring at p = 2: 2 alpha + n / B = 6 ms, shorter than a sub-batch
    assert two.comm_s == pytest.approx(t_ar)
    assert two.images_per_sec == pytest.approx(2 * 64 / (0.6 * 1.1))  # compute alone, slowed by kappa(2)
    assert two.updates_per_sec == pytest.approx(1 / (0.6 * 1.1)) and two.bound == "compute"
    slow = scaling.local_profile(1e-3, 1e6, {"gap": scaling.Workload("gap", 64, 0.5, 4.0e6)}, {1: 1.0}, {}, 2,
                                 async_allreduce_sub={"gap": 0.6})
    s2 = slow.predict("async_allreduce", "gap", 2)  # a 4 s all-reduce: compute goes on, updates slow down
    assert s2.images_per_sec == pytest.approx(2 * 64 / 0.6)
    assert s2.updates_per_sec == pytest.approx(1 / (2e-3 + 4.0)) and s2.bound.startswith("compute (comm")
    # without a measured sub-batch time the sync step stands in
    assert _profile().predict("async_allreduce", "gap", 1).images_per_sec == pytest.approx(64 / 0.5)


def test_compression_cost_in_the_comm_term():
    topk = scaling.CompressionCost("topk:0.01", ratio=50.0, compress_s_per_B=1e-8, gather=True, overlapped=False)
    psgd = scaling.CompressionCost("powersgd:4", ratio=20.0, compress_s_per_B=2e-8, overlapped=False)
    assert topk.wire_bytes(1000.0, 2) == pytest.approx(20.0) and topk.wire_bytes(1000.0, 8) == pytest.approx(80.0)
    assert psgd.wire_bytes(1000.0, 8) == pytest.approx(50.0)
    prof = _profile(compressions={"topk:0.01": topk, "powersgd:4": psgd})
    none, p4 = prof.sync("gap", 2), prof.sync("gap", 2, "powersgd:4")
    t_c = 0.5 * 1.1
    comm = 2 * 1e-3 + 4.0e6 / 20 / 1e9
    # exchanged after backward: nothing hidden, plus the compress time (2e-8 s/B x 4 MB = 80 ms)
    assert p4.step_s == pytest.approx(t_c + comm + 0.08) and p4.comm_s == pytest.approx(comm + 0.08)
    hidden = min(none.comm_s, prof.overlap * scaling.BACKWARD_FRACTION * t_c)
    assert none.step_s == pytest.approx(t_c + none.comm_s - hidden)
    assert prof.sync("gap", 1, "topk:0.01").step_s == pytest.approx(0.5)  # one worker: nothing sent or compressed
    with pytest.raises(scaling.ModelError):
        prof.sync("gap", 2, "sign")  # not measured: no prediction
    # tsubame2.5, fc4096 at batch 4 (the model has the interconnect bind there): fewer bytes, faster at 48 GPUs;
    # at batch 64 (compute-bound, the exchange hidden behind backward) the lost overlap costs a little instead
    cheap = scaling.CompressionCost("powersgd:4", ratio=100.0, overlapped=False)
    base = scaling.project("fc4096", 4, "sync_allreduce", 48)
    comp = scaling.project("fc4096", 4, "sync_allreduce", 48, compression=cheap)
    assert base["bound"] == "interconnect" and comp["bound"] == "compute"
    assert comp["wire_bytes"] == pytest.approx(base["wire_bytes"] / 100) and comp["speedup"] > base["speedup"]
    assert scaling.project("fc4096", 64, "sync_allreduce", 48, compression=cheap)["speedup"] \
        < scaling.project("fc4096", 64, "sync_allreduce", 48)["speedup"]
    band = scaling.projection_band("fc4096", 64, "sync_allreduce", 48, compression=psgd)
    assert "compress_scale" in band["by_input"] and band["low"] <= band["value"] <= band["high"]


# ------------------------------------------------------------------ issue 16 in the report
def ar_records(ar_factor: float) -> list[dict]:
    """sync, PS and async all-reduce at 1 and 2 workers, 3 repeats; the async all-reduce at ar_factor x sync."""
    out = []
    for i in range(3):
        for p, sync_ips in ((1, 100.0), (2, 180.0)):
            jitter = (-1.0, 0.0, 1.0)[i]
            out.append(rec(f"sync-p{p}-r{i}", "sync", p, sync_ips + jitter))
            out.append(rec(f"async-p{p}-r{i}", "async", p, 0.9 * sync_ips + jitter,
                           staleness=hist({0: 30} if p == 1 else {0: 10, 1: 20})))
            eff = {1: 40} if p == 1 else {2: 30, 3: 6}
            out.append(rec(f"async_allreduce-p{p}-r{i}", "async_allreduce", p, ar_factor * sync_ips + jitter,
                           effective_batch=hist(eff), staleness=hist({0: 40} if p == 1 else {0: 30, 1: 48}),
                           updates_per_sec=1.5 if p == 1 else 1.4 + 0.1 * i, compute_images_per_sec=sync_ips * 1.05,
                           num_ps=0))
        out += [rec(f"ceiling-p2-r{i}-c{c}", "sync", 1, 95.0, role="ceiling", copies=2) for c in range(2)]
    return out


def _study(tmp_path: Path, name: str, recs: list[dict], bench: bool = True) -> Path:
    d = tmp_path / "results" / name
    write_runs(d / "runs.jsonl", recs)
    if bench:
        (d / "allreduce.json").write_text(json.dumps(BENCH))
    (d / "study.json").write_text(json.dumps({"cores": [0, 1], "cpu": "test cpu", "cluster": "local"}))
    return d


@pytest.mark.parametrize("factor, word, so", [
    (1.2, "**higher** than the sync arm's by 20.0%", "came with more images/sec: consistent with the hypothesis"),
    (0.8, "**lower** than the sync arm's by 20.0%", "did not show as more images/sec (lower)"),
    (1.0, "not distinguishable from the sync arm's", "(no difference beyond 2 SE): these runs do not support")])
def test_report_shows_async_allreduce_beside_sync_and_ps_worded_from_the_numbers(tmp_path: Path, factor, word, so):
    d = _study(tmp_path, "ar", ar_records(factor))
    text = Path(report.write_report(str(d), profiles=["local"])).read_text()
    assert text.startswith("# Scaling study `ar`: sync ring-allreduce (Horovod) vs async parameter servers")
    sec = text.split("## Asynchronous all-reduce (the seed's method, issue 16)")[1].split("\n## ")[0]
    assert report.HYPOTHESIS in sec
    row = next(line for line in sec.splitlines() if line.startswith("| 2 | 3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{factor * 180:.1f} ± 0.6" and cells[3] == "180.0 ± 0.6" and cells[4] == "162.0 ± 0.6"
    assert cells[5] == "189.0" and cells[6] == "1.50 ± 0.06"
    # the update period: 1 / 1.5 updates/s vs the sync arm's 2 x 64 / 180 s; effective batch 2 x 30 + 3 x 6 over 36
    assert cells[7] == f"{1e3 / 1.5:.0f} / {2 * 64 / 180 * 1e3:.0f}"
    assert cells[8] == f"{(2 * 30 + 3 * 6) / 36:.2f} / 3 / 3" and cells[9] == f"{48 / 78:.2f} / 1 / 1"
    # model: compute alone (1-worker sub-batch time x kappa(2)), updates by the allreduce period
    prof, info = calibration.calibrate_local(*_loaded(d), calibration.load_bench(str(d)), 2)
    pred = prof.predict("async_allreduce", "gap", 2)
    assert info["async_allreduce_sub"]["gap"] == pytest.approx(64 / (factor * 100))
    assert cells[10] == f"{pred.images_per_sec:.1f}" and cells[11] == f"{pred.updates_per_sec:.2f}"
    assert word in sec and so in sec
    ratio = (1 / 1.5) / (2 * 64 / 180)
    assert f"every {1e3 / 1.5:.0f} ms, the sync arm every {2 * 64 / 180 * 1e3:.0f} ms (shorter: ratio {ratio:.2f})" in sec
    assert "were 0.62 updates stale on average" in sec
    # predicted vs measured among the other arms: the 1-worker point calibrates, the 2-worker point is tested
    model = text.split("## Model vs measurement (local profile)")[1].split("\n## ")[0]
    assert next(line for line in model.splitlines() if line.startswith("| async_allreduce | gap | none | 1 |")
                ).rstrip(" |").endswith("calibration point")
    two = next(line for line in model.splitlines() if line.startswith("| async_allreduce | gap | none | 2 |"))
    assert two.rstrip(" |").endswith(("within the goal", "consistent within noise", "misses"))
    assert (d / "async_allreduce.png").stat().st_size > 10_000 and "![async_allreduce.png](async_allreduce.png)" in text
    fig = plots.plot_async_allreduce(frame.load(str(d)).df, str(tmp_path / "a.png"))
    assert [ax.get_title() for ax in fig.axes] == ["Effective mini-batch, all repeats pooled", "Staleness, all repeats pooled"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["1 worker: mean 1.00 (n = 120)", f"2 workers: mean {(2 * 30 + 3 * 6) / 36:.2f} (n = 108)"]


def _loaded(d: Path):
    f = frame.load(str(d))
    return f.df, frame.speedup_table(f.df)


def test_async_allreduce_time_to_accuracy_beside_sync(tmp_path: Path):
    """The convergence preset's shape: the hypothesis lines add images and time to target from the curves."""
    recs = []
    for mode, per_epoch_s, acc in (("sync", 3.0, [0.3, 0.6, 0.92, 0.95]), ("async_allreduce", 2.0, [0.2, 0.5, 0.8, 0.93])):
        for seed in range(3):
            curve = [{"epoch": e + 1, "wall_s": per_epoch_s * (e + 1), "steps": 21 * (e + 1), "images": 1344 * (e + 1),
                      "loss": 1.0, "top1": a, "top5": 1.0, "val_loss": 1.0, "val_top1": a, "val_top5": 1.0}
                     for e, a in enumerate(acc)]
            extra = dict(effective_batch=hist({2: 40}), staleness=hist({1: 80}), updates_per_sec=2.0,
                         compute_images_per_sec=150.0) if mode == "async_allreduce" else {}
            recs.append(rec(f"{mode}-p2-r{seed}", mode, 2, 140.0 + seed, dataset="digits", curve=curve,
                            config={"seed": seed}, **extra))
    d = _study(tmp_path, "conv", recs, bench=False)
    text = Path(report.write_report(str(d), profiles=["local"], target=0.9)).read_text()
    sec = text.split("## Asynchronous all-reduce")[1].split("\n## ")[0]
    # sync reaches 90% at epoch 3 (4032 images, 9 s), async all-reduce at epoch 4 (5376 images, 8 s)
    assert "it needed 5376 images (sync 4032: ratio 1.33) and 8.0 s (sync 9.0 s: ratio 0.89)" in sec
    assert "| async_allreduce | 2 | none | 3/3 |" in text  # in the convergence table beside sync
    assert "no prediction: no sync 1-worker runs without compression to calibrate from" in sec


# ------------------------------------------------------------------ issue 15 in the report
FINALS = {"none": 0.97, "fp16": 0.968, "powersgd:4": 0.92, "topk:0.01": 0.975, "sign": 0.955}
SENT = {"none": GRAD, "fp16": GRAD / 2, "powersgd:4": 119_000, "topk:0.01": 57_000, "sign": GRAD / 4}
COMPRESS_S = {"none": 0.0, "fp16": 0.001, "powersgd:4": 0.02, "topk:0.01": 0.05, "sign": 0.01}


def compression_records() -> list[dict]:
    out = []
    for seed in range(3):
        for comp, final in FINALS.items():
            acc = [0.5, 0.85, 0.91, final + (seed - 1) * 0.002]
            curve = [{"epoch": e + 1, "wall_s": 5.0 * (e + 1), "steps": 21 * (e + 1), "images": 1344 * (e + 1),
                      "loss": 1.0, "top1": a, "top5": 1.0, "val_loss": 1.0, "val_top1": a, "val_top5": 1.0}
                     for e, a in enumerate(acc)]
            received = SENT[comp] * (2 if comp.startswith("topk") else 1)  # an allgather returns p x what it sent
            out.append(rec(f"sync-p2-{comp}-r{seed}", "sync", 2, 150.0 + seed, compression=comp, dataset="digits",
                           curve=curve, config={"seed": seed}, bytes_sent_per_step=SENT[comp],
                           bytes_received_per_step=received, compression_ratio=GRAD / SENT[comp],
                           compress_time_s_per_step=COMPRESS_S[comp]))
    return out


def test_compression_costs_come_from_the_records(tmp_path: Path):
    d = _study(tmp_path, "compression", compression_records(), bench=False)
    costs = calibration.compression_costs(frame.load(str(d)).df)
    assert set(costs) == set(FINALS)
    assert costs["topk:0.01"].gather and not any(costs[c].gather for c in FINALS if not c.startswith("topk"))
    assert costs["fp16"].overlapped and not costs["powersgd:4"].overlapped and not costs["sign"].overlapped
    assert costs["powersgd:4"].ratio == pytest.approx(GRAD / 119_000)
    assert costs["topk:0.01"].compress_s_per_B == pytest.approx(0.05 / GRAD)


def test_compression_report_per_method_against_none(tmp_path: Path):
    d = _study(tmp_path, "compression", compression_records(), bench=False)
    text = Path(report.write_report(str(d), profiles=["tsubame2.5"], target=0.9)).read_text()
    sec = text.split("## Gradient compression (sync arm, issue 15)")[1].split("\n## ")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in sec.splitlines() if line.startswith("| ") and "method" not in line and "---" not in line}
    assert set(FINALS) <= set(rows)
    for comp in FINALS:
        cells = rows[comp]
        assert cells[1] == "3" and cells[2] == f"{SENT[comp] / 1e3:.1f}" and cells[5] == f"{COMPRESS_S[comp] * 1e3:.1f}"
        assert cells[4] == f"{GRAD / SENT[comp]:.1f}x" and cells[7] == "15.0 ± 0.0 (15.0–15.0)" and cells[8] == "3/3"
        assert cells[9] == f"{FINALS[comp]:.3f} ± 0.002"
    assert rows["topk:0.01"][3] == f"{2 * SENT['topk:0.01'] / 1e3:.1f}"  # received: both ranks' values
    assert rows["none"][10] == "(baseline)"
    assert rows["fp16"][10] == "within 1 point of none (-0.2)" and rows["topk:0.01"][10] == "within 1 point of none (+0.5)"
    assert rows["powersgd:4"][10] == "falls short of none by 5.0 points"
    assert rows["sign"][10] == "falls short of none by 1.5 points"
    assert "ParameterServerStrategy" in sec and "exposes no hook" in sec
    # the tsubame2.5 projection: a row per (head, method) and a curve per method in projection_compression.png
    proj = sec.split("### Compressed gradients on tsubame2.5")[1]
    for workload in ("gap, batch 64", "fc4096, batch 64", "fc4096, batch 4"):
        for comp in FINALS:
            assert f"| {workload} | {comp} |" in proj, (workload, comp)
    assert (d / "projection_compression.png").stat().st_size > 10_000
    rows_by_head = report.compression_projection_rows(calibration.compression_costs(frame.load(str(d)).df))
    fig = plots.plot_compression_projection(rows_by_head, scaling.load_profile_data()["seed_claim"], str(tmp_path / "c.png"))
    assert len(fig.axes) == 3
    for ax in fig.axes:
        models = [ln for ln in ax.get_lines() if ln.get_label().endswith("band: inputs varied")]
        assert sorted(ln.get_label().rsplit(": model", 1)[0] for ln in models) == sorted(FINALS)
        assert len(ax.collections) == len(FINALS) and len({ln.get_marker() for ln in models}) == len(models)
    # fc4096, batch 4, 48 GPUs: none is the uncompressed model; a measured compress time carried per byte to
    # the 134 M-parameter head dominates a compressed step, and its band says so
    fc = {r["compression"]: r for r in rows_by_head["fc4096, batch 4"] if r["p"] == 48}
    assert fc["none"]["speedup"] == pytest.approx(scaling.project("fc4096", 4, "sync_allreduce", 48)["speedup"])
    assert fc["powersgd:4"]["most"] == "compress_scale" and fc["powersgd:4"]["high"] > fc["powersgd:4"]["speedup"]
    assert not math.isnan(fc["sign"]["low"]) and fc["sign"]["low"] <= fc["sign"]["speedup"] <= fc["sign"]["high"]


# ------------------------------------------------------------------ end to end (real launchers, small)
@pytest.mark.slow
def test_compression_preset_shape_end_to_end(tmp_path: Path):
    """`compare run --preset compression` with a tiny override (synthetic, 1 epoch, 6 steps, 1 seed, two
    methods): sync records with the compression fields, and the report's compression section."""
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "compare", "run", "--preset", "compression", "--results-dir", str(results),
            "--dataset", "synthetic", "--epochs", "1", "--steps-per-epoch", "6", "--warmup-steps", "2",
            "--repeats", "1", "--compressions", "none,topk:0.01", "--no-progress", "--timeout", "300"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    recs, rejected = record.read_valid(str(results / "compression" / "runs.jsonl"))
    assert rejected == 0 and [r["status"] for r in recs] == ["ok", "ok"], [r.get("error") for r in recs]
    by = {r["compression"]: r for r in recs}
    assert set(by) == {"none", "topk:0.01"} and all(r["num_workers"] == 2 and r["mode"] == "sync" for r in recs)
    assert by["topk:0.01"]["bytes_sent_per_step"] < by["none"]["bytes_sent_per_step"]
    # an allgather returns both ranks' values (small tensors ride an allreduce: received = sent for those)
    assert by["topk:0.01"]["bytes_received_per_step"] == pytest.approx(2 * by["topk:0.01"]["bytes_sent_per_step"],
                                                                       rel=0.01)
    rep = subprocess.run([sys.executable, "-m", "compare", "report", "--results-dir", str(results), "--study",
                          "compression", "--profiles", "tsubame2.5"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (results / "compression" / "report.md").read_text()
    sec = text.split("## Gradient compression (sync arm, issue 15)")[1]
    row = next(line for line in sec.splitlines() if line.startswith("| topk:0.01 | 1 |"))
    ratio = by["none"]["bytes_sent_per_step"] / by["topk:0.01"]["bytes_sent_per_step"]
    assert f"| {by['topk:0.01']['bytes_sent_per_step'] / 1e3:.1f} |" in row and f"| {ratio:.1f}x |" in row
    assert (results / "compression" / "projection_compression.png").stat().st_size > 10_000
