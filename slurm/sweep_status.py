#!/usr/bin/env python3
"""What became of every job of a sweep: run by slurm/report.sbatch before `compare report`.

    python slurm/sweep_status.py --manifest RESULTS/STUDY/sweeps/T.tsv --study STUDY --results-dir RESULTS

For each job in the manifest (written by slurm/sweep.sh) it asks SLURM for the final state (sacct when
accounting is on, else `scontrol show job`), takes the job's one-line error from its log, and
- appends to runs.jsonl a record with status "failed" (and the state, exit code, error line, log path)
  for every job that did not end COMPLETED with a record of its own, so the study keeps its failures;
- writes RESULTS/STUDY/sweep-jobs.md: a table of every job (state, exit code, record yes/no, error).
Exit 0 even when jobs failed: listing them is its job.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train import record  # noqa: E402  (no TensorFlow import)

ERROR_RE = re.compile(r"\berror\b", re.I)
NOISE = ("srun:", "slurmstepd", "srun ", "sbatch:")


def job_state(job_id: str) -> tuple[str, str]:
    """(state, exit code 'N:S') of a finished job; ('UNKNOWN', '') when SLURM no longer knows it."""
    p = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ExitCode"],
                       capture_output=True, text=True)
    line = p.stdout.strip().splitlines()[0] if p.returncode == 0 and p.stdout.strip() else ""
    if line and "|" in line:
        state, code = line.split("|", 1)
        return state.split()[0], code
    p = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    state = re.search(r"\bJobState=(\S+)", p.stdout)
    code = re.search(r"\bExitCode=(\S+)", p.stdout)
    return (state.group(1) if state else "UNKNOWN"), (code.group(1) if code else "")


def error_line(log: str) -> str:
    """The trainer's (or script's) one-line error from a job log; SLURM's own lines only as a fallback."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    errs = [ln.strip() for ln in lines if ERROR_RE.search(ln)]
    own = [ln for ln in errs if not ln.startswith(NOISE)]
    if own:
        return own[-1]
    tb = [ln.strip() for ln in lines if re.match(r"^\w+(Error|Exception)\b", ln.strip())]
    return (tb or errs or [""])[-1]


def failed_record(row: dict, state: str, code: str, err: str) -> dict:
    rec = {k: None for k in record.REQUIRED_FIELDS}
    gpus, nps = int(row["gpus"]), int(row["num_ps"])
    rec.update({
        "schema_version": record.SCHEMA_VERSION, "run_id": row["job_id"], "started_at": record.now_iso(),
        "status": "failed", "mode": row["trainer"], "model": "cnn11", "num_workers": gpus, "num_ps": nps,
        "slurm_job_id": row["job_id"], "slurm_state": state, "slurm_exit_code": code, "error": err,
        "log": row["log"], "hosts": [], "config": {}, "versions": record.versions(),
        "sweep": {"name": row["name"], "nodes": int(row["nodes"]), "tasks": int(row["tasks"])},
    })
    rec["git_sha"], rec["git_dirty"] = record.git_state()
    return rec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--results-dir", required=True)
    a = ap.parse_args(argv)
    runs = os.path.join(a.results_dir, a.study, "runs.jsonl")
    recs = record.read_records(runs)[0] if os.path.exists(runs) else []
    have = {str(r.get("slurm_job_id")) for r in recs if r.get("status") == "ok"}
    noted = {str(r.get("slurm_job_id")) for r in recs if r.get("status") == "failed"}  # a rerun adds none
    with open(a.manifest, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    table = ["| job | name | trainer | GPUs | nodes | tasks | state | exit | record | error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    failed = 0
    for row in rows:
        state, code = job_state(row["job_id"])
        ok = state == "COMPLETED" and row["job_id"] in have
        err = "" if ok else error_line(row["log"])
        if not ok:
            failed += 1
            if state == "COMPLETED":
                err = err or "completed without writing a record"
            if row["job_id"] not in noted:
                record.append_record(runs, failed_record(row, state, code, err))
        table.append(f"| {row['job_id']} | {row['name']} | {row['trainer']} | {row['gpus']} | {row['nodes']} "
                     f"| {row['tasks']} | {state if ok else state + ' (failed)'} | {code} "
                     f"| {'yes' if ok else 'no'} | {err.replace('|', '/')} |")
    out = Path(a.results_dir) / a.study / "sweep-jobs.md"
    out.write_text(f"## SLURM jobs of this sweep ({len(rows)} submitted, {failed} failed)\n\n"
                   f"Manifest: `{a.manifest}`\n\n" + "\n".join(table) + "\n")
    print(f"sweep_status: {len(rows)} job(s), {failed} failed -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
