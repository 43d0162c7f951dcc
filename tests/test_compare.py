"""compare/: statistics on hand-written runs.jsonl fixtures, the scaling model's math, the wording rule,
the report's files and plots, bad input, the launch loop (failures, resume), and (slow) a real tiny study
through both launchers. Asserts on files and records, never on stdout."""
from __future__ import annotations

import glob
import json
import math
import os
import pkgutil
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import compare
from compare import calibration, frame, plan, plots, report, scaling
from compare.__main__ import main
from compare.emulated import EmulatedBackend
from compare.hostload import Sampler
from compare.launch import run_study
from compare.local import LocalBackend
from compare.slurm import submit_command
from compare.wording import verdict
from train import record

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ fixtures
def rec(run_id: str, mode: str = "sync", p: int = 1, ips: float | None = 100.0, status: str = "ok",
        head: str = "gap", compression: str = "none", role: str = "main", copies: int = 1, host: str = "vm",
        sha: str = "abc", **extra) -> dict:
    r = {k: None for k in record.REQUIRED_FIELDS}
    r.update({"schema_version": 2, "run_id": run_id, "started_at": "2026-11-27T08:00:00+00:00",
              "status": status, "mode": mode, "model": "cnn11", "head": head, "width": 0.25,
              "dataset": "synthetic", "image_size": 32, "num_workers": p, "num_ps": 1 if mode == "async" else 0,
              "per_worker_batch": 64, "global_batch": 64 * p, "steps": 30, "warmup_steps": 5,
              "images_per_sec": ips, "images_per_sec_se": 1.0 if ips else None,
              "step_time_s": {"p50": 64 / ips if ips else None, "p95": None}, "mfu": 0.3 if ips else None,
              "train_gflop_per_img": 0.10175232, "compression": compression, "num_classes": 10,
              "trainable_params": 627706, "gradient_bytes": 627706 * (2 if compression == "fp16" else 4),
              "versions": {"python": "3.11.7", "tensorflow": "2.15.1", "horovod": "0.28.1"},
              "hosts": [host], "host": host, "git_sha": sha, "git_dirty": False, "config": {}, "study": "local",
              "role": role, "copies": copies, "cpu_affinity": [0], "intra_op_threads": 1,
              "link": {"rate": None, "delay_ms": None, "nodes": None}})
    r.update(extra)
    assert not record.problems(r), record.problems(r)
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
    out = [rec(f"sync-p1-r{i}", "sync", 1, v) for i, v in enumerate((100.0, 110.0, 90.0))]
    out += [rec(f"sync-p2-r{i}", "sync", 2, v) for i, v in enumerate((180.0, 190.0, 170.0))]
    out += [rec(f"async-p1-r{i}", "async", 1, 80.0, staleness={"mean": 0, "p95": 0, "max": 0, "histogram": {"0": 30}})
            for i in range(3)]
    out += [rec(f"async-p2-r{i}", "async", 2, v, staleness={"mean": 0.9, "p95": 2, "max": 2,
                                                            "histogram": {"0": 8, "1": 16, "2": 6}})
            for i, v in enumerate((150.0, 140.0, 160.0))]
    out.append(rec("sync-p2-r3", "sync", 2, None, status="failed", error="exit code 1: boom in rank 1"))
    out += [rec(f"ceiling-p2-r{i}-c{c}", "sync", 1, 95.0, role="ceiling", copies=2) for i in range(2) for c in range(2)]
    return out


BENCH = {"alpha_s": 1e-3, "bw_Bps": 1e9, "np": 2}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    d = tmp_path / "results" / "local"
    write_runs(d / "runs.jsonl", study_records())
    (d / "allreduce.json").write_text(json.dumps(BENCH))
    (d / "study.json").write_text(json.dumps({"cores": [0, 1], "cpu": "test cpu", "command": "python -m compare run",
                                              "cluster": "local"}))
    return d


def loaded(d: Path):
    f = frame.load(str(d))
    return f.df, frame.speedup_table(f.df)


