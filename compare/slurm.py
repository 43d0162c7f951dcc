"""Backend `slurm`: a study on a real SLURM cluster. No TensorFlow.

The jobs write their own records into results/<study>/runs.jsonl (slurm/sync.sbatch, slurm/async.sbatch,
slurm/async_allreduce.sbatch);
the sweep's report job records the jobs that failed (slurm/sweep_status.py, through train.record) and runs
`compare report`. This backend builds the one submission command line from the study config:

    slurm/sweep.sh --study S --results-dir R --gpus 1,2,... --trainers sync,async,async_allreduce [--cpu] -- TRAINER FLAGS

The report treats the collected records like any other study: no allreduce bench in the study, no
model prediction.
"""
from __future__ import annotations

import os

from compare.local import ROOT
from compare.plan import StudyConfig


def trainer_common_flags(cfg: StudyConfig) -> list[str]:
    """Flags every job of the sweep passes to its trainer (the layout flags come from sweep.sh)."""
    return ["--dataset", cfg.dataset, "--width", str(cfg.width), "--image-size", str(cfg.image_sizes[0]),
            "--epochs", str(cfg.epochs), "--steps-per-epoch", str(cfg.steps_per_epoch),
            "--warmup-steps", str(cfg.warmup_steps)] + (["--lr", repr(cfg.lr)] if cfg.lr else [])


def submit_command(cfg: StudyConfig, cpu: bool, extra: list[str] | None = None) -> list[str]:
    argv = [os.path.join(ROOT, "slurm", "sweep.sh"), "--study", cfg.study,
            "--results-dir", os.path.abspath(cfg.results_dir), "--gpus", ",".join(map(str, cfg.workers)),
            "--trainers", ",".join(cfg.modes)]
    return argv + (["--cpu"] if cpu else []) + list(extra or []) + ["--", *trainer_common_flags(cfg)]
