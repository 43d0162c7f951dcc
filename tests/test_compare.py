"""compare/: statistics on hand-written runs.jsonl fixtures, the scaling model's math, the report's
files and plots, bad input, and (slow) a real tiny sweep through both launchers. Asserts on files."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from compare import report, scaling, sweep
from compare.__main__ import main
from train.record import REQUIRED_FIELDS

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fixtures
def rec(run_id: str, mode: str = "sync", p: int = 1, ips: float | None = 100.0, status: str = "ok",
        head: str = "gap", compression: str = "none", tag: str = "role=main", **extra) -> dict:
    r = {k: None for k in REQUIRED_FIELDS}
    r.update({"schema_version": 1, "run_id": run_id, "started_at": "2026-11-27T08:00:00+00:00",
              "status": status, "mode": mode, "model": "cnn11", "head": head, "width": 0.25,
              "dataset": "synthetic", "image_size": 32, "num_workers": p, "num_ps": 1 if mode == "async" else 0,
              "per_worker_batch": 64, "global_batch": 64 * p, "steps": 30, "warmup_steps": 5,
              "images_per_sec": ips, "images_per_sec_se": 1.0 if ips else None,
              "step_time_s": {"p50": 64 / ips if ips else None, "p95": None},
              "train_gflop_per_img": 0.10175232, "compression": compression, "num_classes": 10,
              "trainable_params": 627706, "gradient_bytes": 627706 * (2 if compression == "fp16" else 4),
              "versions": {"python": "3.11.7", "tensorflow": "2.15.1", "horovod": "0.28.1"},
              "hosts": ["vm"], "git_sha": "abc", "git_dirty": False, "config": {}, "tag": tag})
    r.update(extra)
    return r


def write_runs(path: Path, records: list[dict], torn: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        if torn is not None:
            f.write(torn)
    return path


def study_records() -> list[dict]:
    """sync 1 and 2 workers x 3 repeats, async likewise, a failed run, two ceiling pairs."""
    out = []
    for i, v in enumerate((100.0, 110.0, 90.0)):
        out.append(rec(f"sync-p1-r{i}", "sync", 1, v))
    for i, v in enumerate((180.0, 190.0, 170.0)):
        out.append(rec(f"sync-p2-r{i}", "sync", 2, v))
    for i, v in enumerate((80.0, 80.0, 80.0)):
        out.append(rec(f"async-p1-r{i}", "async", 1, v, staleness={"mean": 0, "p95": 0, "max": 0,
                                                                   "histogram": {"0": 30}}))
    for i, v in enumerate((150.0, 140.0, 160.0)):
        out.append(rec(f"async-p2-r{i}", "async", 2, v, staleness={"mean": 0.9, "p95": 2, "max": 2,
                                                                   "histogram": {"0": 8, "1": 16, "2": 6}}))
    out.append(rec("sync-p2-r3", "sync", 2, None, status="failed", error="exit code 1: boom in rank 1"))
    for i in range(2):
        for c in range(2):
            out.append(rec(f"ceiling-p2-r{i}-c{c}", "sync", 1, 95.0, tag="role=ceiling;copies=2;pin=" + str(c)))
    return out


@pytest.fixture
def study(tmp_path: Path) -> Path:
    d = tmp_path / "results" / "local"
    write_runs(d / "runs.jsonl", study_records())
    (d / "allreduce.json").write_text(json.dumps({"alpha_s": 1e-3, "bw_Bps": 1e9, "np": 2}))
    (d / "sweep.json").write_text(json.dumps({"cores": [0, 1], "cpu": "test cpu", "command": "python -m compare run",
                                              "config": {"width": 0.25, "dataset": "synthetic"}}))
    return d


# ------------------------------------------------------------------ statistics
def test_speedup_efficiency_and_standard_errors(study: Path):
    df, torn = report.load_runs(str(study / "runs.jsonl"))
    assert torn == []
    t = report.speedup_table(df)
    s1 = t[(t["mode"] == "sync") & (t["num_workers"] == 1)].iloc[0]
    s2 = t[(t["mode"] == "sync") & (t["num_workers"] == 2)].iloc[0]
    se = 10.0 / math.sqrt(3)  # sample sd 10 of (100, 110, 90) and of (180, 190, 170)
    assert (s1["n"], s1["ips"], s1["ips_se"]) == (3, 100.0, pytest.approx(se))
    assert (s2["n"], s2["ips"], s2["ips_se"]) == (3, 180.0, pytest.approx(se))
    assert s2["speedup"] == pytest.approx(1.8)
    assert s2["speedup_se"] == pytest.approx(1.8 * math.sqrt((se / 180) ** 2 + (se / 100) ** 2))
    assert s2["efficiency"] == pytest.approx(0.9)
    assert s2["efficiency_se"] == pytest.approx(s2["speedup_se"] / 2)
    assert s1["speedup"] == 1.0 and s1["speedup_se"] == 0.0


def test_baseline_is_the_one_worker_run_of_the_same_group(tmp_path: Path):
    recs = [rec("a1", "sync", 1, 100.0), rec("a2", "sync", 2, 150.0),
            rec("f1", "sync", 1, 50.0, compression="fp16"), rec("f2", "sync", 2, 100.0, compression="fp16"),
            rec("h2", "sync", 2, 80.0, head="fc4096"),  # no 1-worker run in its group: no speedup
            rec("y1", "async", 1, 40.0), rec("y2", "async", 2, 60.0)]
    df, _ = report.load_runs(str(write_runs(tmp_path / "runs.jsonl", recs)))
    t = report.speedup_table(df).set_index(["mode", "head", "compression", "num_workers"])
    assert t.loc[("sync", "gap", "none", 2), "speedup"] == pytest.approx(1.5)
    assert t.loc[("sync", "gap", "fp16", 2), "speedup"] == pytest.approx(2.0)
    assert t.loc[("async", "gap", "none", 2), "speedup"] == pytest.approx(1.5)
    assert math.isnan(t.loc[("sync", "fc4096", "none", 2), "speedup"])
    assert len(t) == 7  # grouping: mode x head x compression x workers, nothing merged


def test_failed_and_ceiling_runs_are_excluded_from_the_statistics_but_listed(study: Path, tmp_path: Path):
    df, _ = report.load_runs(str(study / "runs.jsonl"))
    t = report.speedup_table(df)
    assert t[(t["mode"] == "sync") & (t["num_workers"] == 2)].iloc[0]["n"] == 3  # failed run not counted
    assert t[(t["mode"] == "sync") & (t["num_workers"] == 1)].iloc[0]["n"] == 3  # ceiling runs not counted
    assert list(report.failed_runs(df)["run_id"]) == ["sync-p2-r3"]
    out = Path(report.write_report(str(study)))
    text = out.read_text()
    assert "sync-p2-r3" in text and "boom in rank 1" in text and "1 failed" in text


def test_local_profile_is_calibrated_from_the_runs(study: Path):
    df, _ = report.load_runs(str(study / "runs.jsonl"))
    t = report.speedup_table(df)
    prof, info = report.calibrate(df, t, report.load_bench(str(study)), cores=2)
    assert info["kappa"] == {1: 1.0, 2: pytest.approx(100.0 / 95.0)}
    assert prof.workloads["gap"].t_compute == pytest.approx(64 / 100.0)
    assert prof.async_update["gap"] == pytest.approx(64 / 80.0)
    # p = 1 reproduces the calibration exactly; p = 2 adds kappa and the measured allreduce
    assert prof.predict("sync", "gap", 1).images_per_sec == pytest.approx(100.0)
    t2 = 64 / 100.0 * (100 / 95) + scaling.ring_time(4 * 627706, 2, 1e-3, 1e9)
    assert prof.predict("sync", "gap", 2).images_per_sec == pytest.approx(2 * 64 / t2)
    assert prof.predict("async", "gap", 2).images_per_sec == pytest.approx(2 * 80.0 * 95 / 100)


# ------------------------------------------------------------------ model math
def test_one_worker_has_no_communication():
    assert scaling.ring_time(1e9, 1, 1.0, 1.0) == 0.0
    assert scaling.allreduce_time(1e9, 1, 3, 1.0, 1.0, 1.0, 1.0) == 0.0
    for name in ("tsubame2.5", "h200"):
        prof = scaling.cluster_profile(name)
        pred = prof.sync("fc4096", 1)
        assert pred.comm_s == 0.0 and pred.step_s == prof.workloads["fc4096"].t_compute
        assert prof.speedup("sync", "gap", 1) == 1.0


@pytest.mark.parametrize("p", [2, 3, 8, 48])
def test_ring_bytes_and_time(p):
    n = 123456789.0
    assert scaling.ring_bytes(n, p) == pytest.approx(2 * (p - 1) / p * n)
    assert scaling.ring_time(n, p, 1e-5, 1e9) == pytest.approx(2 * (p - 1) * 1e-5 + 2 * (p - 1) / p * n / 1e9)


def test_hierarchical_allreduce_is_node_ring_plus_nic_ring():
    n, g = 1e8, 3
    t = scaling.allreduce_time(n, 48, g, 1e-5, 5e9, 5e-6, 6.4e9)
    assert t == pytest.approx(scaling.ring_time(n, 3, 1e-5, 5e9) + scaling.ring_time(n, 16, 5e-6, 6.4e9))
    assert scaling.allreduce_time(n, 2, g, 1e-5, 5e9, 5e-6, 6.4e9) == pytest.approx(scaling.ring_time(n, 2, 1e-5, 5e9))


def test_ps_saturation_point():
    t_update, n, shards, bw = 0.5, 1e8, 2, 4e9
    p_sat = scaling.ps_saturation_workers(t_update, n, shards, bw)
    assert p_sat == pytest.approx(shards * bw * t_update / (2 * n)) == pytest.approx(20.0)
    assert 20 / t_update == pytest.approx(shards * bw / (2 * n))  # where p / t_step = S B_ps / 2n
    assert scaling.ps_update_rate(10, t_update, n, shards, bw) == pytest.approx(10 / t_update)  # below: linear
    assert scaling.ps_update_rate(40, t_update, n, shards, bw) == pytest.approx(shards * bw / (2 * n))  # capped
    prof = scaling.cluster_profile("tsubame2.5")
    sat = prof.async_("fc4096", 1).saturation_workers
    assert prof.async_("fc4096", 48).bound == "ps" and sat < 48
    assert prof.async_("fc4096", 48).images_per_sec == pytest.approx(prof.async_("fc4096", 40).images_per_sec)


def test_fp16_halves_the_bytes():
    assert scaling.wire_bytes(1000, "fp16") == 500 and scaling.wire_bytes(1000, "none") == 1000
    prof = scaling.cluster_profile("tsubame2.5")
    full, half = prof.sync("fc4096", 48).comm_s, prof.sync("fc4096", 48, "fp16").comm_s
    lat = scaling.allreduce_time(0.0, 48, 3, prof.alpha_intra, prof.bw_intra, prof.alpha_inter, prof.bw_node)
    assert half - lat == pytest.approx((full - lat) / 2)
    with pytest.raises(scaling.ModelError):
        scaling.wire_bytes(1000, "int8")


def test_alpha_beta_fit_recovers_known_values():
    alpha, bw = 2e-4, 1.5e9
    sizes = [4096, 65536, 1 << 20, 1 << 24]
    times = [2 * alpha + n / bw for n in sizes]  # p = 2: 2(p-1)/p n = n
    a, b = scaling.fit_alpha_beta(sizes, times, p=2)
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(bw, rel=1e-6)


def test_profiles_cite_their_sources():
    data = scaling.load_profile_data()
    for name in scaling.PROFILE_NAMES:
        assert data[name]["sources"], name
    assert data["tsubame2.5"]["devices_per_node"] == 3 and data["tsubame2.5"]["peak_gflops_fp32"] == 3950.0
    assert data["h200"]["anchor"]["gap"]["step_s_bf16"] == 0.0214


# ------------------------------------------------------------------ the report
def test_report_writes_markdown_and_plots_with_the_expected_series(study: Path):
    path = Path(report.write_report(str(study), profiles=["local", "tsubame2.5", "h200"]))
    for name in ("report.md", "images_per_sec.png", "speedup.png", "efficiency.png", "projection.png", "staleness.png"):
        assert (study / name).stat().st_size > 1000 or name == "report.md", name
    assert "test cpu" in (study / "README.md").read_text()
    text = path.read_text()
    for needle in ("## Conditions", "test cpu", "predicted img/s", "rel. error", "Largest error",
                   "## Projection to 48 GPUs", "| tsubame2.5 | sync | gap |", "| h200 | async | fc4096 |",
                   "kappa(2)", "Async staleness"):
        assert needle in text, needle

    df, _ = report.load_runs(str(study / "runs.jsonl"))
    t = report.speedup_table(df)
    local, info = report.calibrate(df, t, report.load_bench(str(study)), cores=2)
    profs = report.build_profiles(["local", "tsubame2.5", "h200"], local)
    seed = scaling.load_profile_data()["seed_claim"]
    fig = report.plot_speedup(t, profs, info, seed, str(study / "s.png"))
    ax = fig.axes[0]
    labels = [l.get_label() for l in ax.get_lines()]
    for want in ("ideal", "model local: sync gap", "model tsubame2.5: sync gap", "model h200: async gap"):
        assert want in labels, (want, labels)
    seed_line = next(l for l in ax.get_lines() if l.get_label().startswith("seed study"))
    assert list(seed_line.get_xdata()) == [48] and list(seed_line.get_ydata()) == [30.0]
    model = next(l for l in ax.get_lines() if l.get_label() == "model tsubame2.5: sync gap")
    assert list(model.get_xdata()) == list(scaling.PROJECTION_GPUS)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "measured sync gap (mean ± SE)" in legend and "measured async gap, 1 PS (mean ± SE)" in legend
    assert ax.get_xscale() == "log" and "workers" in ax.get_xlabel() and "speedup" in ax.get_ylabel()
    proj = report.plot_projection(profs, seed, 1, str(study / "p.png"))
    assert [a.get_title().split(" ")[0] for a in proj.axes] == ["local", "tsubame2.5", "h200"]
    assert {"sync gap", "sync fc4096", "async gap", "async fc4096"} <= {l.get_label() for l in proj.axes[1].get_lines()}


def test_torn_last_line_is_reported_and_the_rest_used(study: Path):
    runs = study / "runs.jsonl"
    with open(runs, "a", encoding="utf-8") as f:
        f.write('{"run_id": "half-writ')
    before = runs.read_bytes()
    assert main(["report", "--results-dir", str(study.parent), "--study", "local"]) == 0
    text = (study / "report.md").read_text()
    n_lines = len(study_records()) + 1
    assert f"Torn or invalid lines skipped: {n_lines}" in text
    assert "| sync | gap | 32 | 64 | none | – | 2 | 3 | 180.0 ± 5.8 | 180.0 |" in text
    assert runs.read_bytes() == before


# ------------------------------------------------------------------ bad input
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_runs_file(tmp_path: Path, capsys):
    assert main(["report", "--results-dir", str(tmp_path), "--study", "none"]) == 2
    assert "no runs file" in _one_line_error(capsys)
    assert not (tmp_path / "none").exists()


def test_empty_runs_file(tmp_path: Path, capsys):
    runs = tmp_path / "s" / "runs.jsonl"
    runs.parent.mkdir()
    runs.write_text("")
    assert main(["report", "--results-dir", str(tmp_path), "--study", "s"]) == 2
    assert "no intact records" in _one_line_error(capsys)
    assert runs.read_text() == "" and sorted(p.name for p in runs.parent.iterdir()) == ["runs.jsonl"]


def test_unknown_profile(study: Path, capsys):
    before = (study / "runs.jsonl").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["report", "--results-dir", str(study.parent), "--study", "local", "--profiles", "local,summit"])
    assert e.value.code == 2
    assert "unknown value 'summit'" in _one_line_error(capsys)
    assert (study / "runs.jsonl").read_bytes() == before and not (study / "report.md").exists()
    with pytest.raises(scaling.ModelError):
        scaling.check_profile_names(["summit"])


@pytest.mark.parametrize("workers", ["0", "1,0", "x", ""])
def test_bad_workers_list(study: Path, capsys, workers):
    before = (study / "runs.jsonl").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["run", "--results-dir", str(study.parent), "--study", "local", "--workers", workers])
    assert e.value.code == 2
    assert "--workers" in _one_line_error(capsys)
    assert (study / "runs.jsonl").read_bytes() == before
    assert not (study / "logs").exists()


def test_compare_imports_no_tensorflow():
    code = ("import sys, compare.__main__, compare.report, compare.sweep, compare.scaling, compare.pin; "
            "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


# ------------------------------------------------------------------ the sweep's bookkeeping
def test_plan_and_launcher_commands(tmp_path: Path):
    cfg = sweep.SweepConfig(results_dir=str(tmp_path), repeats=2, python="/venv/bin/python")
    runs = sweep.plan(cfg)
    main_runs = [r for r in runs if r.kind == "main"]
    assert len(main_runs) == 2 * 2 * 2  # modes x workers x repeats
    assert [r.repeat for r in runs] == sorted(r.repeat for r in runs)  # repeat-major
    assert len({r.run_id() for r in main_runs}) == len(main_runs)
    fp16 = sweep.plan(sweep.SweepConfig(results_dir=str(tmp_path), repeats=1, compressions=("none", "fp16"),
                                        ceiling=False))
    assert sorted((r.mode, r.compression) for r in fp16 if r.workers == 1) == [
        ("async", "none"), ("sync", "fp16"), ("sync", "none")]
    sync2 = next(r for r in main_runs if r.mode == "sync" and r.workers == 2)
    [(rid, argv)] = sweep.commands(cfg, sync2)
    assert rid == sync2.run_id()
    assert argv[1:7] == ["--gloo", "-np", "2", "-H", "localhost:2", "/venv/bin/python"] or "compare.pin" in argv
    assert "train.sync_allreduce" in argv and argv[argv.index("--run-id") + 1] == rid
    async2 = next(r for r in main_runs if r.mode == "async" and r.workers == 2)
    [(_, argv)] = sweep.commands(cfg, async2)
    i = argv.index("train.async_ps")
    assert argv[i + 1:i + 5] == ["--workers", "2", "--ps", "1"]
    if len(sweep.cores_available()) >= 2:
        assert argv[:3] == ["taskset", "-c", "0,1"]
        ceiling = [r for r in runs if r.kind == "ceiling"]
        assert len(ceiling) == 2 and len(sweep.commands(cfg, ceiling[0])) == 2


def test_failed_run_is_recorded_and_the_sweep_goes_on_then_resumes(tmp_path: Path):
    fake = tmp_path / "fakepython"
    fake.write_text("#!/bin/sh\necho 'Traceback: something broke' >&2\nexit 3\n")
    fake.chmod(0o755)
    cfg = sweep.SweepConfig(results_dir=str(tmp_path / "results"), study="f", modes=("async",), workers=(1, 2),
                            repeats=1, ceiling=False, bench=False, python=str(fake), timeout=60)
    os.makedirs(os.path.dirname(cfg.runs_path))
    with open(cfg.runs_path, "w") as f:
        f.write('{"run_id": "torn-by-a-crash')  # a torn last line must not swallow the next record
    counts = sweep.sweep(cfg, ["run"], progress=False)
    assert counts["failed"] == 2 and counts["ok"] == 0
    from train.record import read_records
    recs, torn = read_records(cfg.runs_path)
    assert torn == [1]
    assert [r["status"] for r in recs] == ["failed", "failed"]
    assert "exit code 3" in recs[0]["error"] and "something broke" in recs[0]["error"]
    assert all(k in recs[0] for k in REQUIRED_FIELDS)
    # Resume: runs already ok are skipped; failed ones are tried again.
    ok = rec(sweep.Run("main", "async", 1, "gap", 32, "none", 0).run_id(), "async", 1, 80.0)
    with open(cfg.runs_path, "a") as f:
        f.write(json.dumps(ok) + "\n")
    counts = sweep.sweep(cfg, ["run"], progress=False)
    assert counts["skipped"] == 1 and counts["failed"] == 1
    df, _ = report.load_runs(cfg.runs_path)
    assert len(report.failed_runs(df)) == 3


# ------------------------------------------------------------------ end to end (real launchers)
@pytest.mark.slow
def test_tiny_sweep_then_report_end_to_end(tmp_path: Path):
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "compare", "run", "--results-dir", str(results), "--study", "e2e",
            "--workers", "1,2", "--repeats", "1", "--steps-per-epoch", "8", "--warmup-steps", "2",
            "--width", "0.125", "--per-worker-batch", "32", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = results / "e2e" / "runs.jsonl"
    recs = [json.loads(l) for l in runs.read_text().splitlines()]
    bad = [(r["run_id"], r.get("error")) for r in recs if r["status"] != "ok"]
    assert not bad, bad
    got = {(r["mode"], r["num_workers"]) for r in recs if "role=main" in (r.get("tag") or "")}
    assert got == {("sync", 1), ("sync", 2), ("async", 1), ("async", 2)}
    assert sum("role=ceiling" in (r.get("tag") or "") for r in recs) == 2
    bench = json.loads((results / "e2e" / "allreduce.json").read_text())
    assert bench["np"] == 2 and bench["alpha_s"] >= 0 and bench["bw_Bps"] > 0
    # Resumable: a second run starts nothing.
    before = runs.read_bytes()
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and runs.read_bytes() == before
    rep = subprocess.run([sys.executable, "-m", "compare", "report", "--results-dir", str(results),
                          "--study", "e2e"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (results / "e2e" / "report.md").read_text()
    assert "Largest error at a point the model was not calibrated on" in text
    for png in ("images_per_sec.png", "speedup.png", "efficiency.png", "projection.png", "staleness.png"):
        assert (results / "e2e" / png).stat().st_size > 1000


@pytest.mark.slow
def test_dense_head_counts_match_the_model():
    from train.model import train_flops_per_image, trainable_params
    for width, size in ((0.25, 32), (1.0, 224), (0.5, 64)):
        for head in ("gap", "fc4096"):
            params, macs = scaling.head_dense_counts(head, size, width, 10)
            other = "fc4096" if head == "gap" else "gap"
            p_other, m_other = scaling.head_dense_counts(other, size, width, 10)
            assert trainable_params(size, 10, head, width) - trainable_params(size, 10, other, width) == params - p_other
            assert train_flops_per_image(size, 10, head, width) - train_flops_per_image(size, 10, other, width) \
                == pytest.approx(6.0 * (macs - m_other))
