"""Shared test helpers: how to run the trainers as real processes, and read what they wrote."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def child_env(**extra: str) -> dict[str, str]:
    """Environment for trainer subprocesses: quiet TF, root-friendly OpenMPI, the project importable."""
    env = dict(os.environ)
    env.update({
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",  # containers without CMA/ptrace
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        "PATH": str(BIN) + os.pathsep + env.get("PATH", ""),
    })
    env.update(extra)
    return env


def run(cmd: list[str], timeout: float = 600, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, env=child_env(**extra_env), capture_output=True, text=True,
                          timeout=timeout)


def records(results_dir: Path, study: str = "t") -> list[dict]:
    from train.record import read_records

    path = results_dir / study / "runs.jsonl"
    if not path.exists():
        return []
    recs, bad = read_records(str(path))
    assert not bad, f"torn lines {bad} in {path}"
    return recs


@pytest.fixture
def results(tmp_path: Path) -> Path:
    return tmp_path / "results"
