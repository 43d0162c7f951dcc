#!/usr/bin/env python3
"""What became of every job of a sweep: run by slurm/report.sbatch before `compare report`.

    python slurm/sweep_status.py --manifest RESULTS/STUDY/sweeps/T.tsv --study STUDY --results-dir RESULTS

For each job in the manifest (written by slurm/sweep.sh) it asks SLURM for the final state (sacct when
accounting is on, else `scontrol show job`), takes the job's one-line error from its log, and
- appends to runs.jsonl a record with status "failed" (record.failed_record: the state, exit code, error
  line, log path) for every training job that did not end COMPLETED with a record of its own, so the study
  keeps its failures (the bench job's result is allreduce.json: a failed bench is listed, not recorded);
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
TRAINER_ERROR_RE = re.compile(r"^(train|compare)\.\w+: error: ")
NOISE = ("srun:", "slurmstepd", "srun ", "sbatch:")


def job_state(job_id: str, env: dict | None = None) -> tuple[str, str]:
    """(state, exit code 'N:S') of a finished job; ('UNKNOWN', '') when SLURM no longer knows it.

    Asks sacct (accounting), then slurmctld (`scontrol show job`, until MinJobAge purges the job), then
    the job-completion log when the cluster keeps one (JobCompType=jobcomp/filetxt).
    """
    def run(*cmd: str) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return p.stdout if p.returncode == 0 else ""

    lines = run("sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ExitCode").strip().splitlines()
    if lines and "|" in lines[0]:
        state, code = lines[0].split("|", 1)
        return state.split()[0], code
    fields = dict(re.findall(r"\b(JobState|ExitCode)=(\S+)", run("scontrol", "-o", "show", "job", job_id)))
    if "JobState" in fields:
        return fields["JobState"], fields.get("ExitCode", "")
    config = dict(re.findall(r"^(\w+)\s*=\s*(.*?)\s*$", run("scontrol", "show", "config"), re.M))
    if config.get("JobCompType") == "jobcomp/filetxt" and os.path.isfile(config.get("JobCompLoc", "")):
        found = {}
        with open(config["JobCompLoc"], errors="replace") as f:
            for line in f:
                if line.startswith(f"JobId={job_id} "):
                    found = dict(re.findall(r"\b(JobState|ExitCode)=(\S+)", line))
        if "JobState" in found:
            return found["JobState"], found.get("ExitCode", "")
    return "UNKNOWN", ""


def error_line(log: str) -> str:
    """The trainer's (or script's) one-line error from a job log; SLURM's own lines only as a fallback."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    errs = [ln.strip() for ln in lines if ERROR_RE.search(ln)]
    trainer = [ln for ln in errs if TRAINER_ERROR_RE.match(ln)]  # e.g. "train.async_ps: error: --width ..."
    if trainer:
        return trainer[-1]
    own = [ln for ln in errs if not ln.startswith(NOISE)]
    if own:
        return own[-1]
    tb = [ln.strip() for ln in lines if re.match(r"^\w+(Error|Exception)\b", ln.strip())]
    return (tb or errs or [""])[-1]


def failed_record(row: dict, study: str, state: str, code: str, err: str) -> dict:
    exit_code = code.split(":")[0]
    return record.failed_record(
        study=study, run_id=row["job_id"], started_at=record.now_iso(), error=err, command=row["command"],
        returncode=int(exit_code) if exit_code.isdigit() else None,
        facts={"mode": row["trainer"], "model": "cnn11", "num_workers": int(row["gpus"]),
               "num_ps": int(row["num_ps"]), "slurm_job_id": row["job_id"], "slurm_state": state,
               "slurm_exit_code": code, "log": row["log"], "config": {},
               "sweep": {"name": row["name"], "nodes": int(row["nodes"]), "tasks": int(row["tasks"])}})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--study", required=True)
    ap.add_argument("--results-dir", required=True)
    a = ap.parse_args(argv)
    runs = record.runs_path(a.results_dir, a.study)
    bench_out = os.path.join(a.results_dir, a.study, "allreduce.json")
    recs = record.read_records(runs)[0] if os.path.exists(runs) else []
    have = {str(r.get("slurm_job_id")) for r in recs if r.get("status") == "ok"}
    noted = {str(r.get("slurm_job_id")) for r in recs if r.get("status") == "failed"}  # a rerun adds none
    with open(a.manifest, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    table = ["| job | name | trainer | GPUs | nodes | tasks | result | SLURM state | exit | record | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    failed = 0
    for row in rows:
        if row["job_id"] == "none":  # sbatch refused it (e.g. more nodes than the cluster has)
            failed += 1
            table.append(f"| - | {row['name']} | {row['trainer']} | {row['gpus']} | {row['nodes']} | {row['tasks']} "
                         f"| **not submitted** | - | - | no | {row['log'].replace('|', '/')} |")
            continue
        state, code = job_state(row["job_id"])
        bench = row["trainer"] == "bench"  # its result is allreduce.json, not a run record
        ok = state == "COMPLETED" and (os.path.isfile(bench_out) if bench else row["job_id"] in have)
        err = "" if ok else error_line(row["log"])
        if not ok:
            failed += 1
            if state == "COMPLETED":
                err = err or f"completed without writing {'allreduce.json' if bench else 'a record'}"
            if row["job_id"] not in noted and not bench:
                record.append_record(runs, failed_record(row, a.study, state, code, err))
        table.append(f"| {row['job_id']} | {row['name']} | {row['trainer']} | {row['gpus']} | {row['nodes']} "
                     f"| {row['tasks']} | {'ok' if ok else '**failed**'} | {state} | {code} "
                     f"| {'yes' if ok else 'no'} | {err.replace('|', '/')} |")
    out = Path(a.results_dir) / a.study / "sweep-jobs.md"
    out.write_text(f"## SLURM jobs of this sweep ({len(rows)} jobs, {failed} failed or not submitted)\n\n"
                   f"Manifest: `{a.manifest}`\n\n" + "\n".join(table) + "\n")
    print(f"sweep_status: {len(rows)} job(s), {failed} failed -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
