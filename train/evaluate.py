"""Evaluate one or several checkpoints on a dataset's held-out split; several = an ensemble.

    python -m train.evaluate --dataset digits CKPT [CKPT ...] [--study S] [--logits-dir DIR]

CKPT is a checkpoint dir written by a trainer (--checkpoint-dir; its newest epoch is used) or one
epoch-NNNN dir in it. The ensemble averages the members' softmax, as the seed study's 13.89% top-5
ensemble did. One JSON line per call goes to RESULTS_DIR/STUDY/evaluations.jsonl.
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from train import record
from train.config import ConfigError, RunConfig, _OneLineParser

PROG = "train.evaluate"


def _resolve(path: str) -> str:
    from train import checkpoint

    if os.path.isfile(os.path.join(path, "meta.json")):
        return path
    found = checkpoint.latest(path)
    if not found:
        raise ConfigError(f"no complete checkpoint in {path}")
    return found[1]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per example: is the label among the k highest scores."""
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # ties go to the lower class, as argmax
    return (top == labels[:, None]).any(axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def scores(probs_or_logits: np.ndarray, labels: np.ndarray) -> dict:
    k5 = min(5, probs_or_logits.shape[1])
    top1 = float(topk_correct(probs_or_logits, labels, 1).mean())
    top5 = float(topk_correct(probs_or_logits, labels, k5).mean())
    return {"top1": top1, "top5": top5, "top1_error": 1 - top1, "top5_error": 1 - top5}


def main(argv: list[str] | None = None) -> int:
    ap = _OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint dirs (one = single model, several = ensemble)")
    ap.add_argument("--dataset", default="digits", help="digits | imagenet2012 | folder:PATH")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--manual-dir", default="")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--study", default="local")
    ap.add_argument("--logits-dir", default="", help="also save each member's logits and the labels here (.npz)")
    args = ap.parse_args(argv)
    try:
        paths = [_resolve(p) for p in args.checkpoints]
        metas = [json.load(open(os.path.join(p, "meta.json"))) for p in paths]
        sizes = {(m["image_size"], m["num_classes"]) for m in metas}
        if len(sizes) > 1:
            raise ConfigError(f"members differ in image size / classes: {sorted(sizes)}")
        cfg = RunConfig(dataset=args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
                        image_size=metas[0]["image_size"], results_dir=args.results_dir, study=args.study)
        if args.dataset == "synthetic":
            raise ConfigError("synthetic data has no held-out split to evaluate on")
        cfg.validate()
        if args.batch <= 0:
            raise ConfigError(f"--batch must be > 0, got {args.batch}")
        if args.logits_dir:
            from train.config import check_writable_dir
            check_writable_dir(args.logits_dir, "--logits-dir")
    except (ConfigError, OSError, KeyError, ValueError) as e:
        ap.error(str(e))

    import tensorflow as tf
    from train import checkpoint, data
    from train.model import cnn11

    eval_ds = data.eval_dataset(cfg, batch_size=args.batch)
    if eval_ds is None:
        ap.error(f"dataset {args.dataset} has no held-out split")
    labels = np.concatenate([y.numpy() for _, y in eval_ds])
    members, probs = [], []
    for path, meta in zip(paths, metas):
        model = cnn11((meta["image_size"], meta["image_size"], 3), meta["num_classes"], meta["head"], meta["width"])
        try:  # every weight of the model must come from the checkpoint
            checkpoint.restore(path, tf.train.Checkpoint(model=model)).assert_existing_objects_matched()
        except AssertionError as e:
            ap.error(f"{path} does not fit a cnn11 of {meta}: {str(e).splitlines()[0]}")
        logits = np.concatenate([model(x, training=False).numpy() for x, _ in eval_ds])
        members.append({"checkpoint": os.path.abspath(path), "epoch": meta["epoch"], **scores(logits, labels)})
        probs.append(softmax(logits))
        if args.logits_dir:
            os.makedirs(args.logits_dir, exist_ok=True)
            np.savez(os.path.join(args.logits_dir, f"member{len(members) - 1}.npz"), logits=logits, labels=labels)
    out = {"kind": "evaluation", "run_id": record.default_run_id(), "started_at": record.now_iso(),
           "dataset": args.dataset, "examples": int(len(labels)), "members": members,
           "ensemble": {"size": len(members), "combine": "mean of softmax", **scores(np.mean(probs, axis=0), labels)},
           "versions": record.versions()}
    record.append_json_line(os.path.join(args.results_dir, args.study, "evaluations.jsonl"), out)
    for m in members:
        print(f"{m['checkpoint']}: top-1 error {m['top1_error']:.4f}, top-5 error {m['top5_error']:.4f}")
    e = out["ensemble"]
    print(f"ensemble of {len(members)}: top-1 error {e['top1_error']:.4f}, top-5 error {e['top5_error']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
