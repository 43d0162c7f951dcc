"""train.evaluate: single checkpoints and an ensemble, checked against the members' saved logits."""
import json
import sys

import numpy as np
import pytest

from tests.conftest import records, run


@pytest.mark.slow
def test_ensemble_of_two_independent_digits_models(results, tmp_path):
    members = []
    for seed in (0, 1):  # two independent trainings: different init and shuffles
        ckpt = tmp_path / f"ckpt{seed}"
        proc = run([sys.executable, "-m", "train.sync_allreduce", "--dataset", "digits", "--width", "0.25",
                    "--per-worker-batch", "64", "--epochs", "3", "--steps-per-epoch", "5", "--seed", str(seed), "--study", "t",
                    "--results-dir", str(results), "--checkpoint-dir", str(ckpt)], timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        members.append(ckpt)
    assert len(records(results)) == 2
    logits_dir = tmp_path / "logits"
    proc = run([sys.executable, "-m", "train.evaluate", "--dataset", "digits", *map(str, members),
                "--study", "t", "--results-dir", str(results), "--logits-dir", str(logits_dir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    [ev] = [json.loads(l) for l in (results / "t" / "evaluations.jsonl").read_text().splitlines()]
    saved = [np.load(logits_dir / f"member{i}.npz") for i in range(2)]
    labels = saved[0]["labels"]
    assert ev["examples"] == len(labels) == 450 and np.array_equal(labels, saved[1]["labels"])
    assert not np.allclose(saved[0]["logits"], saved[1]["logits"])  # really two different models

    def softmax(z):
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    for i, member in enumerate(ev["members"]):
        assert member["top1"] == pytest.approx(np.mean(saved[i]["logits"].argmax(1) == labels))
        assert member["epoch"] == 3
    mean_probs = (softmax(saved[0]["logits"]) + softmax(saved[1]["logits"])) / 2
    assert ev["ensemble"]["top1"] == pytest.approx(np.mean(mean_probs.argmax(1) == labels))
    top5 = np.argsort(-mean_probs, axis=1, kind="stable")[:, :5]
    assert ev["ensemble"]["top5_error"] == pytest.approx(1 - np.mean((top5 == labels[:, None]).any(1)))


@pytest.mark.parametrize("args, message", [
    (["/no/such/ckpt"], "no complete checkpoint in /no/such/ckpt"),
    (["--dataset", "synthetic", "/tmp"], "no complete checkpoint"),
    ([], "the following arguments are required: checkpoints"),
])
def test_bad_input(args, message, results):
    proc = run([sys.executable, "-m", "train.evaluate", "--results-dir", str(results), *args], timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not results.exists()
