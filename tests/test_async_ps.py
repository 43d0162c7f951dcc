"""The asynchronous parameter-server arm (issue 3), on real local clusters: chief + workers + PS.

Every multi-process test launches `python -m train.async_ps` and asserts on the record it writes and
on the processes left behind, never on what it prints.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from train import record

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--width", "0.25", "--image-size", "32", "--per-worker-batch", "32"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
ENV.pop("TF_CONFIG", None)
for key in [k for k in ENV if k.startswith("SLURM_")]:
    ENV.pop(key)


def command(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "train.async_ps", *SMALL, "--results-dir", str(tmp_path), *args]


def run(tmp_path: Path, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(tmp_path, *args), cwd=REPO, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def records(tmp_path: Path) -> list[dict]:
    path = tmp_path / "local" / "runs.jsonl"
    if not path.exists():
        return []
    recs, torn = record.read_records(str(path))
    assert torn == []
    return recs


def cluster_children(launcher_pid: int) -> dict[int, dict]:
    """Live processes launched by this launcher (they carry its pid in their environment): pid -> task."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        env = dict(kv.decode(errors="replace").split("=", 1) for kv in raw if b"=" in kv)
        if env.get("ASYNC_PS_LAUNCHER_PID") == str(launcher_pid) and state != "Z":
            found[int(entry)] = json.loads(env["TF_CONFIG"])["task"]
    return found


