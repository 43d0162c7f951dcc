"""The run record: one JSON line per run, appended atomically by one writer. No TensorFlow import here."""
from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import json
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys

SCHEMA_VERSION = 2
REQUIRED_FIELDS = (
    "schema_version", "run_id", "started_at", "status", "mode", "model", "head", "dataset", "image_size",
    "num_workers", "num_ps", "per_worker_batch", "global_batch", "steps", "warmup_steps",
    "images_per_sec", "images_per_sec_se", "step_time_s", "train_gflop_per_img", "achieved_gflops",
    "mfu", "compression", "versions", "hosts", "slurm_job_id", "git_sha", "git_dirty", "config",
    "study", "role", "copies", "cpu_affinity", "intra_op_threads", "host",
)
STATUSES = ("ok", "failed")
ROLES = ("main", "ceiling", "bench")  # main: the study's runs; ceiling: independent 1-worker copies side by side

# The basic type of every required field; None is allowed except for the fields in NOT_NULL.
_NUM = (int, float)
FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "schema_version": int, "run_id": str, "started_at": str, "status": str, "mode": str, "model": str,
    "head": str, "dataset": str, "image_size": int, "num_workers": int, "num_ps": int,
    "per_worker_batch": int, "global_batch": int, "steps": int, "warmup_steps": int,
    "images_per_sec": _NUM, "images_per_sec_se": _NUM, "step_time_s": dict, "train_gflop_per_img": _NUM,
    "achieved_gflops": _NUM, "mfu": _NUM, "compression": str, "versions": dict, "hosts": list,
    "slurm_job_id": str, "git_sha": str, "git_dirty": bool, "config": dict, "study": str, "role": str,
    "copies": int, "cpu_affinity": list, "intra_op_threads": int, "host": str,
}
NOT_NULL = ("schema_version", "run_id", "started_at", "status", "mode", "num_workers", "study", "role",
            "copies", "host")


def runs_path(results_dir: str, study: str) -> str:
    """results/<study>/runs.jsonl: the one place this path is built."""
    return os.path.join(results_dir, study, "runs.jsonl")


def cpu_affinity() -> list[int]:
    """The cores this process may run on (its affinity mask), sorted."""
    return sorted(os.sched_getaffinity(0))


def effective_intra_op_threads(requested: int) -> int:
    """Intra-op threads TensorFlow uses: the requested number, or (0) its default, one per schedulable core."""
    return requested if requested > 0 else len(os.sched_getaffinity(0))


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def default_run_id() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    return job if job else _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + f"{os.getpid()}"


