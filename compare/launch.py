"""The one loop of every study: start a run, log it, time it out, kill its process group, record a
failure (train.record.failed_record), and sample the host's load into results/<study>/load.jsonl while
the study runs. Backends (compare/local.py, compare/emulated.py) only build the command lines and bring
their cluster up and down. No TensorFlow.

Honest by construction:
- "already done" = a status-ok record of the same run id made on the same host at the same commit
  (train.record.done_run_ids); records of another host or commit are moved aside to previous/ first, so
  a study holds one commit's runs;
- a study under results/reference/ refuses to run on a dirty checkout (git_dirty would be recorded).
"""
from __future__ import annotations

import glob
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

from compare.hostload import Sampler, load_path, wait_quiet
from compare.plan import Run, StudyConfig, as_dict, cores_available, plan
from train import record


class LaunchError(RuntimeError):
    """A study that must not start (dirty reference study, no root for the emulated cluster): one line, exit 2."""


def _tail(text: str, lines: int = 6, chars: int = 1500) -> str:
    keep = [ln for ln in text.strip().splitlines() if ln.strip() and "WARNING" not in ln][-lines:]
    return "\n".join(keep)[-chars:]


def _kill_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the run's process group (the PS launcher tears its cluster down on SIGTERM), SIGKILL
    what is left after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _ensure_newline(path: str) -> None:
    """A torn last line (a crash mid-write elsewhere) must not swallow the next record."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def start(argv: list[str], log_path: str, env: dict, cwd: str) -> tuple[subprocess.Popen, object]:
    log = open(log_path, "w", encoding="utf-8")
    log.write("$ " + shlex.join(argv) + "\n")
    log.flush()
    try:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True), log
    except OSError as e:
        log.write(f"cannot start: {e}\n")
        log.close()
        raise


def _write_json(path: str, obj: dict) -> None:
    """Written whole or not at all: a temp file, then one rename."""
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(path + ".tmp", path)


def wait_all(procs: list, deadline: float, on_timeout) -> list[int | None]:
    """Wait for every process until `deadline` (monotonic); kill the groups of the late ones (None)."""
    codes = []
    try:
        for key, proc, log in procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                proc.wait()
                on_timeout(key)
                codes.append(None)
            log.close()
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): leave no run of ours behind
        for key, proc, log in procs:
            if proc.poll() is None:
                _kill_group(proc)
                on_timeout(key)
            log.close()
        raise
    return codes


class Study:
    """One study being run: its config, backend, commit, and the ids already done."""

    def __init__(self, cfg: StudyConfig, backend, command: str) -> None:
        self.cfg, self.backend, self.command = cfg, backend, command
        self.sha, self.dirty = record.git_state()
        self.log_dir = os.path.join(cfg.study_dir, "logs")
        self.root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def done(self) -> set[str]:
        out: set[str] = set()
        for host in self.backend.hosts():
            out |= record.done_run_ids(self.cfg.runs_path, host=host, git_sha=self.sha or "")
        return out

    def prepare(self) -> None:
        """Refuse a dirty reference study; move another host's or commit's results aside; write study.json."""
        cfg = self.cfg
        if cfg.is_reference and (self.dirty or not self.sha):
            raise LaunchError(f"{cfg.study_dir} is a reference study: commit first (the checkout is "
                              f"{'dirty' if self.dirty else 'not a git checkout'})")
        recs, _ = record.read_valid(cfg.runs_path)
        hosts = self.backend.hosts()
        foreign = [r for r in recs if r["git_sha"] != self.sha or r["host"] not in hosts]
        if foreign:
            if cfg.is_reference:
                raise LaunchError(f"{cfg.runs_path} holds runs of another commit or host: a reference study "
                                  "runs on one commit; remove the study dir to re-run it")
            self._archive()
        os.makedirs(self.log_dir, exist_ok=True)
        info = {"study": cfg.study, "cluster": self.backend.name, "config": as_dict(cfg), "command": self.command,
                "started_at": record.now_iso(), "host": platform.node(), "cores": cores_available(),
                "cpu": cpu_model(), "python": platform.python_version(), "platform": platform.platform(),
                "git_sha": self.sha, "git_dirty": self.dirty}
        _write_json(os.path.join(cfg.study_dir, "study.json"), info)

    def _archive(self) -> None:
        """Move the study's results of another commit/host to previous/<time>/ (kept, not mixed in)."""
        d = self.cfg.study_dir
        dest = os.path.join(d, "previous", time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
        os.makedirs(dest, exist_ok=True)
        for path in [self.cfg.runs_path, load_path(d), os.path.join(d, "allreduce.json"), self.log_dir,
                     *glob.glob(os.path.join(d, "linkbench-*.json"))]:
            if os.path.exists(path):
                shutil.move(path, os.path.join(dest, os.path.basename(path)))

    def run_bench(self, argv: list[str], out: str) -> dict:
        name = os.path.splitext(os.path.basename(out))[0]
        # a bench measures the link, not what the previous run left on the CPUs (a 48-rank job takes a while to
        # exit: a bench right after one reached 63% of its link, 2026-11-29)
        quiet = wait_quiet()
        try:
            proc, log = start(argv, os.path.join(self.log_dir, f"{name}.log"), self.backend.env(self.cfg), self.root)
        except OSError as e:
            return {"status": "failed", "error": f"cannot start {argv[0]}: {e.strerror}"}
        [code] = wait_all([(name, proc, log)], time.monotonic() + self.cfg.timeout, lambda key: None)
        if code == 0 and os.path.exists(out):
            with open(out, encoding="utf-8") as f:
                res = json.load(f)
            res["host_before"] = quiet  # the bench's conditions: how busy the host was when it started
            _write_json(out, res)
            return {"status": "ok"}
        with open(os.path.join(self.log_dir, f"{name}.log"), encoding="utf-8", errors="replace") as f:
            return {"status": "failed", "error": f"exit code {code}: {_tail(f.read())}"}

    def execute(self, run: Run) -> list[str]:
        """Start the run's processes at once, wait, record each one that wrote no ok record. Failed ids."""
        cfg = self.cfg
        started_at = record.now_iso()
        _ensure_newline(cfg.runs_path)  # the trainers append too: never onto a torn last line
        before = self.done()
        env = self.backend.env(cfg)
        cmds = dict(self.backend.commands(cfg, run))
        procs, why = [], {}
        for rid, argv in cmds.items():
            try:
                procs.append((rid, *start(argv, os.path.join(self.log_dir, f"{rid}.log"), env, self.root)))
            except OSError as e:  # e.g. the launcher is not installed
                why[rid] = f"cannot start {argv[0]}: {e.strerror}"
        codes = dict(zip([p[0] for p in procs],
                         wait_all(procs, time.monotonic() + cfg.timeout, lambda rid: self.backend.cancel(cfg, rid))))
        now = self.done()
        failed = []
        for rid in cmds:
            if rid in now and rid not in before:
                continue
            with open(os.path.join(self.log_dir, f"{rid}.log"), "a+", encoding="utf-8", errors="replace") as f:
                f.seek(0)
                out = f.read()
            code = codes.get(rid)
            why[rid] = why.get(rid) or (f"timed out after {cfg.timeout:.0f} s" if code is None else
                                        "exited 0 but wrote no record" if code == 0 else f"exit code {code}")
            _ensure_newline(cfg.runs_path)
            record.append_record(cfg.runs_path, record.failed_record(
                study=cfg.study, run_id=rid, started_at=started_at,
                error=f"{why[rid]}: {_tail(out)}" if out.strip() else why[rid],
                command=cmds[rid], returncode=code, facts=run.facts(cfg)))
            failed.append(rid)
        return failed


def run_study(cfg: StudyConfig, backend, command: str, progress: bool = True) -> dict:
    """Run every planned run of the study not yet done (same host, same commit); returns counts."""
    from tqdm import tqdm

    def _terminate(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    study = Study(cfg, backend, command)
    study.prepare()
    runs = plan(cfg)
    done = study.done()
    stages = backend.stages(cfg, runs)
    todo = {id(r) for r in runs if not set(r.run_ids()) <= done}
    need_bench = [s for s in stages if s.bench and not os.path.exists(s.bench[1])]
    counts = {"planned": len(runs), "skipped": len(runs) - len(todo), "ok": 0, "failed": 0,
              "bench_ok": 0, "bench_failed": 0}
    bar = tqdm(total=len(todo) + len(need_bench), desc=f"compare run {cfg.study}", unit="run",
               disable=not progress, file=sys.stderr, dynamic_ncols=True,
               bar_format="{desc}: {n}/{total} |{bar}| {elapsed}<{remaining} {postfix}")
    try:
        with Sampler(load_path(cfg.study_dir), cfg.load_interval_s):
            for stage in stages:
                mine = [r for r in stage.runs if id(r) in todo]
                bench = stage in need_bench
                if not mine and not bench:
                    continue
                with stage.cluster():
                    if bench:
                        bar.set_postfix_str(f"{stage.label}: allreduce bench")
                        res = study.run_bench(*stage.bench)
                        counts["bench_" + res["status"]] += 1
                        if res.get("error"):
                            counts["bench_error"] = res["error"][:300]
                        bar.update(1)
                    for run in mine:
                        bar.set_postfix_str(run.label())
                        counts["failed" if study.execute(run) else "ok"] += 1
                        bar.update(1)
    finally:
        bar.close()
        backend.close(cfg)
    return counts


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