# ------------------------------------------------------------------ statistics
def test_speedup_efficiency_and_standard_errors(study: Path):
    _, t = loaded(study)
    s1 = t[(t["mode"] == "sync") & (t["num_workers"] == 1)].iloc[0]
    s2 = t[(t["mode"] == "sync") & (t["num_workers"] == 2)].iloc[0]
    se = 10.0 / math.sqrt(3)  # sample sd 10 of (100, 110, 90) and of (180, 190, 170)
    assert (s1["n"], s1["ips"], s1["ips_se"]) == (3, 100.0, pytest.approx(se))
    assert (s2["n"], s2["ips"], s2["ips_se"]) == (3, 180.0, pytest.approx(se))
    assert s2["speedup"] == pytest.approx(1.8)
    assert s2["speedup_se"] == pytest.approx(1.8 * math.sqrt((se / 180) ** 2 + (se / 100) ** 2))
    assert s2["efficiency"] == pytest.approx(0.9) and s2["efficiency_se"] == pytest.approx(s2["speedup_se"] / 2)
    assert s1["speedup"] == 1.0 and s1["speedup_se"] == 0.0


def test_baseline_is_the_one_worker_run_of_the_same_group(tmp_path: Path):
    recs = [rec("a1", "sync", 1, 100.0), rec("a2", "sync", 2, 150.0),
            rec("f1", "sync", 1, 50.0, compression="fp16"), rec("f2", "sync", 2, 100.0, compression="fp16"),
            rec("h2", "sync", 2, 80.0, head="fc4096"),  # no 1-worker run in its group: no speedup
            rec("y1", "async", 1, 40.0), rec("y2", "async", 2, 60.0)]
    write_runs(tmp_path / "s" / "runs.jsonl", recs)
    t = loaded(tmp_path / "s")[1].set_index(["mode", "head", "compression", "num_workers"])
    assert t.loc[("sync", "gap", "none", 2), "speedup"] == pytest.approx(1.5)
    assert t.loc[("sync", "gap", "fp16", 2), "speedup"] == pytest.approx(2.0)
    assert t.loc[("async", "gap", "none", 2), "speedup"] == pytest.approx(1.5)
    assert math.isnan(t.loc[("sync", "fc4096", "none", 2), "speedup"])
    assert len(t) == 7


def test_failed_and_ceiling_runs_are_excluded_from_the_statistics_but_listed(study: Path):
    df, t = loaded(study)
    assert t[(t["mode"] == "sync") & (t["num_workers"] == 2)].iloc[0]["n"] == 3
    assert t[(t["mode"] == "sync") & (t["num_workers"] == 1)].iloc[0]["n"] == 3
    assert list(frame.failed_runs(df)["run_id"]) == ["sync-p2-r3"]
    text = Path(report.write_report(str(study))).read_text()
    assert "sync-p2-r3" in text and "boom in rank 1" in text and "1 failed" in text


def test_local_profile_is_calibrated_from_the_runs(study: Path):
    df, t = loaded(study)
    prof, info = calibration.calibrate_local(df, t, calibration.load_bench(str(study)), cores=2)
    assert info["kappa"] == {1: 1.0, 2: pytest.approx(100.0 / 95.0)}
    assert prof.workloads["gap"].t_compute == pytest.approx(64 / 100.0)
    assert prof.async_update["gap"] == pytest.approx(64 / 80.0)
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
    assert scaling.ps_saturation_workers(t_update, n, shards, bw) == pytest.approx(20.0)
    assert scaling.ps_update_rate(10, t_update, n, shards, bw) == pytest.approx(10 / t_update)
    assert scaling.ps_update_rate(40, t_update, n, shards, bw) == pytest.approx(shards * bw / (2 * n))
    prof = scaling.cluster_profile("tsubame2.5")
    assert prof.async_("fc4096", 48).bound == "ps" and prof.async_("fc4096", 1).saturation_workers < 48


def test_fp16_halves_the_bytes():
    assert scaling.wire_bytes(1000, "fp16") == 500 and scaling.wire_bytes(1000, "none") == 1000
    prof = scaling.cluster_profile("tsubame2.5")
    full, half = prof.sync("fc4096", 48).comm_s, prof.sync("fc4096", 48, "fp16").comm_s
    lat = scaling.allreduce_time(0.0, 48, 3, prof.alpha_intra, prof.bw_intra, prof.alpha_inter, prof.bw_node)
    assert half - lat == pytest.approx((full - lat) / 2)
    with pytest.raises(scaling.ModelError):
        scaling.wire_bytes(1000, "int8")