def assert_no_orphans(launcher_pid: int) -> None:
    deadline = time.monotonic() + 10
    while cluster_children(launcher_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster_children(launcher_pid) == {}


class Launcher:
    """A local-cluster run in the background; waits for training to be under way."""

    def __init__(self, tmp_path: Path, *args: str):
        self.proc = subprocess.Popen(command(tmp_path, *args), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for_epoch(self, epoch: int, timeout: float = 180) -> None:
        """Timing only (Keras' epoch banner): the assertions are on records and processes."""
        deadline = time.monotonic() + timeout
        while not any(line.startswith(f"Epoch {epoch}/") for line in self.lines):
            assert self.proc.poll() is None, "".join(self.lines[-30:])
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)


# ---------------------------------------------------------------- bad input: one line, exit 2, no record
@pytest.mark.parametrize("args, tf_config, needle", [
    (["--ps", "0"], None, "--ps must be > 0"),
    (["--workers", "0"], None, "--workers must be > 0"),
    (["--workers", "-1"], None, "--workers must be > 0"),
    (["--compression", "fp16"], None, "no gradient compression"),
    (["--cluster", "nowhere"], None, "invalid choice"),
    ([], "{not json", "malformed TF_CONFIG"),
    ([], '{"cluster": {"chief": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}', "malformed TF_CONFIG"),
    ([], '{"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"], "ps": ["127.0.0.1:3"]}, '
         '"task": {"type": "worker", "index": 5}}', "malformed TF_CONFIG"),
    (["--cluster", "tf_config"], "", "malformed TF_CONFIG"),
])
def test_bad_input_one_line_exit_2_no_record(tmp_path, monkeypatch, capsys, args, tf_config, needle):
    from train import async_ps

    monkeypatch.delenv("TF_CONFIG", raising=False)
    if tf_config is not None:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    try:
        code = async_ps.main([*SMALL, "--results-dir", str(tmp_path), *args])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.async_ps: error:") and needle in lines[0], err
    assert not (tmp_path / "local").exists()


def test_hostfile_cluster_follows_the_placement():
    """An arbitrary placement (chief and shard 0 on n1, shard 1 on n2, workers back on n1 and n2): each task's
    address is its own host, ports counted per host, so no two tasks on a host share one."""
    from train.ps_cluster import hostfile_cluster

    hosts = ["n1", "n1", "n2", "n1", "n2"]
    cluster, kind, index = hostfile_cluster(hosts, 2, 0)
    assert cluster == {"chief": ["n1:8888"], "ps": ["n1:8889", "n2:8888"], "worker": ["n1:8890", "n2:8889"]}
    assert (kind, index) == ("chief", 0)
    assert hostfile_cluster(hosts, 2, 2)[1:] == ("ps", 1) and hostfile_cluster(hosts, 2, 4)[1:] == ("worker", 1)
    addrs = [a for job in cluster.values() for a in job]
    assert len(set(addrs)) == len(hosts) and [a.split(":")[0] for a in addrs] == hosts


def test_max_tasks_per_node():
    from train.ps_cluster import max_tasks_per_node

    assert max_tasks_per_node("2(x3),1") == 2
    assert max_tasks_per_node("4") == 4


# ---------------------------------------------------------------- real clusters
@pytest.mark.slow
def test_one_worker_staleness_is_zero(tmp_path):
    out = run(tmp_path, "--workers", "1", "--ps", "1", "--epochs", "2", "--steps-per-epoch", "20")
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = records(tmp_path)
    st = rec["staleness"]
    assert rec["num_workers"] == 1 and st["n"] == rec["applied_updates"] == 40
    assert st["histogram"] == {"0": 40}
    assert st["mean"] == st["p50"] == st["p95"] == st["max"] == 0


@pytest.mark.slow
def test_two_ps_shards_really_split(tmp_path):
    out = run(tmp_path, "--workers", "1", "--ps", "2", "--epochs", "1", "--steps-per-epoch", "5",
              "--warmup-steps", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = records(tmp_path)
    layout = rec["shard_layout"]
    assert rec["num_ps"] == 2
    assert [p["ps"] for p in layout["per_ps"]] == [0, 1]
    assert all(p["variables"] > 0 and p["bytes"] > 0 for p in layout["per_ps"])
    split = layout["split_variables"]
    assert split, "no variable was partitioned"
    for var in split:  # every partitioned variable has one part on each PS, the parts add up
        assert sorted(s["ps"] for s in var["shards"]) == [0, 1]
    assert rec["trainable_params"] * 4 <= sum(p["bytes"] for p in layout["per_ps"])


@pytest.mark.slow
def test_sigkill_one_of_two_workers_run_finishes(tmp_path):
    run_ = Launcher(tmp_path, "--workers", "2", "--ps", "1", "--epochs", "4", "--steps-per-epoch", "40",
                    "--warmup-steps", "5")
    run_.wait_for_epoch(2)
    victims = [pid for pid, task in cluster_children(run_.proc.pid).items()
               if task == {"type": "worker", "index": 1}]
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    assert run_.proc.wait(timeout=300) == 0, "".join(run_.lines[-40:])
    (rec,) = records(tmp_path)
    assert rec["status"] == "ok" and rec["num_workers"] == 2
    assert rec["workers_lost"] == 1 and rec["workers_alive"] == [True, False]
    assert rec["launcher_exits"] == {"worker:1": -signal.SIGKILL}
    # every scheduled step was applied; a step cut off mid-apply may be retried (counted twice)
    assert rec["scheduled_steps"] == 160 and 160 <= rec["steps"] == rec["applied_updates"] <= 162
    assert rec["staleness"]["n"] >= 159
    assert_no_orphans(run_.proc.pid)


@pytest.mark.slow
def test_two_workers_one_ps_record_and_no_orphans_after_success(tmp_path):
    """One run, two checks: its record (fields, counts, staleness, shard layout), and its cluster processes
    (PS and two workers while it runs, none left after it)."""
    run_ = Launcher(tmp_path, "--workers", "2", "--ps", "1", "--epochs", "3", "--steps-per-epoch", "20",
                    "--warmup-steps", "5")
    run_.wait_for_epoch(1)
    children = cluster_children(run_.proc.pid)
    assert sorted(t["type"] for t in children.values()) == ["ps", "worker", "worker"]
    assert run_.proc.wait(timeout=300) == 0, "".join(run_.lines)[-3000:]
    (rec,) = records(tmp_path)
    assert set(record.REQUIRED_FIELDS) <= set(rec)
    assert rec["mode"] == "async" and rec["status"] == "ok"
    assert rec["num_workers"] == 2 and rec["num_ps"] == 1
    assert rec["global_batch"] == rec["per_worker_batch"] == 32
    assert rec["images_per_sec"] > 0 and rec["measured_steps"] > 0
    assert rec["scheduled_steps"] == 60 and rec["steps"] == rec["applied_updates"] >= 60
    st = rec["staleness"]
    assert st["n"] == rec["applied_updates"]  # one value per applied update
    assert sum(st["histogram"].values()) == st["n"]
    assert {"mean", "p50", "p95", "max"} <= set(st) and st["max"] >= 0
    assert rec["workers_lost"] == 0 and rec["compression_supported"] is False
    layout = rec["shard_layout"]["per_ps"]
    assert [p["ps"] for p in layout] == [0] and layout[0]["bytes"] > 0
    assert rec["cluster_source"] == "local"
    assert_no_orphans(run_.proc.pid)


@pytest.mark.slow
def test_no_orphans_after_sigterm(tmp_path):
    run_ = Launcher(tmp_path, "--workers", "2", "--ps", "1", "--epochs", "50", "--steps-per-epoch", "40")
    run_.wait_for_epoch(1)
    assert len(cluster_children(run_.proc.pid)) == 3
    run_.proc.send_signal(signal.SIGTERM)
    assert run_.proc.wait(timeout=60) == 143
    assert records(tmp_path) == []
    assert_no_orphans(run_.proc.pid)


@pytest.mark.slow
def test_no_orphans_after_launcher_sigkill(tmp_path):
    run_ = Launcher(tmp_path, "--workers", "1", "--ps", "1", "--epochs", "50", "--steps-per-epoch", "40")
    run_.wait_for_epoch(1)
    assert len(cluster_children(run_.proc.pid)) == 2
    run_.proc.kill()  # no handler can run: the children die with it (PR_SET_PDEATHSIG)
    run_.proc.wait(timeout=30)
    assert_no_orphans(run_.proc.pid)


@pytest.mark.slow
def test_digits_two_workers_accuracy(tmp_path):
    """Issue 3: >= 90% held-out top-1 on digits, width 0.25, 2 workers, within 12 epochs.

    At the sync arm's step (lr 0.05, momentum 0.9) two async workers stall here: staleness adds implicit
    momentum; lr 0.02 with a 2-epoch linear warm-up. With Keras's BN momentum (0.99) held-out top-1 sat at
    0.13-0.37 for 7 epochs while training top-1 was 0.89-0.98 (the moving statistics trailed), and one CI
    run stayed at chance for 25 epochs without the warm-up; with BN momentum 0.9 and the warm-up: 0.95 at
    epoch 5, 0.99 at 7 (this machine, 2026-11-28, loaded). 9 epochs are run: reaching it there is within 12.
    """
    out = run(tmp_path, "--dataset", "digits", "--workers", "2", "--ps", "1", "--epochs", "9",
              "--per-worker-batch", "64", "--lr", "0.02", "--momentum", "0.9", "--lr-warmup-epochs", "2",
              timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    (rec,) = records(tmp_path)
    curve = rec["curve"]
    assert len(curve) == 9 and rec["num_workers"] == 2
    first = next((p["epoch"] for p in curve if p["val_top1"] >= 0.90), None)
    assert first is not None, [round(p["val_top1"], 3) for p in curve]
    assert rec["final"]["val_top1"] >= 0.90
    assert rec["staleness"]["n"] == rec["applied_updates"] and rec["staleness"]["max"] >= 1