def git_state() -> tuple[str | None, bool | None]:
    """(commit sha, dirty flag) of the checkout this code runs from; (None, None) outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
        return sha, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("tensorflow", "horovod"):
        mod = sys.modules.get(name)
        out[name] = getattr(mod, "__version__", None) if mod else None
    return out


def throughput(segments: list[list[tuple[float, int]]], images_per_step: int, windows: int = 5) -> dict:
    """images/sec from segments of (wall time, optimizer iterations) samples taken after warm-up.

    A segment is a stretch of uninterrupted training (one epoch: evaluation between epochs is not
    training). The segments are cut into about `windows` windows in all; each window's rate is
    Δiterations × images_per_step / Δt. Returns the mean and standard error over windows, and step times.
    """
    segments = [s for s in segments if len(s) >= 2]
    total = sum(len(s) - 1 for s in segments)
    rates, step_times, steps = [], [], 0
    for seg in segments:
        n = len(seg) - 1
        w = max(1, min(n, round(windows * n / total)))
        bounds = [round(i * n / w) for i in range(w + 1)]
        for a, b in zip(bounds, bounds[1:]):
            (t0, i0), (t1, i1) = seg[a], seg[b]
            if t1 > t0 and i1 > i0:
                rates.append((i1 - i0) * images_per_step / (t1 - t0))
        step_times += [(t1 - t0) / (i1 - i0) for (t0, i0), (t1, i1) in zip(seg, seg[1:]) if i1 > i0]
        steps += seg[-1][1] - seg[0][1]
    step_times.sort()
    return {"images_per_sec": statistics.fmean(rates) if rates else None,
            "images_per_sec_se": statistics.stdev(rates) / len(rates) ** 0.5 if len(rates) > 1 else None,
            "windows": len(rates), "measured_steps": steps,
            "step_time_s": {"p50": _quantile(step_times, 0.5), "p95": _quantile(step_times, 0.95)}}


def staircase_rate(samples: list[tuple[float, int]], images_per_update: int) -> dict:
    """images/sec as the least-squares slope through the counter's jumps: of (time, update count) samples, the
    first and each one whose count differs from the sample before it (the moment a jump was seen), and the
    slope's SE; no window rates are averaged (windows None). For counters that rise in bursts (a PS's update
    counter sampled on a timer, sub-batches applied several at a time). A slope through every timer sample
    reads a staircase low: over n equal steps sampled evenly it gives (1 - 1/n^2) of the rate (-4.0% for the
    5 steps of a 6-update dilated PS run at p = 1, found 2026-12-06 as a 168 ms 'cost' per update that did not
    change with D); the jumps lie on the line itself, each seen at most one sampling interval late."""
    jumps = [s for k, s in enumerate(samples) if k == 0 or s[1] != samples[k - 1][1]]
    if len(jumps) < 3 or jumps[-1][0] <= jumps[0][0]:
        return {"images_per_sec": None, "images_per_sec_se": None, "windows": None}
    xs, ys = [t for t, _ in jumps], [float(n) for _, n in jumps]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    resid = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys))
    se = (resid / (len(xs) - 2) / sxx) ** 0.5
    return {"images_per_sec": slope * images_per_update, "images_per_sec_se": se * images_per_update, "windows": None}


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(values: list[float], bins: int | None = None) -> dict:
    """mean, p50, p95, max (and an integer histogram) of a list of numbers."""
    ordered = sorted(values)
    out = {"n": len(ordered), "mean": statistics.fmean(ordered) if ordered else None,
           "p50": _quantile(ordered, 0.5), "p95": _quantile(ordered, 0.95),
           "max": ordered[-1] if ordered else None}
    if bins is not None or all(float(v).is_integer() for v in ordered):
        hist: dict[str, int] = {}
        for v in ordered:
            hist[str(int(v))] = hist.get(str(int(v)), 0) + 1
        out["histogram"] = hist
    return out


def link_info(env=None) -> dict:
    """The interconnect this task ran over, from slurm.localcluster's TaskProlog (None elsewhere)."""
    env = os.environ if env is None else env
    delay, nodes = env.get("LOCALCLUSTER_DELAY_MS"), env.get("LOCALCLUSTER_NODES")
    try:
        delay = float(delay) if delay not in (None, "") else None
        nodes = int(nodes) if nodes not in (None, "") else None
    except ValueError:
        pass
    return {"rate": env.get("LOCALCLUSTER_LINK"), "delay_ms": delay, "nodes": nodes,
            "tcp_congestion_control": env.get("LOCALCLUSTER_TCP_CC") or None}


def base_record(cfg, mode: str, run_id: str, started_at: str) -> dict:
    """The fields every record shares, from the config and the environment."""
    sha, dirty = git_state()
    return {
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "started_at": started_at, "status": "ok",
        "mode": mode, "model": "cnn11", "head": cfg.head, "width": cfg.width, "dataset": cfg.dataset,
        "image_size": cfg.image_size, "per_worker_batch": cfg.per_worker_batch,
        "compression": cfg.compression, "precision": cfg.precision,
        "study": cfg.study, "role": cfg.role, "copies": cfg.copies, "cpu_affinity": cpu_affinity(),
        "intra_op_threads": effective_intra_op_threads(cfg.intra_op_threads),
        "versions": versions(), "host": socket.gethostname(), "hosts": [socket.gethostname()],
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "git_sha": sha, "git_dirty": dirty,
        "config": dataclasses.asdict(cfg), "finished_at": None, "link": link_info(),
    }


