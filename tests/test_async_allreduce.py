"""The async all-reduce trainer (issue 16), run for real under horovodrun over Gloo and MPI; asserts on records."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import BIN, ROOT, child_env, records, run, rank_pid

MODULE = "train.async_allreduce"
TINY = ["--dataset", "synthetic", "--width", "0.25", "--image-size", "32", "--per-worker-batch", "16",
        "--epochs", "2", "--steps-per-epoch", "15", "--warmup-steps", "2", "--intra-op-threads", "1",
        "--study", "t"]


def _cmd(controller: str, args: list[str], np_: int = 2) -> list[str]:
    return [str(BIN / "horovodrun"), f"--{controller}", "-np", str(np_), "-H", f"localhost:{np_}",
            sys.executable, "-m", MODULE, *args]


def _histogram_total(hist: dict[str, int], weighted: bool = False) -> int:
    return sum(int(k) * n if weighted else n for k, n in hist.items())


@pytest.mark.slow
@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_two_ranks_identical_weights_and_exact_counts(controller, results):
    proc = run(_cmd(controller, TINY + ["--results-dir", str(results)]), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(results)
    assert rec["status"] == "ok" and rec["mode"] == "async_allreduce" and rec["horovod_controller"] == controller
    assert rec["num_workers"] == 2 and rec["lr_rule"].startswith("linear")
    # Both ranks hashed every weight (BN statistics averaged) after the last update: identical.
    assert len(rec["weights_sha256"]) == 2 and len(set(rec["weights_sha256"])) == 1
    # Exact counting: every sub-batch of both ranks (2 ranks x 2 epochs x 15) landed in exactly one update.
    eff, stale = rec["effective_batch"], rec["staleness"]
    assert rec["sub_batches"] == 60 == _histogram_total(eff["histogram"], weighted=True)
    assert rec["updates"] == rec["steps"] == eff["n"] == _histogram_total(eff["histogram"])
    assert stale["n"] == 60 == _histogram_total(stale["histogram"]) and min(map(int, stale["histogram"])) >= 0
    assert eff["mean"] == pytest.approx(60 / rec["updates"])
    assert rec["effective_batch_images_mean"] == pytest.approx(eff["mean"] * 16)
    assert rec["images_per_sec"] > 0 and rec["updates_per_sec"] > 0 and rec["compute_images_per_sec"] > 0
    assert [p["epoch"] for p in rec["curve"]] == [1, 2] and rec["curve"][-1]["images"] == 60 * 16


def _throughput_args(results: Path, delay_ms: float, study: str) -> list[str]:
    return ["--dataset", "synthetic", "--width", "0.25", "--per-worker-batch", "16", "--epochs", "1",
            "--steps-per-epoch", "120", "--warmup-steps", "5", "--intra-op-threads", "1",
            "--comm-delay-ms", str(delay_ms), "--study", study, "--results-dir", str(results)]


@pytest.mark.slow
def test_slow_communication_keeps_images_per_sec_and_grows_the_effective_batch(results):
    """The defining property: slow every all-reduce down and the updates carry more sub-batches while
    compute goes on. Asserted within the slowed run: the compute loop spent under 10% of its time waiting
    for the communication thread (so its images/sec is within 10% of compute alone), the effective
    batch grew and there was at most one update per delay. The unslowed job runs side by side for the effective
    batch it gets. A speed ratio between two runs is a benchmark's business on a shared 2-core machine
    (see README: measured slowed/unslowed 0.94-0.98), not a test's."""
    delay = 1500.0  # ms: many compute steps (~0.1-0.4 s each here) pile up during one all-reduce
    rounds = []
    for i in range(1):
        procs = {d: subprocess.Popen(_cmd("gloo", _throughput_args(results, d, f"r{i}d{int(d)}")), cwd=ROOT,
                                     env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for d in (0.0, delay)}
        recs = {}
        for d, proc in procs.items():
            _, err = proc.communicate(timeout=900)
            assert proc.returncode == 0, err[-3000:]
            [recs[d]] = records(results, f"r{i}d{int(d)}")
        rounds.append(recs)
    detail = [{d: (round(r["images_per_sec"], 1), round(r["compute_images_per_sec"], 1),
                   round(r["effective_batch"]["mean"], 2), round(r["staleness"]["mean"], 2))
               for d, r in recs.items()} for recs in rounds]
    for recs in rounds:
        fast, slow = recs[0.0], recs[delay]
        # compute never waits for the network: under 10% of each rank's run went to waiting for a lock
        assert all(0 <= f < 0.1 for f in slow["compute_blocked_fraction"]), (slow["compute_blocked_fraction"], detail)
        assert slow["effective_batch"]["mean"] >= 2 * fast["effective_batch"]["mean"], detail
        # most sub-batches land one update late (the median; the mean read 0.99 once: the first update's are fresh)
        assert slow["staleness"]["p50"] >= 1 and slow["comm_delay_ms"] == delay, detail
        assert slow["updates_per_sec"] < 1000 / delay < fast["updates_per_sec"], detail  # one update per delay at most


@pytest.mark.slow
def test_digits_two_ranks_reach_90_percent(results):
    """Real data, np=2, width 0.25, the linear rule. Stale gradients (staleness ~1 here) with momentum 0.9
    need a smaller step than the sync arm: its lr (0.025 per 32-image sub-batch, 0.05 per update of two)
    stayed at chance, and so did 0.01 under the capped rule; 0.005 per sub-batch (~0.011 per update)
    with a 2-epoch warm-up. One CI run sat at chance for 5 epochs and ended at 0.887 after 15 (BN
    momentum 0.99, no warm-up); with BN momentum 0.9 and the warm-up: 0.97 at epoch 4 (2026-11-28)."""
    args = ["--dataset", "digits", "--width", "0.25", "--per-worker-batch", "32", "--epochs", "10",
            "--lr", "0.005", "--lr-warmup-epochs", "2", "--intra-op-threads", "1", "--study", "t", "--results-dir", str(results)]
    proc = run(_cmd("gloo", args), timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(results)
    curve = rec["curve"]
    assert len(curve) == 10 and all("val_top1" in p for p in curve)
    assert [p["wall_s"] for p in curve] == sorted(p["wall_s"] for p in curve)
    assert curve[-1]["val_top1"] >= 0.90, [round(p["val_top1"], 3) for p in curve]
    assert rec["final"]["val_top1"] == curve[-1]["val_top1"]  # the final model (BN statistics averaged)
    assert len(set(rec["weights_sha256"])) == 1 and rec["staleness"]["n"] == rec["sub_batches"]
    # Applied sub-batches cannot outpace computed ones for long. The other rank's backlog from rank 0's
    # evaluations once landed inside the rate's windows (417.5 vs 354.8 img/s computed); 10%: window noise.
    assert rec["images_per_sec"] <= 1.1 * rec["compute_images_per_sec"], (rec["images_per_sec"], rec["compute_images_per_sec"])


# ---------------------------------------------------------------- failure and bad input
def _rank_pid(marker: str, rank: int) -> int | None:
    return rank_pid(MODULE, marker, rank)


@pytest.mark.slow
@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_lost_rank_ends_the_job_with_an_error_not_a_hang(controller, results):
    args = TINY[:-2] + ["--epochs", "200", "--study", "t", "--results-dir", str(results)]
    proc = subprocess.Popen(_cmd(controller, args), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not (_rank_pid(str(results), 0) and _rank_pid(str(results), 1)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.5)
        time.sleep(25)  # past start-up: both ranks computing, the comm thread all-reducing
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        os.kill(_rank_pid(str(results), 1), signal.SIGKILL)
        t0 = time.monotonic()
        out, err = proc.communicate(timeout=90)
        assert time.monotonic() - t0 < 90
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert records(results) == []


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_from_the_last_checkpoint(results, tmp_path):
    """Rank 0 saves the weights of one whole update every epoch; after the job is killed mid-run, the same
    command resumes from the newest complete checkpoint, runs only the epochs left, and ends identical."""
    ckpt = tmp_path / "ckpt"
    args = ["--dataset", "synthetic", "--width", "0.25", "--image-size", "32", "--per-worker-batch", "16",
            "--epochs", "5", "--steps-per-epoch", "8", "--warmup-steps", "2", "--intra-op-threads", "1",
            "--study", "t", "--results-dir", str(results), "--checkpoint-dir", str(ckpt)]

    def launch():
        return subprocess.Popen(_cmd("gloo", args), cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    first = launch()
    try:
        deadline = time.monotonic() + 400
        while not (ckpt / "epoch-0002" / "meta.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-3000:]
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole job, mid-run
        first.wait(timeout=30)
    assert records(results) == []  # a killed run leaves no record
    killed_at = max(int(p.name.split("-")[1]) for p in ckpt.glob("epoch-*"))
    second = launch()
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    [rec] = records(results)
    assert rec["resumed_from_epoch"] == killed_at >= 2
    assert [p["epoch"] for p in rec["curve"]] == list(range(killed_at + 1, 6))
    assert rec["sub_batches"] == (5 - killed_at) * 8 * 2  # only the epochs left, every sub-batch of both ranks
    assert len(set(rec["weights_sha256"])) == 1  # both ranks loaded the same update and stayed identical
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0004", "epoch-0005"]  # no temp left


@pytest.mark.parametrize("args, words", [
    (["--comm-delay-ms", "-5"], "--comm-delay-ms must be >= 0"),
    (["--dataset", "cifar"], "unknown dataset"),
    (["--checkpoint-dir", "/proc/x"], "not writable"),
    (["--lr-warmup-epochs", "-1"], "--lr-warmup-epochs must be >= 0"),
    (["--per-worker-batch", "0"], "--per-worker-batch must be > 0"),
    (["--compression", "powersgd:4"], "has Horovod's fp16 hook only"),  # not silently run uncompressed
])
def test_bad_input_one_line_exit_2_nothing_written(args, words, results):
    proc = run([sys.executable, "-m", MODULE, *args, "--results-dir", str(results)], timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr
    assert not results.exists() or not any(results.rglob("*"))