def test_alpha_beta_fit_recovers_known_values():
    sizes = [4096, 65536, 1 << 20, 1 << 24]
    a, b = scaling.fit_alpha_beta(sizes, [2 * 2e-4 + n / 1.5e9 for n in sizes], p=2)
    assert a == pytest.approx(2e-4, rel=1e-6) and b == pytest.approx(1.5e9, rel=1e-6)


def test_sensitivity_band_contains_the_curve_and_is_not_empty():
    prof = scaling.cluster_profile("tsubame2.5")
    lo, hi = scaling.speedup_band(prof, "sync", "fc4096")
    mid = [prof.speedup("sync", "fc4096", p) for p in scaling.PROJECTION_GPUS]
    assert all(a <= m <= b for a, m, b in zip(lo, mid, hi))
    assert hi[-1] > lo[-1] * 1.05  # the assumed inputs matter at 48 GPUs
    assert lo[0] == hi[0] == 1.0


# ------------------------------------------------------------------ the wording rule
@pytest.mark.parametrize("error, se, want", [
    (0.03, 0.02, "within the goal"), (-0.05, 0.05, "within the goal"),
    (0.03, 0.09, "consistent within noise"), (0.15, 0.09, "consistent within noise"),
    (0.08, 0.02, "misses"), (0.25, 0.09, "misses"), (0.03, float("nan"), "misses")])
def test_verdict(error, se, want):
    assert verdict(error, se, 0.05) == want


@pytest.mark.parametrize("factors, want", [
    ((1.0, 1.01, 0.99), "within the goal"),           # error ~0, SE ~0.6%
    ((1.25, 0.95, 0.85), "consistent within noise"),  # error ~+2%, SE ~12%
    ((1.3, 1.31, 1.29), "misses")])                   # error ~-23%, SE ~0.6%
def test_report_words_follow_the_numbers(tmp_path: Path, factors, want):
    base = [r for r in study_records() if not r["run_id"].startswith("sync-p2")]
    d = tmp_path / "results" / "w"
    write_runs(d / "runs.jsonl", base)
    (d / "allreduce.json").write_text(json.dumps(BENCH))
    df, t = loaded(d)
    prof, _ = calibration.calibrate_local(df, t, BENCH, 2)
    pred = prof.predict("sync", "gap", 2).images_per_sec
    write_runs(d / "runs.jsonl", base + [rec(f"sync-p2-r{i}", "sync", 2, pred * f) for i, f in enumerate(factors)])
    text = Path(report.write_report(str(d), profiles=["local"])).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| sync | gap | none | 2 |"))
    assert row.rstrip(" |").endswith(want), row
    assert "meets" not in text and "validated" not in text.lower()


