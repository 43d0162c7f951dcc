"""compare/timeline.py on a hand-made Horovod timeline with known phases, and on a real one."""
import json
import sys

import pytest

from compare.timeline import TimelineError, breakdown, load_events, ready_curve, step_breakdown
from tests.conftest import BIN, run


def _exchange(pid: int, announce: float, ready: float, start: float, end: float, args: dict | None = None) -> list[dict]:
    """Events of one tensor exchange as Horovod writes them (times in microseconds); `args` go on the
    ALLREDUCE end event, as Horovod's Timeline::End writes {'dtype', 'shape'}."""
    return [{"ph": "B", "name": "NEGOTIATE_ALLREDUCE", "ts": announce, "pid": pid},
            {"ph": "E", "ts": ready, "pid": pid},
            {"ph": "B", "name": "ALLREDUCE", "ts": start, "pid": pid},
            {"ph": "B", "name": "MEMCPY_IN_FUSION_BUFFER", "ts": start, "pid": pid},
            {"ph": "E", "ts": start + 10, "pid": pid},
            {"ph": "B", "name": "GLOO_ALLREDUCE", "ts": start + 10, "pid": pid},
            {"ph": "E", "ts": end, "pid": pid},
            {"ph": "E", "ts": end, "pid": pid, **({"args": args} if args else {})}]


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


def test_ready_curve_of_a_hand_made_timeline(tmp_path):
    """Three gradients a step (1000 us apart): t1 800 kB announced at +400 (first), t3 100 kB (float16)
    at +700 (last), t2 100 kB in between at +400 + d, d = 270 (warm-up, skipped), 60, 90, 150, 240 us,
    i.e. 0.2, 0.3, 0.5, 0.8 of the 300 us window: median 0.4. Backward window 300 us of the 800 us from
    the previous step's end (+900 of the step before) to the last announce: 0.375."""
    events = [{"name": "process_name", "ph": "M", "pid": p, "args": {"name": f"t{p}"}} for p in (1, 2, 3, 4)]
    f32 = {"dtype": "float32"}
    for k, d in enumerate((270, 60, 90, 150, 240)):
        t0 = 1000.0 * k
        events += _exchange(1, t0 + 400, t0 + 450, t0 + 460, t0 + 560, {**f32, "shape": "[50000, 4]"})
        events += _exchange(2, t0 + 400 + d, t0 + 410 + d, t0 + 420 + d, t0 + 440 + d, {**f32, "shape": "[25000]"})
        events += _exchange(3, t0 + 700, t0 + 800, t0 + 810, t0 + 900, {"dtype": "float16", "shape": "[50000]"})
    events += _exchange(4, 99_000, 99_010, 99_020, 99_030)        # a BN average: once, no args, not a gradient
    r = ready_curve(events, skip_steps=1)
    assert r["grad_bytes"] == 1_000_000 and r["tensors"] == 3 and r["steps"] == 4
    assert [x for pt in r["ready_curve"] for x in pt] == pytest.approx([0.0, 0.8, 0.4, 0.9, 1.0, 1.0])
    assert r["backward_fraction"] == pytest.approx(0.375)
    assert r["wait_other_s"] == pytest.approx(100e-6) and r["exposed_comm_s"] == pytest.approx(100e-6)
    # the form compare.scaling.exposed_comm takes: 12 ms of allreduce behind a 37.5 ms window -> 1.2 ms exposed
    from compare.scaling import exposed_comm
    assert exposed_comm(0.012, 0.0375, r["ready_curve"]) == pytest.approx(0.0012)
    # the old hand-made timeline has no dtype/shape on its end events: refused, not guessed
    with pytest.raises(TimelineError, match="no dtype/shape"):
        ready_curve(hand_made(), skip_steps=1)

    # compare calibrate --timeline: the curve and the timeline's p = 2 terms go into the profile
    from compare.__main__ import main as compare_main
    from tests.test_scaling import _record
    study = tmp_path / "results" / "s"
    study.mkdir(parents=True)
    (study / "runs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in (_record("a", 1, 0.1, 0.2), _record("b", 2, 0.2, 0.3))))
    (study / "allreduce.json").write_text(json.dumps({"np": 2, "alpha_s": 1e-3, "bw_Bps": 1e8}))
    tl = tmp_path / "timeline.json"
    tl.write_text(json.dumps(events))
    assert compare_main(["calibrate", "--results-dir", str(tmp_path / "results"), "--study", "s", "--timeline", str(tl)]) == 0
    prof = json.loads((study / "profile.json").read_text())
    w = prof["workloads"]["gap-s32-b64"]
    # calibrate skips 2 warm-up steps (as breakdown does): t2's median of 0.3, 0.5, 0.8 is 0.5
    assert [x for pt in w["ready_curve"] for x in pt] == pytest.approx([0.0, 0.8, 0.5, 0.9, 1.0, 1.0])
    assert w["backward_fraction"] == pytest.approx(0.375)
    # overhead at p = 2: 0.2 s step - 0.1 s compute - 100 us exposed - 100 us waiting (measured, not modelled)
    assert w["overhead_s"] == pytest.approx(0.0998)
    assert w["check_p2"]["model_exposed_comm_s"] == pytest.approx(0.0012) and w["check_p2"]["model_straggler_s"] == pytest.approx(0.009)
    assert prof["overlap"].startswith("measured") and prof["timeline"]["workloads"] == ["gap-s32-b64"]
    from compare import calibrate
    # p = 2 predicted: 0.1 + straggler 0.009 + overhead 0.0998 + exposed 0.0012 (12 ms allreduce, 37.5 ms window)
    assert calibrate.predict(prof, "gap-s32-b64", 2)["step_s"] == pytest.approx(0.21)
    assert w["check_p2"]["model_step_s"] == pytest.approx(0.21) and w["check_p2"]["measured_step_s"] == pytest.approx(0.2)
    # a timeline of another model (bytes match no workload): one line, exit 2, nothing written
    (study / "profile.json").unlink()
    other = [dict(e, args={"dtype": "float64", "shape": e["args"]["shape"]}) if e.get("args", {}).get("dtype") else e for e in events]
    tl.write_text(json.dumps(other))
    assert compare_main(["calibrate", "--results-dir", str(tmp_path / "results"), "--study", "s", "--timeline", str(tl)]) == 2
    assert not (study / "profile.json").exists()


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
    # the ready curve's bytes (dtype/shape on the ALLREDUCE end events) are the record's gradient bytes
    r = ready_curve(load_events(str(timeline)))
    rec = json.loads((tmp_path / "t" / "runs.jsonl").read_text().splitlines()[-1])
    assert r["grad_bytes"] == rec["gradient_bytes"] and r["tensors"] == 35
    assert r["ready_curve"][-1][1] == 1.0 and all(0 <= x <= 1 for x, _ in r["ready_curve"])
    assert 0 < r["backward_fraction"] <= 1
