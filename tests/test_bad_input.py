"""The bad-input catalogue: every entry point, each case one line on stderr, exit 2, nothing written."""
import runpy
import sys

import pytest

from tests.conftest import run

PY = sys.executable
BAD_TF_CONFIG = '{"cluster": '
NO_CHIEF_TF_CONFIG = '{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}'

# (id, command with {R} = results dir and {F} = a regular file, extra env, words the error must hold)
CASES = [
    ("sync-unknown-dataset", [PY, "-m", "train.sync_allreduce", "--dataset", "cifar"], {}, "unknown dataset"),
    ("sync-negative-batch", [PY, "-m", "train.sync_allreduce", "--per-worker-batch", "-3"], {}, "--per-worker-batch"),
    ("sync-not-a-number", [PY, "-m", "train.sync_allreduce", "--epochs", "two"], {}, "invalid int value"),
    ("sync-small-image", [PY, "-m", "train.sync_allreduce", "--image-size", "8"], {}, "--image-size must be >= 32"),
    ("sync-unknown-head", [PY, "-m", "train.sync_allreduce", "--head", "vgg"], {}, "unknown head"),
    ("sync-unknown-flag", [PY, "-m", "train.sync_allreduce", "--gpus", "4"], {}, "unrecognized arguments"),
    ("sync-imagenet-no-manual-dir", [PY, "-m", "train.sync_allreduce", "--dataset", "imagenet2012"], {},
     "imagenet2012 needs --manual-dir"),
    ("sync-imagenet-empty-manual-dir", [PY, "-m", "train.sync_allreduce", "--dataset", "imagenet2012",
                                        "--manual-dir", "{R}/../"], {}, "has no ILSVRC2012_img_train.tar"),
    ("sync-bad-compression-rank", [PY, "-m", "train.sync_allreduce", "--compression", "powersgd:0"], {},
     "powersgd:R needs an integer rank"),
    ("sync-missing-folder", [PY, "-m", "train.sync_allreduce", "--dataset", "folder:/no/such/dir"], {},
     "dataset folder not found"),
    ("sync-results-under-a-file", [PY, "-m", "train.sync_allreduce", "--results-dir", "{F}/sub"], {},
     "results dir is not writable"),
    ("sync-checkpoint-dir-unwritable", [PY, "-m", "train.sync_allreduce", "--checkpoint-dir", "{F}/ck"], {},
     "not writable"),
    ("sync-unknown-role", [PY, "-m", "train.sync_allreduce", "--role", "bench"], {}, "unknown role 'bench'"),
    ("async-zero-copies", [PY, "-m", "train.async_ps", "--copies", "0"], {}, "--copies must be > 0"),
    ("async-zero-ps", [PY, "-m", "train.async_ps", "--ps", "0"], {}, "--ps must be > 0"),
    ("async-zero-workers", [PY, "-m", "train.async_ps", "--workers", "0"], {}, "--workers must be > 0"),
    ("async-malformed-tf-config", [PY, "-m", "train.async_ps"], {"TF_CONFIG": BAD_TF_CONFIG}, "malformed TF_CONFIG"),
    ("async-tf-config-without-chief", [PY, "-m", "train.async_ps"], {"TF_CONFIG": NO_CHIEF_TF_CONFIG},
     "malformed TF_CONFIG"),
    ("evaluate-missing-checkpoint", [PY, "-m", "train.evaluate", "/no/such/ckpt"], {}, "no complete checkpoint"),
    ("compare-report-no-runs", [PY, "-m", "compare", "report", "--study", "none"], {}, "no runs file"),
    ("compare-report-unknown-profile", [PY, "-m", "compare", "report", "--profiles", "dgx"], {}, "unknown value 'dgx'"),
    ("compare-run-zero-workers", [PY, "-m", "compare", "run", "--workers", "1,0"], {}, "must be >= 1"),
    ("localcluster-zero-nodes", [PY, "slurm/localcluster.py", "up", "--nodes", "0"], {}, "--nodes must be >= 1"),
    ("sweep-zero-gpus-per-node", ["bash", "slurm/sweep.sh", "--dry-run", "--gpus-per-node", "0"], {},
     "--gpus-per-node must be a positive integer"),
    ("localcluster-bad-congestion-control", [PY, "slurm/localcluster.py", "up", "--nodes", "2",
                                             "--congestion-control", "re no"], {}, "bad --congestion-control"),
    ("localcluster-more-cpus-than-cores", [PY, "slurm/localcluster.py", "up", "--nodes", "2", "--cpus-per-node",
                                           "9999"], {}, "--cpus-per-node must be <="),
    ("sweep-bad-bench-nodes", ["bash", "slurm/sweep.sh", "--dry-run", "--bench-nodes", "3"], {},
     "--bench-nodes must be 1 or 2"),
    ("sweep-bad-gpu-list", ["bash", "slurm/sweep.sh", "--dry-run", "--gpus", "1,x"], {}, "not a positive integer"),
]


def _run_in_process(argv: list[str], env: dict, monkeypatch, capsys) -> tuple[int, str]:
    """`python -m MODULE ARGS` in this process (the module's real __main__ path, TF imported once)."""
    module, args = argv[2], argv[3:]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(sys, "argv", [module, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("cmd, env, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(cmd, env, words, tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    argv = [a.replace("{R}", str(results)).replace("{F}", str(a_file)) for a in cmd]
    python_module = argv[1] == "-m"
    if python_module and not any(a.startswith("--results-dir") for a in argv):
        argv += ["--results-dir", str(results)]
    before = sorted(p.name for p in tmp_path.iterdir())
    if python_module:
        code, err = _run_in_process(argv, env, monkeypatch, capsys)
    else:
        proc = run(argv, timeout=120, **env)
        code, err = proc.returncode, proc.stderr
    assert code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    assert a_file.read_text() == "not a directory\n"


def test_catalogue_spans_every_entry_point():
    assert len(CASES) >= 12
    tools = {c[1][2] if c[1][1] == "-m" else c[1][1] for c in CASES}
    assert {"train.sync_allreduce", "train.async_ps", "train.evaluate", "compare",
            "slurm/localcluster.py", "slurm/sweep.sh"} <= tools