# ------------------------------------------------------------------ the report
def test_report_writes_markdown_and_readable_plots(study: Path):
    text = Path(report.write_report(str(study), profiles=["local", "tsubame2.5", "h200"])).read_text()
    for name in ("measured.png", "projection.png", "projection_gpus.png", "staleness.png"):
        assert (study / name).stat().st_size > 10_000, name
        assert f"![{name}]({name})" in text
    assert "test cpu" in (study / "README.md").read_text()
    for needle in ("## Conditions", "test cpu", "predicted img/s", "verdict", "## Projection of this machine's model",
                   "## Projection to 48 GPUs: the measured-terms model", "| tsubame2.5 | sync_allreduce |",
                   "| h200 | async_ps (4 PS) |", "### What the seed's '>30x at 48 GPUs' implies", "out-of-sample",
                   "### Inputs: h200", "kappa(2)", "Async staleness",
                   "host load not recorded", "0 line(s) rejected"):
        assert needle in text, needle

    df, t = loaded(study)
    local, _ = calibration.calibrate_local(df, t, BENCH, 2)
    profs = {"local": local, "tsubame2.5": scaling.cluster_profile("tsubame2.5"), "h200": scaling.cluster_profile("h200")}
    seed = scaling.load_profile_data()["seed_claim"]
    fig = plots.plot_projection(profs, seed, 1, str(study / "p.png"))
    assert len(fig.axes) == 6  # one panel per (mode, profile): no profile's curve under another's
    for ax in fig.axes:
        assert "GPUs" in ax.get_xlabel() or "modeled workers" in ax.get_xlabel()
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        tri = lines["seed study (2015): >30x at 48 GPUs, a lower bound"]
        assert tri.get_marker() == "^" and list(tri.get_xdata()) == [48] and list(tri.get_ydata()) == [30.0]
        arrows = [a for a in ax.texts if getattr(a, "arrow_patch", None) is not None and tuple(a.xyann) == (48, 30.0)]
        assert arrows and arrows[0].xy[0] == 48 and arrows[0].xy[1] > 30  # an arrow from 30 upward: "more than"
        models = [ln for name, ln in lines.items() if name.endswith(": model")]
        assert len(models) == len(ax.collections) >= 1  # a band for every projected curve
        assert len({ln.get_marker() for ln in models}) == len(models)  # distinct markers
        ys = [txt.xyann[1] for txt in ax.texts if txt.get_text().endswith("x")]
        assert len(ys) == len(models) + 1 and all(b / a >= 1.29 for a, b in zip(sorted(ys), sorted(ys)[1:]))
    gpu = plots.plot_gpu_projection(report.gpu_rows(["tsubame2.5", "h200"]), seed, str(study / "g.png"))
    assert len(gpu.axes) == 2  # one panel per GPU profile
    for ax in gpu.axes:
        assert ax.get_xlabel() == "modeled GPUs (log2)" and "efficiency" in ax.get_ylabel()
        models = [ln for ln in ax.get_lines() if ln.get_label().endswith("band: inputs varied")]
        assert len(models) == len(ax.collections) == len(report.GPU_ARMS)  # a band for every arm
        assert len({ln.get_marker() for ln in models}) == len(models)
        tri = [ln for ln in ax.get_lines() if ln.get_marker() == "^"]
        assert tri and list(tri[0].get_xdata()) == [48] and list(tri[0].get_ydata()) == [30.0 / 48]
        ends = sorted(t.xy[1] for t in ax.texts if t.get_text().endswith("x"))
        assert len(ends) == len(models) and all(b - a >= 0.044 for a, b in zip(ends, ends[1:]))
    meas = plots.plot_measured(df, t, local, str(study / "m.png"))
    assert all("CPU workers" in ax.get_xlabel() for ax in meas.axes)
    each = [ln for ln in meas.axes[0].get_lines() if (ln.get_label() or "").endswith("each run")]
    assert each and sum(len(ln.get_xdata()) for ln in meas.axes[0].get_lines() if ln.get_marker() in "os"
                        and ln.get_mfc() == "none") == 12  # every main ok run drawn beside its mean


def test_rejected_lines_are_counted_and_the_rest_used(study: Path):
    runs = study / "runs.jsonl"
    with open(runs, "a", encoding="utf-8") as f:
        f.write(json.dumps({"mode": "sync", "status": "ok"}) + "\n")  # lacks the schema's fields
        f.write('{"run_id": "half-writ')
    before = runs.read_bytes()
    assert main(["report", "--results-dir", str(study.parent), "--study", "local"]) == 0
    text = (study / "report.md").read_text()
    assert "2 line(s) rejected" in text
    assert "| sync | gap | 32 | 64 | none | – | – | 2 | 3 | 180.0 ± 5.8 |" in text
    assert runs.read_bytes() == before


def test_slurm_study_without_allreduce_bench_gets_no_prediction(tmp_path: Path):
    d = tmp_path / "results" / "cluster"
    recs = [rec(f"{m}-{p}-{i}", m, p, 100.0 * p * (0.9 if m == "async" else 1.0), host="node01",
                hosts=[f"node0{k + 1}" for k in range(p)], slurm_job_id=str(100 + 10 * p + i))
            for m in ("sync", "async") for p in (1, 2, 4) for i in range(2)]
    write_runs(d / "runs.jsonl", recs)
    text = Path(report.write_report(str(d))).read_text()
    assert "no prediction: no allreduce measurement" in text
    assert "inf" not in text.replace("info", "") and "| local |" not in text
    assert "predicted img/s" not in text
    assert "not recorded (no study.json" in text  # conditions say what is missing, not "?"