def failed_record(*, study: str, run_id: str, started_at: str, error: str, command: str | list[str],
                  returncode: int | None, facts: dict) -> dict:
    """A full-schema record of a run that did not finish: every backend's failures go through this.

    The writer's git state, versions and host are filled here; every other required field comes from
    `facts` (what the launcher knew: mode, num_workers, head, ...) or is None. role and copies default
    to the trainer's own defaults (main, 1).
    """
    sha, dirty = git_state()
    rec: dict = {k: None for k in REQUIRED_FIELDS}
    rec.update({"role": "main", "copies": 1})
    rec.update(facts)
    rec.update({
        "schema_version": SCHEMA_VERSION, "run_id": run_id, "started_at": started_at, "status": "failed",
        "study": study, "error": error, "returncode": returncode,
        "command": command if isinstance(command, str) else shlex.join(command),
        "git_sha": sha, "git_dirty": dirty, "versions": versions(), "host": socket.gethostname(),
        "finished_at": now_iso(),
    })
    if rec["hosts"] is None:
        rec["hosts"] = [rec["host"]]
    return rec


def problems(rec: object) -> list[str]:
    """What makes `rec` not a valid record (empty: valid): missing fields, wrong basic types, bad values."""
    if not isinstance(rec, dict):
        return ["not a JSON object"]
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if missing:
        return [f"lacks fields: {', '.join(missing)}"]
    out = []
    for name, kind in FIELD_TYPES.items():
        value = rec[name]
        if value is None:
            if name in NOT_NULL:
                out.append(f"{name} is null")
        elif isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            out.append(f"{name} has type {type(value).__name__}")
    if out:
        return out
    if rec["status"] not in STATUSES:
        out.append(f"status {rec['status']!r} not in {STATUSES}")
    if rec["role"] not in ROLES:
        out.append(f"role {rec['role']!r} not in {ROLES}")
    for name in ("num_workers", "copies"):
        if rec[name] < 1:
            out.append(f"{name} must be >= 1, got {rec[name]}")
    if rec["mfu"] is not None and not 0 < rec["mfu"] <= 1:  # achieved above peak: the peak is wrong
        out.append(f"mfu {rec['mfu']} outside (0, 1] (peak {rec.get('peak_gflops_per_worker')} GFLOP/s "
                   f"per worker from: {rec.get('peak_source')})")
    return out


def append_record(path: str, record: dict) -> None:
    """Append one JSON line as a single write under an exclusive lock; never leaves a partial line.

    The only writer of run records: a record `read_valid` would reject is refused (ValueError).
    """
    bad = problems(record)
    if bad:
        raise ValueError(f"record {record.get('run_id')!r} {'; '.join(bad)}")
    append_json_line(path, record)


def append_json_line(path: str, obj: dict) -> None:
    """One JSON line, one write, under an exclusive lock (safe with concurrent writers)."""
    line = (json.dumps(obj, sort_keys=True, allow_nan=False) + "\n").encode()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            written = os.write(fd, line)
            if written != len(line):  # a short write: cut back so the file holds whole lines only
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - written)
                raise OSError(f"short write to {path}")
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def read_valid(path: str) -> tuple[list[dict], int]:
    """The valid records of a runs.jsonl (see `problems`) and how many lines were rejected
    (torn or unparsable lines plus records lacking fields or with wrong types). No file: ([], 0)."""
    if not os.path.exists(path):
        return [], 0
    recs, torn = read_records(path)
    valid = [r for r in recs if not problems(r)]
    return valid, len(torn) + len(recs) - len(valid)


def done_run_ids(path: str, *, host: str, git_sha: str) -> set[str]:
    """run_ids of the valid status-"ok" records made on `host` at commit `git_sha`: "already done"."""
    return {r["run_id"] for r in read_valid(path)[0]
            if r["status"] == "ok" and r["host"] == host and r["git_sha"] == git_sha}


def read_records(path: str) -> tuple[list[dict], list[int]]:
    """All intact records of a runs.jsonl and the line numbers of torn/invalid lines."""
    records, bad = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError
                records.append(rec)
            except ValueError:
                bad.append(n)
    return records, bad
