"""Issue 12 model terms, each on a hand-computed case; the published K80 set's schema and two
hand-checked predictions; the tsubame2.5 seed table and band. Pure functions, no TensorFlow."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from compare import scaling, validate

ROOT = Path(__file__).resolve().parents[1]
K80 = ROOT / "compare" / "published" / "k80.json"


# ------------------------------------------------------------------ exposed communication
def test_exposed_comm_from_a_ready_curve():
    # half the bytes ready at mid-backward, the rest at its end; t_comm = t_bwd = 1 s:
    # first half sent 0.5 -> 1.0, second half 1.0 -> 1.5: 0.5 s exposed
    assert scaling.exposed_comm(1.0, 1.0, [(0.5, 0.5), (1.0, 1.0)]) == pytest.approx(0.5)
    # everything ready at once: 0.5 s of comm fits in 1 s of backward
    assert scaling.exposed_comm(0.5, 1.0, [(0.0, 1.0)]) == 0.0
    # nothing ready before backward ends: all of it exposed
    assert scaling.exposed_comm(0.7, 1.0, [(1.0, 1.0)]) == pytest.approx(0.7)
    # 3 s of comm behind 1 s of backward, all ready at 0: 2 s exposed
    assert scaling.exposed_comm(3.0, 1.0, [(0.0, 0.25), (0.0, 1.0)]) == pytest.approx(2.0)


def test_fused_messages_and_latency():
    mib = 1024 * 1024
    assert scaling.fused_messages(150 * mib, 64 * mib) == 3
    assert scaling.fused_messages(1, 64 * mib) == 1
    # 6 GPUs, 3 a node: each message pays 2*2 intra alphas + 2*1 inter alphas; half a 4 ms cycle
    assert scaling.fused_latency(3, 6, 3, 1e-5, 5e-6, 0.004) == pytest.approx(3 * (4e-5 + 1e-5) + 0.002)
    assert scaling.fused_latency(3, 1, 3, 1e-5, 5e-6, 0.004) == 0.0


# ------------------------------------------------------------------ stragglers
def test_expected_max_of_p_draws_from_the_empirical_cdf():
    assert scaling.expected_max([1.0, 2.0], 2) == pytest.approx(1.75)      # 1/4 * 1 + 3/4 * 2
    assert scaling.expected_max([3.0, 1.0, 2.0], 2) == pytest.approx(22 / 9)  # (1 + 2*3 + 3*5) / 9
    assert scaling.expected_max([1.0, 2.0, 3.0], 1) == pytest.approx(2.0)
    assert scaling.straggler_time([1.0, 2.0, 3.0], 2) == pytest.approx(4 / 9)
    assert scaling.straggler_time([5.0, 5.0], 48) == pytest.approx(0.0)


def test_normal_max_factor():
    assert scaling.normal_max_factor(1) == 0.0
    assert scaling.normal_max_factor(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-6)
    assert scaling.normal_max_factor(3) == pytest.approx(1.5 / math.sqrt(math.pi), rel=1e-6)
    assert scaling.normal_max_factor(10) == pytest.approx(1.53875, abs=1e-4)   # tabulated (Tippett 1925)
    assert scaling.normal_max_factor(100) == pytest.approx(2.50759, abs=1e-4)


def test_effective_bandwidth_is_the_slower_of_link_and_cpu():
    assert scaling.effective_bandwidth(10e9, 4e9) == 4e9
    assert scaling.effective_bandwidth(1e9, 4e9) == 1e9
    assert scaling.effective_bandwidth(1e9, None) == 1e9


# ------------------------------------------------------------------ parameter servers
def test_ps_full_duplex_cap_service_time_and_chief():
    # 4 workers, 1 s compute, n = 1 GB over 1 GB/s links: a worker needs 1 + 1 s (push || pull)
    assert scaling.ps_async_rate(4, 1.0, 1e9, 2, 1e9, 1e9) == pytest.approx(2.0)
    # 2 full-duplex shards serve 2 / (n/B) = 2 updates/s; the old half-duplex formula gave S*B/(2n) = 1
    assert scaling.ps_async_rate(8, 1.0, 1e9, 2, 1e9, 1e9) == pytest.approx(2.0)
    assert scaling.ps_update_rate(8, 2.0, 1e9, 2, 1e9) == pytest.approx(1.0)
    # PS CPU: 4 s of service per update over 2 shards -> 0.5 updates/s
    assert scaling.ps_async_rate(8, 1.0, 1e9, 2, 1e9, 1e9, service_s=4.0) == pytest.approx(0.5)
    # the chief dispatches at most 1.5 steps/s
    assert scaling.ps_async_rate(4, 1.0, 1e9, 2, 1e9, 1e9, chief_rate=1.5) == pytest.approx(1.5)


def test_sync_ps_busiest_nic_bytes():
    assert scaling.sync_ps_nic_bytes(1.0, 8, 8) == pytest.approx(1.75)   # = ring 2(N-1)/N
    assert scaling.sync_ps_nic_bytes(1.0, 8, 4) == pytest.approx(2.5)    # (8 + 4 - 2) / 4
    assert scaling.sync_ps_nic_bytes(1.0, 2, 1) == pytest.approx(1.0)
    assert scaling.sync_ps_nic_bytes(1.0, 1, 1) == 0.0


def test_async_allreduce_arm():
    # all-reduce 2 s, compute 1 s: with 1 sub-batch in flight the worker waits -> 4*10/2 img/s
    assert scaling.async_allreduce_rate(4, 10, 1.0, 2.0, 1) == pytest.approx((20.0, 0.5, 40.0))
    # accumulating 2 sub-batches keeps compute busy: 40 img/s, still 0.5 updates/s of 80 images
    assert scaling.async_allreduce_rate(4, 10, 1.0, 2.0, 2) == pytest.approx((40.0, 0.5, 80.0))
    assert scaling.async_allreduce_rate(4, 10, 1.0, 0.5, 1) == pytest.approx((40.0, 1.0, 40.0))


def test_step_terms_add_up():
    t = scaling.step_terms(1.0, 2, comm_s=0.5, hidden_fraction=0.4, overhead_s=0.1, straggler_s=0.05)
    assert t.exposed_s == pytest.approx(0.3) and t.step_s == pytest.approx(1.45)
    assert t.efficiency == pytest.approx(1 / 1.45)
    t = scaling.step_terms(1.0, 2, comm_s=1.0, backward_fraction=1.0, ready_curve=[(0.5, 0.5), (1.0, 1.0)])
    assert t.exposed_s == pytest.approx(0.5)
    assert scaling.step_terms(1.0, 1, comm_s=9.0, overhead_s=1.0).step_s == 1.0


# ------------------------------------------------------------------ published K80 set (compare validate)
def test_k80_file_schema_and_sources():
    doc = validate.load(str(K80))
    assert set(doc["globals"]["values"]) == set(scaling.VALIDATION_GLOBALS) and len(scaling.VALIDATION_GLOBALS) <= 3
    assert doc["globals"]["generation"] == "kepler"
    for pt in doc["points"]:
        assert set(validate.POINT_FIELDS) <= set(pt)
        assert pt["source"].startswith("https://") and pt["title"] and pt["network"]
    models = {pt["model"] for pt in doc["points"]}
    assert models == {"inception3", "resnet50", "resnet152"}
    assert {pt["gpus"] for pt in doc["points"]} == {1, 2, 4, 8, 16, 32, 64}
    for m in doc["models"].values():
        assert m["source"].startswith("https://")


def test_validation_arithmetic_on_two_hand_checked_points():
    doc = json.loads(K80.read_text())
    g = {"overhead_s": 0.055, "hidden_fraction": 0.46, "step_cv": 0.02}
    rs = {(r["table"].split(" / ")[0], r["model"], r["batch_per_gpu"], r["gpus"]): r for r in validate.rows(doc, g)}
    # ResNet-50, batch 64, 64 GPUs on 8 p2.8xlarge, 8 PS: t_c = 64/52.4; NIC bytes 1.75 x 4 x 25.6e6 at 1.25e9 B/s,
    # 54% exposed; 0.055 s overhead; straggler 0.02 x t_c x E[max of 64 standard normals]
    t_c = 64 / 52.4
    step = t_c + 0.54 * 1.75 * 102.4e6 / 1.25e9 + 0.055 + 0.02 * t_c * scaling.normal_max_factor(64)
    r = rs[("Details for Amazon EC2 Distributed (NVIDIA Tesla K80)", "resnet50", 64, 64)]
    assert r["predicted_eff"] == pytest.approx(t_c / step, rel=1e-9)
    assert r["published_eff"] == pytest.approx(2744 / (64 * 52.4))
    # InceptionV3, batch 64, 2 GPUs in one server: no NIC; overhead + straggler 0.02 x t_c / sqrt(pi)
    t_c = 64 / 30.8
    r = rs[("Details for Amazon EC2 (NVIDIA Tesla K80)", "inception3", 64, 2)]
    assert r["predicted_eff"] == pytest.approx(t_c / (t_c + 0.055 + 0.02 * t_c / math.sqrt(math.pi)), rel=1e-6)
    assert r["error_pts"] == pytest.approx(100 * (r["predicted_eff"] - 58.7 / (2 * 30.8)))


def test_in_sample_errors_and_the_vectorised_fit_reproduce_the_files_globals():
    doc = validate.load(str(K80))
    mean, mx = validate.summary(validate.rows(doc, doc["globals"]["values"]))
    ins = doc["globals"]["in_sample_fit"]
    assert mean == pytest.approx(ins["mean_abs_error_pts"], abs=1e-3) and mx == pytest.approx(ins["max_abs_error_pts"], abs=1e-3)
    assert "not a validation" in ins["note"] and "mean_abs_error_pts" not in doc["globals"]
    g, fmean, _ = validate.fit(doc)
    assert g == doc["globals"]["values"] and fmean == pytest.approx(mean)


def test_out_of_sample_figures_in_the_file_are_the_cross_validation():
    doc = validate.load(str(K80))
    oos = doc["globals"]["out_of_sample_cross_validated"]
    assert set(oos) == set(validate.CV_SCHEMES)
    for scheme, want in oos.items():
        cv = validate.cross_validate(doc, scheme)
        assert len(cv["rows"]) == 50                  # every multi-GPU point predicted once, out of sample
        assert cv["mean_pts"] == pytest.approx(want["mean_abs_error_pts"], abs=1e-3)
        assert cv["max_pts"] == pytest.approx(want["max_abs_error_pts"], abs=1e-3)
        assert [f["values"] for f in cv["folds"]] == [f["values"] for f in want["folds"]]
    # single-server points carry no NIC traffic: they cannot fix the hidden share of the distributed fold
    conf = {f["held_out"]: f for f in oos["configuration"]["folds"]}
    assert conf["distributed"]["not_identified"] == ["hidden_fraction"] and conf["single-server"]["not_identified"] == []


def _toy_point(model: str, gpus: int, ips: float) -> dict:
    return {"source": "https://example.org/toy", "title": "toy", "table": "T", "hardware": "h", "network": "n",
            "model": model, "batch_per_gpu": 10, "gpus": gpus, "gpus_per_node": 8, "images_per_sec": ips}


def test_cross_validation_arithmetic_on_a_three_model_toy(tmp_path: Path):
    # one server, t_compute = 1 s; models a and b lose 0.05 s a step at 2 GPUs, c loses 0.08 s.
    # Grid: overhead 0.05 or 0.07, nothing hidden, no straggler.
    toy = {"models": {m: {"params": 1e6} for m in "abc"}, "network": {"distributed_Bps": 1e9},
           "points": [_toy_point(m, 1, 10.0) for m in "abc"]
           + [_toy_point("a", 2, 20 / 1.05), _toy_point("b", 2, 20 / 1.05), _toy_point("c", 2, 20 / 1.08)]}
    grid = {"overhead_s": [0.05, 0.07], "hidden_fraction": [0.0], "step_cv": [0.0]}
    # in-sample: 0.05 (errors 0, 0, 2.65; score 0.88 + 0.66) beats 0.07 (1.78, 1.78, 0.87; score 1.48 + 0.45)
    g, mean, mx = validate.fit(toy, grid)
    e_c = 100 * (1 / 1.05 - 1 / 1.08)                 # c predicted with 0.05: +2.6455 points
    assert g["overhead_s"] == 0.05 and mean == pytest.approx(e_c / 3) and mx == pytest.approx(e_c)
    # without a: b and c -> 0.07 (mean 1.32 either way, max 1.78 < 2.65); a predicted with 0.07: -1.78 points.
    # Same for b. Without c: a and b -> 0.05 exactly; c predicted +2.65.
    e_ab = 100 * (1 / 1.07 - 1 / 1.05)
    cv = validate.cross_validate(toy, "model", grid)
    assert [(f["held_out"], f["values"]["overhead_s"]) for f in cv["folds"]] == [("a", 0.07), ("b", 0.07), ("c", 0.05)]
    assert [r["error_pts"] for r in cv["rows"]] == pytest.approx([e_ab, e_ab, e_c])
    assert cv["mean_pts"] == pytest.approx((2 * abs(e_ab) + e_c) / 3) and cv["max_pts"] == pytest.approx(e_c)
    assert cv["mean_pts"] > mean                      # out of sample is worse than the fit's own points
    with pytest.raises(scaling.ModelError, match="at least two groups"):
        validate.cross_validate(toy, "configuration", grid)   # one server only: nothing to hold out
    assert validate.possible_schemes(toy) == ["model"]
    # the report's block carries both labels, in-sample never called a validation
    md = validate.markdown(validate.evaluate(toy, g, ["model"], grid))
    assert "in-sample (fit)" in md and "out-of-sample (cross-validated, leave one model out)" in md
    assert "| in-sample (fit): globals fitted on all points | 3 | 0.88 | 2.65 | not a validation |" in md


def test_validate_writes_the_markdown_block(tmp_path: Path):
    out = tmp_path / "validate.md"
    assert validate.main(["--file", str(K80), "--cv", "model", "--markdown", str(out)]) == 0
    md = out.read_text()
    assert "in-sample (fit)" in md and "out-of-sample (cross-validated, leave one model out) | 50 | 2.15 | 6.82 |" in md
    full = validate.report_markdown(str(K80))      # what the report shows: both schemes
    assert "| in-sample (fit): globals fitted on all points | 50 | 1.87 | 5.52 | not a validation |" in full
    assert "out-of-sample (cross-validated, leave one configuration out (single-server / distributed)) | 50 | 3.64 | 12.95 |" in full


def test_validate_fit_writes_globals_and_bad_file_writes_nothing(tmp_path: Path, capsys):
    small = json.loads(K80.read_text())
    small["points"] = [p for p in small["points"] if p["model"] == "resnet50" and p["batch_per_gpu"] == 64
                       and "Distributed" in p["table"]]
    small["globals"] = {}
    f = tmp_path / "set.json"
    f.write_text(json.dumps(small))
    assert validate.main(["--file", str(f), "--fit"]) == 0
    got = json.loads(f.read_text())["globals"]
    assert set(got["values"]) == set(scaling.VALIDATION_GLOBALS) and got["in_sample_fit"]["max_abs_error_pts"] >= 0
    assert got["out_of_sample_cross_validated"] == {}      # one model, one configuration: no fold to hold out
    bad = tmp_path / "bad.json"
    small["points"][0].pop("source")
    bad.write_text(json.dumps(small))
    before = bad.read_text()
    assert validate.main(["--file", str(bad), "--fit"]) == 2
    assert bad.read_text() == before
    assert "lacks 'source'" in capsys.readouterr().err


# ------------------------------------------------------------------ tsubame2.5 from sources
def test_vgg_a_macs_and_the_k20x_anchor():
    layers = (224**2 * 3 * 64 + 112**2 * 64 * 128 + 56**2 * (128 * 256 + 256 * 256)
              + 28**2 * (256 * 512 + 512 * 512) + 14**2 * 2 * 512 * 512) * 9 + 25088 * 4096 + 4096 * 4096 + 4096 * 1000
    assert scaling.vgg_a_macs() == layers
    terms = scaling.measured_terms("tsubame2.5")
    v = scaling.input_values(terms)
    achieved = 32 * 6 * layers / 1e9 / 0.802                       # GFLOP/s of the Titan Black, cuDNN R2
    want = achieved * (2688 * 0.732) / (2880 * v["titan_black_clock_ghz"]) * v["ecc_factor"]
    assert scaling.k20x_gflops(terms, v) == pytest.approx(want)
    assert 0.25 < want / 3950 < 0.36                                # a third of the K20X fp32 peak, not an assumed 35%


def test_every_input_has_a_range_and_a_source():
    for k, spec in scaling.measured_terms("tsubame2.5")["inputs"].items():
        lo, hi = spec["range"]
        assert lo <= spec["value"] <= hi and spec["source"], k


def test_seed_table_and_band():
    rows, md = scaling.seed_table()
    assert len(rows) == 2 * 5 * (1 + 1 + 3 + 3)
    assert len([ln for ln in md.splitlines() if ln.startswith("| ")]) == len(rows) + 1
    assert len([ln for ln in md.splitlines() if ln.startswith("- ")]) == 2 * (1 + 1 + 3 + 3)
    # batch 4 of the fc4096 head: 0.26 s of compute against ~0.35 s of all-reduce -> the interconnect binds
    assert [r["bound"] for r in rows if r["head"] == "fc4096" and r["batch"] == 4 and r["arm"] == "sync_allreduce"] == ["interconnect"]
    assert all(r["bound"] in ("compute", "interconnect", "ps", "chief") for r in rows)
    assert all(0 < r["speedup"] <= 48 + 1e-9 for r in rows)
    # the async-PS arm with one shard is capped by its PS at the fc4096 head
    one = [r for r in rows if r["arm"] == "async_ps" and r["shards"] == 1 and r["head"] == "fc4096" and r["batch"] == 8]
    assert one[0]["bound"] == "ps"
    band = scaling.projection_band("fc4096", 32, "sync_ps", shards=4)
    assert band["low"] <= band["value"] <= band["high"] and band["most"] in band["by_input"]
    lo, hi = band["by_input"][band["most"]]
    assert hi - lo == pytest.approx(max(h - l for l, h in band["by_input"].values()))


def test_unknown_arm_and_bad_p():
    with pytest.raises(scaling.ModelError):
        scaling.project("gap", 32, "ring", 48)
    with pytest.raises(scaling.ModelError):
        scaling.expected_max([1.0], 0)


# ------------------------------------------------------------------ compare calibrate
def _record(run_id: str, p: int, p50: float, p95: float | None, **extra) -> dict:
    r = {"run_id": run_id, "status": "ok", "mode": "sync", "num_workers": p, "head": "gap", "image_size": 32,
         "per_worker_batch": 64, "compression": "none", "gradient_bytes": 1_000_000, "tag": "role=main",
         "step_time_s": {"p50": p50, "p95": p95}}
    r.update(extra)
    return r


def test_calibrate_writes_a_profile_from_the_runs(tmp_path: Path):
    from compare import calibrate
    from compare.__main__ import main as compare_main

    study = tmp_path / "results" / "s"
    study.mkdir(parents=True)
    recs = [_record("a", 1, 0.1, 0.2), _record("b", 2, 0.2, 0.3),
            _record("c", 1, 9.0, 9.0, tag="role=ceiling"), _record("d", 1, 9.0, 9.0, status="failed")]
    (study / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"torn": ')
    (study / "allreduce.json").write_text(json.dumps({"np": 2, "alpha_s": 1e-3, "bw_Bps": 1e8}))
    assert compare_main(["calibrate", "--results-dir", str(tmp_path / "results"), "--study", "s"]) == 0
    prof = json.loads((study / "profile.json").read_text())
    w = prof["workloads"]["gap-s32-b64"]
    assert w["t_compute_s"] == 0.1 and w["one_worker_runs"] == 1 and len(w["step_samples"]) == 20
    # E[max of 2] of 18 x 0.1 and 2 x 0.2 = 0.1 x 0.81 + 0.2 x 0.19 = 0.119; mean 0.11 -> straggler 0.009
    # allreduce of 1 MB at np 2: 2 x 1e-3 + 1e6 / 1e8 = 0.012; overhead = 0.2 - 0.1 - 0.012 - 0.009
    assert w["overhead_s"] == pytest.approx(0.079)
    assert prof["alpha_s"] == 1e-3 and prof["bw_Bps"] == 1e8 and prof["devices_per_node"] == 2
    two = calibrate.predict(prof, "gap-s32-b64", 2)
    assert two["step_s"] == pytest.approx(0.2)                     # calibrated at p = 2 by construction
    assert calibrate.predict(prof, "gap-s32-b64", 1)["speedup"] == pytest.approx(1.0)


def test_calibrate_bad_input_exits_2_and_writes_nothing(tmp_path: Path, capsys):
    from compare.__main__ import main as compare_main

    study = tmp_path / "s"
    study.mkdir()
    (study / "runs.jsonl").write_text(json.dumps(_record("a", 1, 0.1, 0.2)) + "\n")
    assert compare_main(["calibrate", "--results-dir", str(tmp_path), "--study", "s"]) == 2
    assert not (study / "profile.json").exists()
    assert "no allreduce benchmark" in capsys.readouterr().err


def test_inputs_markdown_and_projection_rows_for_both_clusters():
    for name in ("tsubame2.5", "h200"):
        md = scaling.inputs_markdown(name)
        assert all(k in md for k in scaling.measured_terms(name)["inputs"])
        rows = scaling.projection_rows(name, "gap", 64, "sync_allreduce", gpus=(1, 48))
        assert rows[0]["speedup"] == pytest.approx(1.0) and rows[0]["low"] == pytest.approx(1.0)
        assert rows[1]["low"] <= rows[1]["speedup"] <= rows[1]["high"] <= 48 + 1e-9
    # the compute-bound async all-reduce arm: no input moves it
    assert scaling.projection_band("gap", 64, "async_allreduce")["most"] is None


@pytest.mark.parametrize("argv, want", [
    (["validate", "--bogus"], "unrecognized arguments: --bogus"),
    (["validate", "--file", "/nonexistent/k80.json"], "cannot read"),
    (["calibrate", "--per-node", "x"], "invalid int value"),
])
def test_bad_flags_are_one_line_and_exit_2(argv, want, capsys):
    from compare.__main__ import main as compare_main

    assert compare_main(argv) == 2
    err = capsys.readouterr().err
    assert want in err and len(err.strip().splitlines()) == 1