def test_slurm_backend_submits_one_sweep(tmp_path: Path):
    cfg = plan.preset("local", cluster="slurm", results_dir=str(tmp_path), study="cl", workers=(1, 2, 4),
                      width=0.5)  # the three arms (the seed's async all-reduce: slurm/async_allreduce.sbatch)
    argv = submit_command(cfg, cpu=True, extra=["--gpus-per-node", "2"])
    assert argv[0] == str(ROOT / "slurm" / "sweep.sh")
    sweep, trainer = argv[1:argv.index("--")], argv[argv.index("--") + 1:]
    assert dict(zip(sweep, sweep[1:]))["--gpus"] == "1,2,4" and "--cpu" in sweep and "--gpus-per-node" in sweep
    assert dict(zip(sweep, sweep[1:]))["--trainers"] == "sync,async,async_allreduce"
    assert dict(zip(trainer, trainer[1:]))["--width"] == "0.5" and "--tag" not in argv
    p = subprocess.run([*argv[:argv.index("--")], "--dry-run", *argv[argv.index("--"):]], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr  # sweep.sh accepts every flag the backend builds
    scripts = {m for line in p.stdout.splitlines() for m in re.findall(r"/slurm/(\w+)\.sbatch --dataset", line)}
    assert scripts == {"sync", "async", "async_allreduce"}, p.stdout
    assert not (tmp_path / "cl").exists()  # a dry run submits and writes nothing


def test_reference_study_is_shown_beside(study: Path):
    ref = study.parent / "reference" / "local"
    write_runs(ref / "runs.jsonl", [rec("sync-p1-r0", "sync", 1, 120.0, host="refhost", sha="def"),
                                    rec("sync-p2-r0", "sync", 2, 200.0, host="refhost", sha="def")])
    text = Path(report.write_report(str(study))).read_text()
    assert "## Beside the reference study" in text and "refhost" in text
    assert "| sync | gap | none | – | 2 | 180.0 ± 5.8 (3) | 200.0 ± 1.0 (1) |" in text


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing written
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_runs_file(tmp_path: Path, capsys):
    assert main(["report", "--results-dir", str(tmp_path), "--study", "none"]) == 2
    assert "no runs file" in _one_line_error(capsys)
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("content", ["", json.dumps({"mode": "sync"}) + "\n"])
def test_runs_file_without_a_valid_record(tmp_path: Path, capsys, content):
    runs = tmp_path / "s" / "runs.jsonl"
    runs.parent.mkdir()
    runs.write_text(content)
    assert main(["report", "--results-dir", str(tmp_path), "--study", "s"]) == 2
    assert "no valid run" in _one_line_error(capsys)
    assert runs.read_text() == content and sorted(p.name for p in runs.parent.iterdir()) == ["runs.jsonl"]


def test_unknown_profile(study: Path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", "--results-dir", str(study.parent), "--study", "local", "--profiles", "local,summit"])
    assert e.value.code == 2 and "unknown value 'summit'" in _one_line_error(capsys)
    assert not (study / "report.md").exists()


@pytest.mark.parametrize("args", [["--workers", "0"], ["--workers", "1,0"], ["--workers", "x"], ["--workers", ""],
                                  ["--cluster", "cloud"], ["--study", "../x"],
                                  ["--cluster", "emulated", "--links", "fast"]])
def test_bad_run_arguments(study: Path, capsys, args):
    before = (study / "runs.jsonl").read_bytes()
    with pytest.raises(SystemExit) as e:
        main(["run", "--results-dir", str(study.parent), "--study", "local", *args])
    assert e.value.code == 2
    _one_line_error(capsys)
    assert (study / "runs.jsonl").read_bytes() == before and not (study / "logs").exists()


# ------------------------------------------------------------------ structure
def test_compare_imports_no_tensorflow_in_any_module():
    mods = sorted(f"compare.{m.name}" for m in pkgutil.iter_modules(compare.__path__))
    assert len(mods) >= 12 and "compare.launch" in mods and "compare.plots" in mods
    for mod in mods:  # each in a fresh interpreter: one module's import cannot hide another's
        code = f"import sys, {mod}; sys.exit(3 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)"
        p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (mod, p.returncode, p.stderr[-500:])


def test_committed_reference_studies_are_single_commit_and_clean():
    for path in glob.glob(str(ROOT / "results" / "reference" / "*" / "runs.jsonl")):
        recs, _ = record.read_records(path)
        assert len({r.get("git_sha") for r in recs}) == 1, path
        assert all(r.get("git_dirty") is False for r in recs), path


def test_plan_and_launcher_commands(tmp_path: Path):
    cfg = plan.StudyConfig(results_dir=str(tmp_path), repeats=2, python="/venv/bin/python")
    runs = plan.plan(cfg)
    main_runs = [r for r in runs if r.role == "main"]
    assert len(main_runs) == 3 * 2 * 2 and [r.repeat for r in runs] == sorted(r.repeat for r in runs)
    assert {r.mode for r in main_runs} == {"sync", "async", "async_allreduce"}
    assert len({r.run_ids()[0] for r in main_runs}) == len(main_runs)
    backend = LocalBackend()
    sync2 = next(r for r in main_runs if r.mode == "sync" and r.workers == 2)
    [(rid, argv)] = backend.commands(cfg, sync2)
    assert rid == sync2.run_ids()[0]
    assert argv[0].endswith("horovodrun") and argv[1:6] == ["--gloo", "-np", "2", "-H", "localhost:2"]
    inner = argv[6:]
    if len(plan.cores_available()) >= 2:
        assert inner[:5] == ["/venv/bin/python", "-m", "compare.pin", "--cores", "0,1"] and inner[5] == "--"
        inner = inner[6:]
    assert inner[:3] == ["/venv/bin/python", "-m", "train.sync_allreduce"]
    flags = dict(zip(inner, inner[1:]))
    assert flags["--run-id"] == rid and flags["--role"] == "main" and flags["--copies"] == "1"
    assert "--tag" not in argv and "--peak-gflops" not in argv
    # the seed's async all-reduce: launched like the sync arm (horovodrun, one pinned rank a core)
    ar2 = next(r for r in main_runs if r.mode == "async_allreduce" and r.workers == 2)
    [(rid, argv)] = backend.commands(cfg, ar2)
    assert argv[1:6] == ["--gloo", "-np", "2", "-H", "localhost:2"] and rid == ar2.run_ids()[0]
    i = argv.index("train.async_allreduce")
    assert argv[i - 2:i] == ["/venv/bin/python", "-m"] and dict(zip(argv, argv[1:]))["--run-id"] == rid
    async2 = next(r for r in main_runs if r.mode == "async" and r.workers == 2)
    [(_, argv)] = backend.commands(cfg, async2)
    i = argv.index("train.async_ps")
    assert argv[i + 1:i + 5] == ["--workers", "2", "--ps", "1"]
    if len(plan.cores_available()) >= 2:
        assert argv[:3] == ["taskset", "-c", "0,1"]
        ceiling = [r for r in runs if r.role == "ceiling"]
        assert len(ceiling) == 2
        cmds = backend.commands(cfg, ceiling[0])
        assert len(cmds) == 2 and all(dict(zip(a, a[1:]))["--role"] == "ceiling" for _, a in cmds)
        assert [a[:3] for _, a in cmds] == [["taskset", "-c", "0"], ["taskset", "-c", "1"]]


def _fake_python(tmp_path: Path) -> Path:
    fake = tmp_path / "fakepython"
    fake.write_text("#!/bin/sh\necho 'Traceback: something broke' >&2\nexit 3\n")
    fake.chmod(0o755)
    return fake


def test_failed_runs_are_full_schema_records_and_the_study_goes_on(tmp_path: Path):
    cfg = plan.StudyConfig(results_dir=str(tmp_path / "results"), study="f", modes=("async",), workers=(1, 2),
                           repeats=1, ceiling=False, bench=False, python=str(_fake_python(tmp_path)), timeout=60)
    os.makedirs(os.path.dirname(cfg.runs_path))
    with open(cfg.runs_path, "w") as f:
        f.write('{"run_id": "torn-by-a-crash')  # a torn last line must not swallow the next record
    counts = run_study(cfg, LocalBackend(), "test", progress=False)
    assert counts["failed"] == 2 and counts["ok"] == 0
    recs, rejected = record.read_valid(cfg.runs_path)
    assert rejected == 1 and [r["status"] for r in recs] == ["failed", "failed"]
    for r in recs:
        assert record.problems(r) == [] and r["role"] == "main" and r["study"] == "f"
        assert "exit code 3" in r["error"] and "something broke" in r["error"]
    assert [r["num_workers"] for r in recs] == [1, 2]
    load = [json.loads(line) for line in open(tmp_path / "results" / "f" / "load.jsonl")]
    assert load and set(load[-1]) == {"t", "loadavg1", "steal_frac", "cpu_busy_frac", "host"}
    info = json.loads((tmp_path / "results" / "f" / "study.json").read_text())
    assert info["cluster"] == "local" and info["git_sha"] == record.git_state()[0]


def test_emulated_backend_failure_is_a_full_schema_record(tmp_path: Path):
    """No cluster up (sbatch cannot reach a controller, or is missing): every job is a failed record. sbatch
    retries a missing configuration for about a minute; the 3 s timeout kills it sooner (same record)."""
    cfg = plan.preset("emulated", results_dir=str(tmp_path / "results"), study="e", links=("1gbit",),
                      emulated_runs=("sync-1n", "ceil-2n"), bench=False, timeout=3,
                      state_dir=str(tmp_path / "nocluster"))
    backend = EmulatedBackend()
    backend.stages = lambda cfg, runs: [LocalBackend().stages(cfg, runs)[0]]  # no cluster: skip bringing one up
    counts = run_study(cfg, backend, "test", progress=False)
    assert counts["failed"] == 2
    recs, _ = record.read_valid(cfg.runs_path)
    assert len(recs) == 3  # sync-1n, and the two copies of the side-by-side run
    for r in recs:
        assert record.problems(r) == [] and r["status"] == "failed" and r["link"]["rate"] == "1gbit"
    assert sorted((r["role"], r["copies"]) for r in recs) == [("ceiling", 2), ("ceiling", 2), ("main", 1)]


def test_resume_skips_only_same_host_same_commit(tmp_path: Path):
    cfg = plan.StudyConfig(results_dir=str(tmp_path / "results"), study="r", modes=("async",), workers=(1, 2),
                           repeats=1, ceiling=False, bench=False, python=str(_fake_python(tmp_path)), timeout=60)
    sha = record.git_state()[0]
    ids = [r.run_ids()[0] for r in plan.plan(cfg)]
    here = rec(ids[0], "async", 1, 80.0, host=socket.gethostname(), sha=sha, study="r")
    write_runs(Path(cfg.runs_path), [here])
    counts = run_study(cfg, LocalBackend(), "test", progress=False)
    assert counts["skipped"] == 1 and counts["failed"] == 1  # the done run is not run again
    # another host's (or commit's) ok record: nothing is "already done"; those results move aside
    write_runs(Path(cfg.runs_path), [rec(ids[0], "async", 1, 80.0, host="elsewhere", sha=sha, study="r"),
                                     rec(ids[1], "async", 2, 150.0, host=socket.gethostname(), sha="0" * 40, study="r")])
    counts = run_study(cfg, LocalBackend(), "test", progress=False)
    assert counts["skipped"] == 0 and counts["failed"] == 2
    recs, _ = record.read_valid(cfg.runs_path)
    assert {r["host"] for r in recs} == {socket.gethostname()} and {r["git_sha"] for r in recs} == {sha}
    [old] = glob.glob(str(tmp_path / "results" / "r" / "previous" / "*" / "runs.jsonl"))
    assert {r["host"] for r in record.read_records(old)[0]} == {"elsewhere", socket.gethostname()}


def test_reference_study_refuses_a_dirty_checkout(tmp_path: Path):
    """In a clone with a changed tracked file: `compare run` into results/reference refuses, writes nothing."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(clone)], check=True, timeout=120)
    for sub in ("compare", "train"):  # the code under test, as it is in this checkout
        subprocess.run(["cp", "-r", f"{ROOT}/{sub}/.", str(clone / sub)], check=True)
    with open(clone / "README.md", "a") as f:
        f.write("\nchanged\n")
    ref = tmp_path / "results" / "reference"
    p = subprocess.run([sys.executable, "-m", "compare", "run", "--results-dir", str(ref), "--study", "x", "--modes",
                        "async", "--workers", "1", "--repeats", "1", "--no-ceiling", "--no-bench", "--no-progress"],
                       cwd=clone, env=dict(os.environ, PYTHONPATH=str(clone)), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "reference study" in p.stderr, p.stderr
    assert not (ref / "x").exists()


def test_host_load_sampler_writes_the_contract_fields(tmp_path: Path):
    path = tmp_path / "load.jsonl"
    with Sampler(str(path), interval=0.05):
        time.sleep(0.5)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) >= 2
    for r in rows:
        assert set(r) == {"t", "loadavg1", "steal_frac", "cpu_busy_frac", "host"} and r["loadavg1"] >= 0
    assert 0 <= rows[-1]["cpu_busy_frac"] <= 1 and 0 <= rows[-1]["steal_frac"] <= 1


# ------------------------------------------------------------------ end to end (real launchers)
@pytest.mark.slow
def test_tiny_study_then_report_end_to_end(tmp_path: Path):
    results = tmp_path / "results"
    argv = [sys.executable, "-m", "compare", "run", "--results-dir", str(results), "--study", "e2e",
            "--workers", "1,2", "--repeats", "1", "--steps-per-epoch", "8", "--async-steps-per-epoch", "16",
            "--warmup-steps", "2", "--width", "0.125", "--per-worker-batch", "32", "--no-progress", "--load-interval", "5"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = results / "e2e" / "runs.jsonl"
    recs, rejected = record.read_valid(str(runs))
    assert rejected == 0 and not [(r["run_id"], r.get("error")) for r in recs if r["status"] != "ok"]
    assert {(r["mode"], r["num_workers"]) for r in recs if r["role"] == "main"} == {
        ("sync", 1), ("sync", 2), ("async", 1), ("async", 2), ("async_allreduce", 1), ("async_allreduce", 2)}
    ar2 = next(r for r in recs if r["mode"] == "async_allreduce" and r["num_workers"] == 2)  # issue 16's arm
    assert ar2["sub_batches"] == 2 * 16 and ar2["effective_batch"]["n"] == ar2["updates"] > 0
    assert ar2["staleness"]["n"] == 32 and len(set(ar2["weights_sha256"])) == 1 and ar2["updates_per_sec"] > 0
    assert sorted((r["role"], r["copies"]) for r in recs if r["role"] == "ceiling") == [("ceiling", 2)] * 2
    assert [(r["run_id"], r["mfu"]) for r in recs if r["mfu"] is None or not 0 < r["mfu"] <= 1] == []
    assert len({r["git_sha"] for r in recs}) == 1
    bench = json.loads((results / "e2e" / "allreduce.json").read_text())
    assert bench["np"] == 2 and bench["alpha_s"] >= 0 and bench["bw_Bps"] > 0
    emu = bench["step_emulation"]  # the exchange measured beside compute, at the sync trainer's Horovod settings
    assert emu["tensors"] == 35 and "how" in emu and emu["horovod_settings"]["horovod_cycle_time"]["value"] == "10"
    assert all(a > 0 for a in emu["chunk_plus_allreduce_s"]) and emu["delta_s"] == emu["delta_s"]  # not NaN
    assert bench["host_before"]["cpu_busy_frac"] is not None  # the launcher waited for a quiet host, and says so
    assert (results / "e2e" / "load.jsonl").stat().st_size > 0
    before = runs.read_bytes()  # a second run on the same host and commit starts nothing
    again = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and runs.read_bytes() == before
    rep = subprocess.run([sys.executable, "-m", "compare", "report", "--results-dir", str(results),
                          "--study", "e2e"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (results / "e2e" / "report.md").read_text()
    assert "Points the model was not calibrated on" in text and "1-minute load average" in text
    ar = text.split("## Asynchronous all-reduce (the seed's method, issue 16)")[1].split("\n## ")[0]
    assert "What the measurements say" in ar and next(line for line in ar.splitlines() if line.startswith("| 2 | 1 |"))
    assert "| async_allreduce | gap | none | 1 | 1 |" in text  # predicted vs measured beside the other arms
    for png in ("measured.png", "projection.png", "staleness.png", "async_allreduce.png"):
        assert (results / "e2e" / png).stat().st_size > 10_000


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


def test_hostload_program_samples_until_stopped(tmp_path: Path):
    """What a SLURM job runs (slurm/job-env.sh): samples until SIGTERM, then a last one; bad input exit 2."""
    out = tmp_path / "load.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "compare.hostload", "--out", str(out), "--interval", "0.2"],
                            cwd=ROOT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 3 and all(isinstance(r["loadavg1"], float) and r["host"] and r["t"] for r in rows)
    bad = subprocess.run([sys.executable, "-m", "compare.hostload", "--out", str(tmp_path / "x"), "--interval", "0"],
                         cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--interval" in bad.stderr
    assert not (tmp_path / "x").exists()
