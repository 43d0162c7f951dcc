import json
import os
import subprocess
import sys

import pytest

from train import record
from train.config import ConfigError, RunConfig, build_parser, parse_config


def test_defaults_shown_and_arms_get_their_own_flags():
    sync_help = build_parser("sync").format_help()
    async_help = build_parser("async").format_help()
    assert "(default: 64)" in sync_help and "--per-worker-batch" in sync_help
    assert "--workers" not in sync_help and "--workers" in async_help
    assert "--lr-warmup-epochs" in sync_help and "--lr-warmup-epochs" not in async_help


def test_parse_round_trip(tmp_path):
    cfg, _ = parse_config(["--dataset", "digits", "--per-worker-batch", "32", "--width", "0.5",
                           "--results-dir", str(tmp_path)], arm="sync")
    assert cfg == RunConfig(dataset="digits", per_worker_batch=32, width=0.5, results_dir=str(tmp_path))
    with pytest.raises(Exception):
        cfg.per_worker_batch = 1  # frozen


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["positional"], "unrecognized arguments: positional"),
    (["--per-worker-batch", "0"], "--per-worker-batch must be > 0"),
    (["--per-worker-batch", "x"], "invalid int value"),
    (["--image-size", "16"], "--image-size must be >= 32"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--head", "mlp"], "unknown head 'mlp'"),
    (["--compression", "int8"], "unknown compression 'int8'"),
    (["--dataset", "imagenet2012"], "imagenet2012 needs --manual-dir"),
    (["--dataset", "folder:/nonexistent"], "dataset folder not found"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv + ["--results-dir", str(tmp_path)], arm="sync", prog="t")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_unwritable_results_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="not writable"):
        RunConfig(results_dir=str(blocker / "sub")).validate()


def _fake(run_id="r1", **kw):
    cfg = RunConfig()
    rec = record.base_record(cfg, "sync", run_id, record.now_iso())
    rec.update({"num_workers": 2, "num_ps": 0, "global_batch": 128, "steps": 10, "warmup_steps": 2,
                "images_per_sec": 1.5, "images_per_sec_se": 0.1, "step_time_s": {"p50": 1, "p95": 2},
                "train_gflop_per_img": 1.6, "achieved_gflops": 2.4, "mfu": 0.1})
    rec.update(kw)
    return rec


def test_record_schema_round_trip(tmp_path):
    path = tmp_path / "s" / "runs.jsonl"
    rec = _fake()
    record.append_record(str(path), rec)
    back, bad = record.read_records(str(path))
    assert bad == [] and back == [json.loads(json.dumps(rec))]
    assert set(record.REQUIRED_FIELDS) <= set(back[0])
    assert back[0]["versions"]["python"].startswith("3.11")
    assert back[0]["config"]["per_worker_batch"] == 64


def test_record_missing_field_is_refused_and_nothing_written(tmp_path):
    rec = _fake()
    del rec["images_per_sec"]
    with pytest.raises(ValueError, match="images_per_sec"):
        record.append_record(str(tmp_path / "runs.jsonl"), rec)
    assert not (tmp_path / "runs.jsonl").exists()


def test_concurrent_appends_stay_whole_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    code = ("import sys; from tests.test_config_record import _fake; from train import record\n"
            "for i in range(100): record.append_record(sys.argv[1], _fake(run_id=f'{sys.argv[2]}-{i}', pad='x'*5000))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), tag],
                              cwd=os.path.dirname(os.path.dirname(__file__))) for tag in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    recs, bad = record.read_records(str(path))
    assert bad == [] and len(recs) == 200
    assert len({r["run_id"] for r in recs}) == 200


def test_torn_last_line_is_reported_and_the_rest_used(tmp_path):
    path = tmp_path / "runs.jsonl"
    record.append_record(str(path), _fake())
    with open(path, "a") as f:
        f.write('{"run_id": "torn", "mode": ')
    recs, bad = record.read_records(str(path))
    assert [r["run_id"] for r in recs] == ["r1"] and bad == [2]


def test_throughput_from_iteration_samples():
    # 2 epochs, each 11 samples 0.5 s apart, 1 step per sample, 64 images/step -> 128 img/s exactly.
    segs = [[(e * 100 + 0.5 * i, e * 50 + i) for i in range(11)] for e in range(2)]
    out = record.throughput(segs, images_per_step=64, windows=4)
    assert out["images_per_sec"] == pytest.approx(128.0)
    assert out["images_per_sec_se"] == pytest.approx(0.0)
    assert out["windows"] == 4 and out["measured_steps"] == 20
    assert out["step_time_s"]["p50"] == pytest.approx(0.5)
    # The time between epochs (evaluation) never enters a window.
    assert record.throughput([segs[0][:1], segs[1]], 64)["measured_steps"] == 10


def test_summarize_staleness_like_values():
    out = record.summarize([0, 0, 1, 3])
    assert out == {"n": 4, "mean": 1.0, "p50": 0.5, "p95": pytest.approx(2.7), "max": 3,
                   "histogram": {"0": 2, "1": 1, "3": 1}}
