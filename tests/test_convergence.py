"""Issue 6: per-epoch convergence curves of both trainers, fp16 compression in the sync arm, the
`compare run --convergence` preset and the report's time-to-target table and accuracy plots.
Real trainers as real processes (slow); the report on hand-written JSONL fixtures. Asserts on files."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from compare import plan, plots, report
from compare.__main__ import build_parser, main
from compare.frame import load
from compare.local import LocalBackend
from tests.conftest import BIN, records, run
from tests.test_compare import rec, write_runs

DIGITS = ["--dataset", "digits", "--width", "0.25", "--image-size", "32", "--intra-op-threads", "1", "--study", "t"]
SHORT = DIGITS + ["--per-worker-batch", "32", "--epochs", "3", "--steps-per-epoch", "5", "--warmup-steps", "1"]


def sync_run(np_: int, args: list[str], timeout: float = 600):
    cmd = [str(BIN / "horovodrun"), "--gloo", "-np", str(np_), "-H", f"localhost:{np_}",
           sys.executable, "-m", "train.sync_allreduce", *args]
    return run(cmd, timeout=timeout)


def assert_curve(rec: dict, epochs: int, steps_per_epoch: int, images_per_step: int) -> None:
    """One point per epoch; wall time, steps and images strictly increasing; held-out metrics each epoch."""
    curve = rec["curve"]
    assert [p["epoch"] for p in curve] == list(range(1, epochs + 1))
    walls, images = [p["wall_s"] for p in curve], [p["images"] for p in curve]
    assert all(b > a for a, b in zip(walls, walls[1:])) and walls[0] > 0, walls
    assert all(b > a for a, b in zip(images, images[1:])), images
    for p in curve:
        assert p["images"] == p["steps"] * images_per_step
        assert 0.0 <= p["val_top1"] <= p["val_top5"] <= 1.0 and p["val_loss"] > 0
    assert curve[-1]["steps"] >= epochs * steps_per_epoch


# ------------------------------------------------------------------ the trainers (slow, real processes)
@pytest.mark.slow
def test_async_curve_one_point_per_epoch(results):
    cmd = [sys.executable, "-m", "train.async_ps", "--workers", "2", "--ps", "1", *SHORT,
           "--results-dir", str(results)]
    proc = run(cmd, timeout=600, TF_NUM_INTEROP_THREADS="2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [r] = records(results)
    # every applied update is one worker's batch of 32; a scheduled step may be retried, never lost
    assert_curve(r, epochs=3, steps_per_epoch=5, images_per_step=32)
    assert r["compression"] == "none" and r["compression_supported"] is False


@pytest.mark.slow
def test_sync_fp16_reaches_the_digits_target_within_the_same_budget(results):
    """tests/test_sync.py's recipe (np=2, global batch 64 at lr 0.05, 12 epochs) with fp16 on the wire."""
    args = DIGITS + ["--per-worker-batch", "32", "--epochs", "12", "--lr", "0.025", "--compression", "fp16",
                     "--results-dir", str(results)]
    proc = sync_run(2, args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [r] = records(results)
    assert r["compression"] == "fp16" and r["config"]["compression"] == "fp16"
    assert_curve(r, epochs=12, steps_per_epoch=1347 // 64, images_per_step=64)  # 1347 training digits
    assert len(set(r["weights_sha256"])) == 1  # both ranks hold the same weights with fp16 on the wire
    assert r["gradient_bytes"] * 2 == 4 * r["trainable_params"]  # half of fp32's (tests/test_sync.py: fp32's)
    assert max(p["val_top1"] for p in r["curve"]) >= 0.90, [round(p["val_top1"], 3) for p in r["curve"]]


# ------------------------------------------------------------------ the preset (no processes)
def test_convergence_preset_plans_seeds_lr_and_fp16_for_sync_only(tmp_path):
    assert build_parser().parse_args(["run", "--convergence"]).convergence
    cfg = plan.preset("convergence", results_dir=str(tmp_path))
    assert cfg.study == "convergence" and cfg.dataset == "digits" and cfg.repeats == 3 and cfg.cluster == "local"
    runs = plan.plan(cfg)
    kinds = {(r.mode, r.workers, r.compression) for r in runs}
    assert kinds == {("sync", 1, "none"), ("sync", 2, "none"), ("sync", 2, "fp16"),
                     ("async", 1, "none"), ("async", 2, "none"),  # fp16 at 1 worker: nothing on the wire
                     ("async_allreduce", 1, "none"), ("async_allreduce", 2, "none")}  # issue 16's arm
    assert len(runs) == 7 * 3 and all(r.role == "main" for r in runs)
    # the async all-reduce arm at the lr per sub-batch tests/test_async_allreduce.py documents (0.005)
    ar = next(r for r in runs if r.mode == "async_allreduce" and r.workers == 2 and r.repeat == 1)
    [(_, argv)] = LocalBackend().commands(cfg, ar)
    flags = dict(zip(argv, argv[1:]))
    assert "train.async_allreduce" in argv and float(flags["--lr"]) == 0.005 and flags["--seed"] == "1"
    r2 = next(r for r in runs if r.repeat == 2 and r.mode == "async")
    [(rid, argv)] = LocalBackend().commands(cfg, r2)
    flags = dict(zip(argv, argv[1:]))
    assert flags["--seed"] == "2" and flags["--dataset"] == "digits" and float(flags["--lr"]) == cfg.lr
    assert flags["--steps-per-epoch"] == "0"  # one pass over the training set per epoch
    assert plan.preset("convergence", epochs=3).epochs == 3  # an explicit flag still wins over the preset


# ------------------------------------------------------------------ the report on fixtures
CONFIGS = [("sync", 1, "none"), ("sync", 2, "none"), ("sync", 1, "fp16"), ("sync", 2, "fp16"),
           ("async", 1, "none"), ("async", 2, "none")]
ACC = [0.1, 0.5, 0.8, 0.92, 0.95]  # reaches 90% at epoch 4


def conv_records() -> list[dict]:
    out = []
    for mode, p, comp in CONFIGS:
        for seed in range(3):
            per_epoch_s = 2.0 + 0.1 * seed + (0.5 if p == 1 else 0.0)
            acc = [0.1, 0.3, 0.5, 0.6, 0.7] if (mode, p, seed) == ("async", 2, 2) else ACC
            curve = [{"epoch": e + 1, "wall_s": per_epoch_s * (e + 1), "steps": 21 * (e + 1),
                      "images": 1344 * (e + 1), "loss": 1.0, "top1": a, "top5": 1.0, "val_loss": 1.0,
                      "val_top1": a, "val_top5": 1.0} for e, a in enumerate(acc)]
            extra = {}
            if mode == "sync" and p == 2:  # what the sync trainer records (train/compression.py), fp16 halves it
                sent = 627706 * (2 if comp == "fp16" else 4)
                extra.update(bytes_sent_per_step=sent, bytes_received_per_step=sent, compression_ratio=4 * 627706 / sent,
                             compress_time_s_per_step=0.002 if comp == "fp16" else 0.0)
            if mode == "async":
                extra["staleness"] = {"mean": p - 1, "p95": p - 1, "max": p, "histogram": {str(p - 1): 100}}
            out.append(rec(f"{mode}-p{p}-{comp}-r{seed}", mode, p, 100.0 * p * (1.1 if comp == "fp16" else 1.0),
                           compression=comp, dataset="digits", curve=curve, config={"seed": seed}, **extra))
    return out


def test_report_draws_accuracy_vs_time_and_images_and_the_time_to_target_table(tmp_path: Path):
    study = tmp_path / "results" / "conv"
    write_runs(study / "runs.jsonl", conv_records())
    text = Path(report.write_report(str(study), profiles=["local", "tsubame2.5"], target=0.9,
                                    notes=["shared, noisy host"])).read_text()
    assert "- note: shared, noisy host" in text.split("## Runs")[0]  # among the conditions
    for png in ("accuracy_vs_time.png", "accuracy_vs_images.png", "staleness.png"):
        assert (study / png).stat().st_size > 1000, png
        assert f"![{png}]({png})" in text

    # the time-to-target table: mean ± SD (min–max) over the seeds that reached it; epoch 4 = 4 x (2.0, 2.1, 2.2) s
    assert "## Convergence: time and images to 90% held-out top-1" in text
    assert "| sync | 2 | none | 3/3 | 8.4 ± 0.4 (8.0–8.8) | 5376 ± 0 (5376–5376) |" in text
    assert "| sync | 1 | none | 3/3 | 10.4 ± 0.4 (10.0–10.8) |" in text
    # a run that never reaches the target is listed as such, not dropped
    assert "| async | 2 | none | 2/3 | 8.2 ± 0.3 (8.0–8.4) |" in text
    never = next(l for l in text.splitlines() if l.startswith("| async-p2-none-r2 |"))
    assert "**never**" in never and "0.700" in never
    # fp16: bytes a step from the records, measured img/s, time to target, final top-1 against none's; no
    # allreduce bench here: no local model prediction
    assert "## Gradient compression (sync arm, issue 15)" in text
    two = text.split("## Gradient compression")[1].split("2 workers:")[1]
    row = next(l for l in two.splitlines() if l.startswith("| fp16 | 3 |"))
    assert "| 1255.4 | 1255.4 | 2.0x | 2.0 | 220.0 ± 0.0 | 8.4 ± 0.4 (8.0–8.8) | 3/3 | 0.950 ± 0.000 |" in row, row
    assert "within 1 point of none (+0.0)" in row and "no prediction: no allreduce measurement" in row
    # the measured ratio and compress time carried to tsubame2.5: a curve and a row per method and head
    assert "![projection_compression.png](projection_compression.png)" in text
    for workload in ("gap, batch 64", "fc4096, batch 64", "fc4096, batch 4"):
        assert f"| {workload} | none |" in text and f"| {workload} | fp16 |" in text
    assert "| tsubame2.5 | sync_allreduce |" in text  # GPU profiles: the measured-terms model
    # staleness: mean against the model's p - 1
    assert "| 2 | 3 | 1.00 |" in text and "model (p − 1)" in text

    runs = report.convergence_runs(load(str(study)).df, 0.9)
    for x, xlabel in (("wall_s", "wall-clock seconds"), ("images", "training images")):
        fig = plots.plot_accuracy_curves(runs, 0.9, str(tmp_path / f"{x}.png"), x=x)
        assert [a.get_title() for a in fig.axes] == ["sync", "sync, fp16", "async"]  # no configuration under another
        assert all(xlabel in a.get_xlabel() for a in fig.axes) and "top-1" in fig.axes[0].get_ylabel()
        lines = {l.get_label(): l for a in fig.axes for l in a.get_lines()}
        for want in ("sync p=1 (mean of 3 seeds)", "sync p=2, fp16 (mean of 3 seeds)", "async p=2 (mean of 3 seeds)"):
            assert want in lines, (want, list(lines))
        assert list(lines["target 90% top-1"].get_ydata()) == [0.9, 0.9]
        mean = lines["sync p=2 (mean of 3 seeds)"]
        want_x = [8.4 / 4 * e for e in range(1, 6)] if x == "wall_s" else [1344 * e for e in range(1, 6)]
        assert list(mean.get_xdata()) == pytest.approx(want_x)
        assert list(mean.get_ydata()) == pytest.approx(ACC)
        # async p=2: the mean over seeds includes the run that never got there
        assert lines["async p=2 (mean of 3 seeds)"].get_ydata()[-1] == pytest.approx((0.95 * 2 + 0.7) / 3)
        assert sum(len(a.collections) for a in fig.axes) == len(CONFIGS)  # one min–max band per configuration
        seeds = [l for a in fig.axes for l in a.get_lines() if l.get_label().startswith("_") and l.get_linewidth() < 1]
        assert len(seeds) == len(conv_records())  # every seed's own curve
    st = plots.plot_staleness(load(str(study)).df, str(tmp_path / "st.png"))
    labels = [t.get_text() for t in st.axes[0].get_legend().get_texts()]
    assert "2 workers: measured mean 1.00 (model: mean 1 = p − 1)" in labels


def test_report_bad_target_is_one_line_exit_2_nothing_written(tmp_path: Path, capsys):
    study = tmp_path / "results" / "conv"
    write_runs(study / "runs.jsonl", conv_records())
    before = sorted(p.name for p in study.iterdir())
    for bad in ("1.5", "0", "x"):
        with pytest.raises(SystemExit) as e:
            main(["report", "--results-dir", str(tmp_path / "results"), "--study", "conv", "--target", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "--target" in err
    assert sorted(p.name for p in study.iterdir()) == before
