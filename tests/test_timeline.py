"""compare/timeline.py on a hand-made Horovod timeline with known phases, and on a real one."""
import json
import sys

import pytest

from compare.timeline import TimelineError, breakdown, step_breakdown
from tests.conftest import BIN, run


def _exchange(pid: int, announce: float, ready: float, start: float, end: float) -> list[dict]:
    """Events of one tensor exchange as Horovod writes them (times in microseconds)."""
    return [{"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": announce, "pid": pid},
            {"ph": "E", "ts": ready, "pid": pid},
            {"ph": "B", "name": "ALLREDUCE", "ts": start, "pid": pid},
            {"ph": "B", "name": "MEMCPY_IN_FUSION_BUFFER", "ts": start, "pid": pid},
            {"ph": "E", "ts": start + 10, "pid": pid},
            {"ph": "B", "name": "GLOO_ALLREDUCE", "ts": start + 10, "pid": pid},
            {"ph": "E", "ts": end, "pid": pid},
            {"ph": "E", "ts": end, "pid": pid}]


def hand_made(steps: int = 5) -> list[dict]:
    """Every step lasts 1000 us: tensor 1 announced at +400 (ready at +450, reduced 460-560),
    tensor 2 announced at +700, ready on every rank at +800, reduced 810-900 (fused: no).
    A BN-statistics average (pid 3) happens once and must not count as a gradient."""
    events = [{"name": "process_name", "ph": "M", "pid": p, "args": {"name": f"t{p}"}} for p in (1, 2, 3)]
    for k in range(steps):
        t0 = 1000.0 * k
        events += _exchange(1, t0 + 400, t0 + 450, t0 + 460, t0 + 560)
        events += _exchange(2, t0 + 700, t0 + 800, t0 + 810, t0 + 900)
    events += _exchange(3, 99_000, 99_010, 99_020, 99_030)
    return events


def test_phases_of_a_hand_made_timeline():
    b = step_breakdown(hand_made(), skip_steps=1)
    assert b["steps"] == 4 and b["tensors_per_step"] == 2
    assert b["step_s"] == pytest.approx(1000e-6)
    assert b["before_comm"] == pytest.approx(500e-6)  # previous end +900 -> this step's first announce +400
    assert b["backward"] == pytest.approx(300e-6)  # +400 -> +700
    assert b["wait_other"] == pytest.approx(100e-6)  # +700 -> +800
    assert b["exposed_comm"] == pytest.approx(100e-6)  # +800 -> +900
    assert b["allreduce_busy"] == pytest.approx((90 + 80) * 1e-6)
    assert b["memcpy_busy"] == pytest.approx(20e-6)
    assert b["start_latency"] == pytest.approx(10e-6)
    assert b["messages"] == 2
    # The four phases tile the step.
    assert sum(b[k] for k in ("before_comm", "backward", "wait_other", "exposed_comm")) == pytest.approx(b["step_s"])


def test_a_killed_run_leaves_an_open_array_that_still_reads(tmp_path):
    text = "[\n" + ",\n".join(json.dumps(e) for e in hand_made()) + ","
    path = tmp_path / "open.json"
    path.write_text(text)
    assert breakdown(str(path), skip_steps=1)["steps"] == 4


def test_not_a_timeline_is_refused(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    with pytest.raises(TimelineError):
        breakdown(str(path))
    with pytest.raises(TimelineError):
        step_breakdown(hand_made(steps=2), skip_steps=2)


@pytest.mark.slow
def test_real_two_rank_timeline_tiles_its_steps(tmp_path):
    """horovodrun np=2 (Gloo) with HOROVOD_TIMELINE: every gradient tensor once per step, phases >= 0."""
    timeline = tmp_path / "timeline.json"
    cmd = [str(BIN / "horovodrun"), "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, "-m",
           "train.sync_allreduce", "--width", "0.25", "--per-worker-batch", "16", "--steps-per-epoch", "8",
           "--warmup-steps", "2", "--intra-op-threads", "1", "--results-dir", str(tmp_path), "--study", "t"]
    proc = run(cmd, HOROVOD_TIMELINE=str(timeline))
    assert proc.returncode == 0, proc.stderr[-3000:]
    b = breakdown(str(timeline))
    # cnn11: 11 convs + BN (gamma, beta) + the dense head's kernel and bias = 35 gradient tensors.
    assert b["tensors_per_step"] == 35 and b["steps"] == 8 - 2
    assert all(b[k] >= 0 for k in ("before_comm", "backward", "wait_other", "exposed_comm", "allreduce_busy"))
    assert 1 <= b["messages"] <= 35
