import json
import os
import socket
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
    assert "--lr-warmup-epochs" in sync_help and "--lr-warmup-epochs" in async_help  # all three arms
    assert "--comm-delay-ms" not in sync_help and "--comm-delay-ms" in build_parser("async_allreduce").format_help()


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


def test_role_and_copies_replace_tag(tmp_path):
    cfg, _ = parse_config(["--role", "ceiling", "--copies", "2", "--results-dir", str(tmp_path)], arm="sync")
    assert (cfg.role, cfg.copies) == ("ceiling", 2)
    assert cfg.runs_path == record.runs_path(str(tmp_path), "local") == str(tmp_path / "local" / "runs.jsonl")
    rec = record.base_record(cfg, "sync", "r", record.now_iso())
    assert (rec["role"], rec["copies"], rec["study"]) == ("ceiling", 2, "local")
    assert rec["cpu_affinity"] == sorted(os.sched_getaffinity(0)) and rec["host"] == socket.gethostname()
    assert rec["intra_op_threads"] == len(os.sched_getaffinity(0))  # 0 asked: TensorFlow's default
    assert "tag" not in rec and "--tag" not in build_parser("sync").format_help()


@pytest.mark.parametrize("argv, message", [
    (["--role", "bench"], "unknown role 'bench'"),
    (["--copies", "0"], "--copies must be > 0"),
    (["--tag", "role=main"], "unrecognized arguments: --tag"),
])
def test_bad_role_or_copies(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(argv + ["--results-dir", str(tmp_path)], arm="async", prog="t")
    assert exc.value.code == 2 and message in capsys.readouterr().err


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


@pytest.mark.parametrize("mfu", [0.0, 1.0001, 2.5, -0.1])
def test_mfu_outside_0_1_is_refused(mfu, tmp_path):
    with pytest.raises(ValueError, match="mfu"):
        record.append_record(str(tmp_path / "runs.jsonl"), _fake(mfu=mfu))
    assert not (tmp_path / "runs.jsonl").exists()
    record.append_record(str(tmp_path / "runs.jsonl"), _fake(mfu=None))  # not measured: allowed


def test_failed_record_has_the_full_schema(tmp_path):
    rec = record.failed_record(study="s", run_id="f1", started_at=record.now_iso(), error="exit code 1",
                               command=["python", "-m", "train.sync_allreduce", "--x", "a b"], returncode=1,
                               facts={"mode": "sync", "num_workers": 2, "head": "gap", "link": {"rate": None}})
    assert set(record.REQUIRED_FIELDS) <= set(rec) and record.problems(rec) == []
    assert rec["status"] == "failed" and rec["schema_version"] == record.SCHEMA_VERSION
    assert (rec["role"], rec["copies"], rec["host"], rec["study"]) == ("main", 1, socket.gethostname(), "s")
    assert rec["git_sha"] == record.git_state()[0] and rec["versions"]["python"].startswith("3.11")
    assert rec["command"] == "python -m train.sync_allreduce --x 'a b'" and rec["link"] == {"rate": None}
    assert rec["images_per_sec"] is None and rec["mfu"] is None
    path = str(tmp_path / "s" / "runs.jsonl")
    record.append_record(path, rec)
    assert record.read_valid(path) == ([json.loads(json.dumps(rec))], 0)


def test_read_valid_rejects_torn_lines_and_records_lacking_fields(tmp_path):
    path = tmp_path / "hand-made.jsonl"  # not runs.jsonl: the conftest's MFU check skips these on purpose
    record.append_record(str(path), _fake("ok1"))
    bad = [{"mode": "sync"}, {**_fake("x"), "num_workers": 0}, {**_fake("y"), "status": "maybe"},
           {**_fake("z"), "num_workers": "2"}, {**_fake("w"), "role": None}, {**_fake("v"), "mfu": 2.5},
           {**_fake("u"), "num_workers": True}, [1, 2]]
    with open(path, "a") as f:
        for b in bad:
            f.write(json.dumps(b) + "\n")
        f.write('{"run_id": "torn", "mode": ')
    recs, rejected = record.read_valid(str(path))
    assert [r["run_id"] for r in recs] == ["ok1"] and rejected == len(bad) + 1
    assert record.read_valid(str(tmp_path / "none.jsonl")) == ([], 0)


def test_done_run_ids_same_host_same_commit_ok_only(tmp_path):
    path = str(tmp_path / "runs.jsonl")
    here, sha = socket.gethostname(), "a" * 40
    for rid, kw in [("done", {}), ("other-host", {"host": "elsewhere"}), ("other-commit", {"git_sha": "b" * 40}),
                    ("failed", {"status": "failed"})]:
        record.append_record(path, _fake(rid, **{"host": here, "git_sha": sha, **kw}))
    assert record.done_run_ids(path, host=here, git_sha=sha) == {"done"}
    assert record.done_run_ids(str(tmp_path / "none.jsonl"), host=here, git_sha=sha) == set()


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


def test_staircase_rate_reads_a_counter_of_bursts_at_its_rate():
    """A counter sampled 16 times a step: one worker updating every 2 s (5 steps seen), and 48 workers updating
    in phase every 2 s (each step a cluster of 48 seen over half a step). The slope through every sample read the
    one worker 4.0% low (1 - 1/5^2); through the jumps it reads 0.5 and 24 updates a second, the clusters within
    what a sample's lateness (1/16 step) moves."""
    one = [(t / 8, 1 + int(t // 16)) for t in range(5 * 16)]           # jumps at 0, 2, 4, 6, 8 s
    r = record.staircase_rate(one, images_per_update=64)
    assert r["images_per_sec"] == pytest.approx(0.5 * 64, rel=1e-9) and r["windows"] is None
    many = [(t / 8, 48 * (1 + int(t // 16)) - max(0, 47 - 6 * (t % 16))) for t in range(5 * 16)]  # clusters
    assert record.staircase_rate(many, 1)["images_per_sec"] == pytest.approx(24, rel=0.02)
    assert record.staircase_rate(one[:20], 1)["images_per_sec"] is None  # two jumps: no slope with an SE


def test_summarize_staleness_like_values():
    out = record.summarize([0, 0, 1, 3])
    assert out == {"n": 4, "mean": 1.0, "p50": 0.5, "p95": pytest.approx(2.7), "max": 3,
                   "histogram": {"0": 2, "1": 1, "3": 1}}
