"""Async arm under failure (issue 7): losing the PS fails fast and clean; a killed run resumes."""
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.test_async_ps import Launcher, assert_no_orphans, cluster_children, records, run
from train import private_net


def _tf_config(pid: int) -> dict:
    env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    return json.loads(env["TF_CONFIG"])

pytestmark = pytest.mark.slow


def test_lost_ps_fails_within_60s_no_record_no_orphans(tmp_path):
    run_ = Launcher(tmp_path, "--workers", "2", "--ps", "1", "--epochs", "50", "--steps-per-epoch", "40")
    run_.wait_for_epoch(1)
    children = cluster_children(run_.proc.pid)
    # Exposure: every task was given loopback addresses only ...
    for pid in children:
        addresses = [a for job in _tf_config(pid)["cluster"].values() for a in job]
        assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses
    # ... and, where a private network namespace can be made, the whole cluster runs in one of its own.
    if private_net.available():
        mine = os.readlink("/proc/self/ns/net")
        spaces = {os.readlink(f"/proc/{pid}/ns/net") for pid in [run_.proc.pid, *children]}
        assert len(spaces) == 1 and mine not in spaces
    elif os.environ.get("CI"):
        pytest.fail("private network namespaces must work in CI (root + unshare)")
    [ps] = [pid for pid, task in children.items() if task["type"] == "ps"]
    os.kill(ps, signal.SIGKILL)
    t0 = time.monotonic()
    code = run_.proc.wait(timeout=90)
    assert time.monotonic() - t0 < 60
    assert code not in (0, None)
    assert records(tmp_path) == []
    errors = [line for line in run_.lines if line.startswith("train.async_ps: error:")]
    assert len(errors) == 1 and "run failed" in errors[0], "".join(run_.lines[-30:])
    assert_no_orphans(run_.proc.pid)


def test_sigkill_then_rerun_resumes_from_last_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    args = ("--workers", "2", "--ps", "1", "--epochs", "5", "--steps-per-epoch", "16", "--warmup-steps", "2",
            "--checkpoint-dir", str(ckpt))
    first = Launcher(tmp_path, *args)
    deadline = time.monotonic() + 300
    while not (ckpt / "epoch-0002" / "meta.json").exists():
        assert first.proc.poll() is None and time.monotonic() < deadline, "".join(first.lines[-30:])
        time.sleep(0.2)
    first.proc.kill()  # the launcher dies hard; its children die with it
    first.proc.wait(timeout=30)
    assert_no_orphans(first.proc.pid)
    assert records(tmp_path) == []
    killed_at = max(int(p.name.split("-")[1]) for p in ckpt.glob("epoch-*"))
    proc = run(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [rec] = records(tmp_path)
    assert rec["resumed_from_epoch"] == killed_at >= 2
    assert rec["scheduled_steps"] == (5 - killed_at) * 16
    # the global step went on from the checkpoint (a retried step may count twice)
    assert 5 * 16 <= rec["steps"] <= 5 * 16 + 2
    assert [p["epoch"] for p in rec["curve"]] == list(range(killed_at + 1, 6))
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch-0004", "epoch-0005"]
