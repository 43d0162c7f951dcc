"""Sync arm under failure: resume from the last complete checkpoint; a lost rank ends the job fast."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import BIN, ROOT, child_env, records, rank_pid

pytestmark = pytest.mark.slow


def _launch(controller: str, args: list[str]) -> subprocess.Popen:
    cmd = [str(BIN / "horovodrun"), f"--{controller}", "-np", "2", "-H", "localhost:2",
           sys.executable, "-m", "train.sync_allreduce", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _rank_pid(marker: str, rank: int) -> int | None:
    return rank_pid("train.sync_allreduce", marker, rank)


def _wait_for(predicate, timeout: float, proc: subprocess.Popen):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_sigkill_mid_run_then_rerun_resumes(results, tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ["--width", "0.25", "--per-worker-batch", "16", "--epochs", "5", "--steps-per-epoch", "8",
            "--warmup-steps", "2", "--study", "t", "--results-dir", str(results), "--checkpoint-dir", str(ckpt)]
    first = _launch("gloo", args)
    _wait_for(lambda: (ckpt / "epoch-0002" / "meta.json").exists(), 400, first)
    os.killpg(first.pid, signal.SIGKILL)  # the whole job, mid-epoch 3
    first.wait(timeout=30)
    assert records(results) == []  # a killed run leaves no record
    killed_at = max(int(p.name.split("-")[1]) for p in ckpt.glob("epoch-*"))
    second = _launch("gloo", args)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    [rec] = records(results)
    assert rec["resumed_from_epoch"] == killed_at >= 2  # at most the interrupted epoch is redone
    assert rec["steps"] == 5 * 8  # the optimizer's step went on from the checkpoint
    assert [p["epoch"] for p in rec["curve"]] == list(range(killed_at + 1, 6))
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0004", "epoch-0005"]  # no temp left


def test_a_killed_writers_temp_checkpoint_is_cleared_by_the_next_save(tmp_path):
    """A run killed while writing epoch 3 leaves .tmp-epoch-0003-<pid>; the rerun's next save removes it (the
    test above caught one left behind when its kill landed mid-write, 2026-12-06)."""
    import tensorflow as tf

    from train import checkpoint

    stale = tmp_path / ".tmp-epoch-0003-999999"
    stale.mkdir()
    (stale / "ckpt.index").write_text("half")
    path = checkpoint.save(str(tmp_path), 3, tf.train.Checkpoint(v=tf.Variable(1.0)), {"head": "gap"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003"] and path.endswith("epoch-0003")
    assert checkpoint.latest(str(tmp_path)) == (3, path)


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_lost_rank_ends_the_job_fast_and_named(controller, results):
    args = ["--width", "0.25", "--per-worker-batch", "16", "--epochs", "200", "--steps-per-epoch", "10",
            "--study", "t", "--results-dir", str(results)]
    proc = _launch(controller, args)
    victim = _wait_for(lambda: _rank_pid(str(results), 1), 120, proc)
    _wait_for(lambda: _rank_pid(str(results), 0) and time.sleep(8) is None, 60, proc)  # training began
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert time.monotonic() - t0 < 60
    assert proc.returncode != 0
    named = {"gloo": "Process name: 1", "mpi": "rank 1"}[controller]
    assert named in err or named in out, (out + err)[-3000:]
    assert records(results) == []
