"""Shared test helpers: how to run the trainers as real processes, and read what they wrote."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """A test that needs what this machine lacks: skipped here, a failure under CI (which has it all)."""
    if IN_CI:
        pytest.fail(f"must run under CI=true, but: {reason}")
    pytest.skip(reason)


def require_root_and(programs: tuple[str, ...], what: str) -> None:
    """Root and `programs` on PATH, or unavailable()."""
    if os.geteuid() != 0:
        unavailable(f"{what} needs root")
    missing = [p for p in programs if not shutil.which(p)]
    if missing:
        unavailable(f"missing {', '.join(missing)}")


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


def rank_pid(module: str, marker: str, rank: int) -> int | None:
    """pid of the `python -m module` process of Horovod rank `rank` whose command line holds `marker`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranked = f"HOROVOD_RANK={rank}".encode() in env or f"OMPI_COMM_WORLD_RANK={rank}".encode() in env
        if ranked and module.encode() in cmd and marker.encode() in cmd and b"horovodrun" not in b" ".join(cmd):
            return int(pid)
    return None


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


def assert_mfu_in_range(root: Path) -> None:
    """Every record under `root` with an MFU has 0 < MFU <= 1; every ok trainer record has one."""
    import json

    for path in root.rglob("runs.jsonl"):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if not isinstance(rec, dict):
                continue
            mfu = rec.get("mfu")
            where = f"{path} run {rec.get('run_id')}"
            assert mfu is None or 0 < mfu <= 1, f"MFU {mfu} outside (0, 1] in {where}"
            if rec.get("status") == "ok" and rec.get("images_per_sec") and "peak_source" in rec:
                assert mfu is not None, f"ok record without MFU in {where}"


@pytest.fixture(autouse=True)
def _mfu_in_range_on_every_record_written(request):
    """0 < MFU <= 1 on every record a test leaves in its tmp_path (the issue's must-show)."""
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is not None:
        assert_mfu_in_range(root)
