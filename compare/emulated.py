"""`python -m compare run|report --cluster emulated`: the scaling model checked against a real multi-node
cluster on this machine (slurm/localcluster.py: SLURM nodes in network namespaces, tc-shaped links).

    python -m compare run --cluster emulated --links 10gbit,1gbit,200mbit [--repeats 2]
    python -m compare report --cluster emulated

For every link rate the 2-node cluster is brought up (or re-shaped in place), then, through the real
sbatch scripts (`sbatch --wait`): sync (Horovod over MPI, srun --mpi=pmix) on 1 node / 1 worker and on
2 nodes / 2 workers; async (ParameterServerStrategy over gRPC) with chief + PS + 1 worker on node n1, and
chief + PS + worker 0 on n1 with worker 1 on n2. Plus a Horovod MPI allreduce microbenchmark across the
two nodes (compare/bench_link.py under srun: the model's own gradient tensors, scaled) giving alpha and B
of that link. Repeats loop outside
the links (link after link, again), so conditions alternate on a noisy host. Resumable: a (link, run,
repeat) already in runs.jsonl (its `tag`) is skipped. The cluster is taken down at the end (by pid).

The report (pandas + matplotlib, no TensorFlow) predicts every measured point from the model of
compare/scaling.py with alpha and B of that link, and compute from the 1-node runs of that link.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCALCLUSTER = os.path.join(ROOT, "slurm", "localcluster.py")
RUNS = ("sync-1n", "sync-2n", "async-1n", "async-2n", "ceil-2n")
# ceil-2n: two independent 1-worker sync runs at once, one on n1 and one on n2 (no communication): how much
# the two emulated nodes slow each other down on this machine's 2 shared cores (the model's kappa).


class EmulatedError(ValueError):
    """Bad input: one line, exit 2."""


@dataclass
class EmulatedConfig:
    study: str = "emulated"
    results_dir: str = "results"
    links: tuple[str, ...] = ("10gbit", "1gbit", "200mbit")
    repeats: int = 1
    head: str = "fc4096"
    width: float = 0.25
    image_size: int = 32
    per_worker_batch: int = 32
    sync_steps: int = 12
    async_steps: int = 24
    warmup_steps: int = 2
    bench_reps: int = 5
    bench_factors: str = "0.0625,0.25,0.5,1"
    runs: tuple[str, ...] = RUNS
    state_dir: str = "/tmp/localcluster-emulated"
    net_id: int = 84
    keep_up: bool = False
    timeout: float = 300.0
    extra: list[str] = field(default_factory=list)

    @property
    def study_dir(self) -> str:
        return os.path.join(self.results_dir, self.study)

    @property
    def runs_path(self) -> str:
        return os.path.join(self.study_dir, "runs.jsonl")


def _link_key(link: str) -> str:
    return link.lower()


def _env(cfg: EmulatedConfig) -> dict:
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    env.update({
        "SLURM_CONF": os.path.join(cfg.state_dir, "etc", "slurm.conf"),
        "PROJECT_DIR": ROOT, "VENV": os.path.dirname(bindir), "RESULTS_DIR": os.path.abspath(cfg.results_dir),
        "STUDY": cfg.study, "HEAD": cfg.head, "BATCH": str(cfg.per_worker_batch), "CHIEF_GRACE_S": "5",
        "TF_CPP_MIN_LOG_LEVEL": "2", "TF_NUM_INTRAOP_THREADS": "1",
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", ""),
        "PATH": bindir + os.pathsep + env.get("PATH", ""),
    })
    return env


def localcluster(cfg: EmulatedConfig, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, LOCALCLUSTER, *args, "--state-dir", cfg.state_dir], capture_output=True,
                          text=True, timeout=timeout)


def up(cfg: EmulatedConfig, link: str) -> None:
    p = localcluster(cfg, "up", "--nodes", "2", "--link", link, "--net-id", str(cfg.net_id))
    if p.returncode != 0:
        raise RuntimeError(f"localcluster up --link {link} failed: {p.stderr.strip()[-1500:]}")


def down(cfg: EmulatedConfig) -> None:
    localcluster(cfg, "down")


def done_tags(cfg: EmulatedConfig) -> set[str]:
    from train.record import read_records

    if not os.path.exists(cfg.runs_path):
        return set()
    recs, _ = read_records(cfg.runs_path)
    return {r.get("tag") for r in recs if r.get("status") == "ok"}


def tag_of(link: str, run: str, rep: int) -> str:
    return f"role=main;cluster=emulated;link={_link_key(link)};run={run};rep={rep}"


def run_tags(link: str, run: str, rep: int) -> list[tuple[str | None, str]]:
    """(node or None, tag) of each job of a run: the ceiling run is two jobs, one a node."""
    tag = tag_of(link, run, rep)
    return [(c, f"{tag};copy={c}") for c in ("n1", "n2")] if run == "ceil-2n" else [(None, tag)]


def trainer_args(cfg: EmulatedConfig, mode: str, tag: str) -> list[str]:
    steps = cfg.sync_steps if mode == "sync" else cfg.async_steps
    return ["--dataset", "synthetic", "--width", str(cfg.width), "--image-size", str(cfg.image_size),
            "--epochs", "1", "--steps-per-epoch", str(steps), "--warmup-steps", str(cfg.warmup_steps),
            "--peak-gflops", "100", "--intra-op-threads", "1", "--tag", tag, *cfg.extra]


def sbatch_cmd(cfg: EmulatedConfig, run: str, tag: str, log: str, node: str = "n1") -> list[str]:
    mode, nodes = run.split("-")
    if mode == "ceil":
        return ["sbatch", "--wait", "--job-name=ceil", f"--output={log}", "-N", "1", "-n", "1", "-w", node,
                os.path.join(ROOT, "slurm", "sync.sbatch"), *trainer_args(cfg, "sync", tag)]
    script = os.path.join(ROOT, "slurm", f"{mode}.sbatch")
    if mode == "sync":
        alloc = ["-N", "1", "-n", "1", "-w", "n1"] if nodes == "1n" else \
            ["-N", "2", "-n", "2", "--ntasks-per-node=1"]
    else:  # chief, PS, worker 0 on n1 (plane=3 keeps SlurmClusterResolver's block order); worker 1 on n2
        alloc = ["-O", "-N", "1", "-n", "3", "-w", "n1"] if nodes == "1n" else \
            ["-O", "-N", "2", "-n", "4", "--distribution=plane=3"]
    return ["sbatch", "--wait", "--exclusive", f"--job-name={mode}", f"--output={log}", *alloc, script,
            *trainer_args(cfg, mode, tag)]


def bench_cmd(cfg: EmulatedConfig, out: str) -> list[str]:
    return ["srun", "--mpi=pmix", "-N", "2", "-n", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            sys.executable, "-m", "compare.bench_link", "--out", out, "--reps", str(cfg.bench_reps),
            "--factors", cfg.bench_factors, "--model", f"{cfg.head},{cfg.image_size},{cfg.width},10"]


def _append_failed(cfg: EmulatedConfig, link: str, run: str, rep: int, tag: str, error: str) -> None:
    from train.record import append_json_line, now_iso

    mode, nodes = run.split("-")
    append_json_line(cfg.runs_path, {
        "status": "failed", "mode": "sync" if mode == "ceil" else mode,
        "num_workers": 1 if mode == "ceil" else int(nodes[0]), "head": cfg.head, "width": cfg.width,
        "image_size": cfg.image_size, "per_worker_batch": cfg.per_worker_batch, "tag": tag,
        "link": {"rate": link, "delay_ms": 0.0, "nodes": 2}, "error": error[-2000:], "started_at": now_iso()})


def run_study(cfg: EmulatedConfig, argv: list[str] | None = None, log=print) -> dict:
    os.makedirs(os.path.join(cfg.study_dir, "logs"), exist_ok=True)
    with open(os.path.join(cfg.study_dir, "emulated.json"), "w", encoding="utf-8") as f:
        json.dump({"command": "python -m compare " + " ".join(shlex.quote(a) for a in (argv or [])),
                   "config": {k: v for k, v in cfg.__dict__.items()}, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                  f, indent=1, default=list)
    env = _env(cfg)
    counts = {"ok": 0, "failed": 0, "skipped": 0, "bench": 0}
    done = done_tags(cfg)
    t_start = time.time()
    try:
        for rep in range(1, cfg.repeats + 1):
            for link in cfg.links:
                todo = [r for r in cfg.runs if any(t not in done for _, t in run_tags(link, r, rep))]
                bench_out = os.path.join(cfg.study_dir, f"linkbench-{_link_key(link)}-r{rep}.json")
                if not todo and os.path.exists(bench_out):
                    counts["skipped"] += len(cfg.runs)
                    continue
                up(cfg, link)
                log(f"emulated: link {link}, repeat {rep}: cluster up ({time.time() - t_start:.0f}s)")
                if not os.path.exists(bench_out):
                    blog = os.path.join(cfg.study_dir, "logs", f"bench-{_link_key(link)}-r{rep}.log")
                    with open(blog, "w") as out:
                        p = subprocess.run(bench_cmd(cfg, bench_out), cwd=ROOT, env=env, stdout=out,
                                           stderr=subprocess.STDOUT, timeout=cfg.timeout)
                    counts["bench"] += p.returncode == 0
                    counts["failed"] += p.returncode != 0
                    log(f"  bench {link}: exit {p.returncode} ({time.time() - t_start:.0f}s)")
                for run in cfg.runs:
                    copies, tags = zip(*run_tags(link, run, rep))
                    if all(t in done for t in tags):
                        counts["skipped"] += 1
                        continue
                    procs = []
                    for c, t in zip(copies, tags):
                        rlog = os.path.join(cfg.study_dir, "logs", f"{run}-{_link_key(link)}-r{rep}"
                                            + (f"-{c}" if c else "") + ".log")
                        procs.append((t, rlog, subprocess.Popen(sbatch_cmd(cfg, run, t, rlog, c or "n1"), cwd=ROOT,
                                                                env=env, stdout=subprocess.PIPE,
                                                                stderr=subprocess.PIPE, text=True)))
                    for t, rlog, proc in procs:
                        try:
                            _, err = proc.communicate(timeout=cfg.timeout)
                            rc = proc.returncode
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            _, err = proc.communicate()
                            rc, err = -1, f"timed out after {cfg.timeout:.0f}s"
                            subprocess.run(["scancel", "--name", run.split("-")[0]], env=env, capture_output=True)
                        now = done_tags(cfg)
                        if rc == 0 and t in now:
                            counts["ok"] += 1
                        else:
                            tail = open(rlog, errors="replace").read()[-1500:] if os.path.exists(rlog) else ""
                            _append_failed(cfg, link, run, rep, t, f"exit {rc}: {err.strip()} {tail}")
                            counts["failed"] += 1
                    log(f"  {run} {link} r{rep}: exit {', '.join(str(p.returncode) for _, _, p in procs)} "
                        f"({time.time() - t_start:.0f}s)")
    finally:
        if not cfg.keep_up:
            down(cfg)
    return counts


# ------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    from compare.__main__ import _OneLineParser, _positive

    ap = _OneLineParser(prog="compare", allow_abbrev=False)
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    run = sub.add_parser("run", allow_abbrev=False)
    run.add_argument("--cluster", choices=("emulated",), required=True)
    run.add_argument("--study", default="emulated")
    run.add_argument("--results-dir", default="results")
    run.add_argument("--links", default="10gbit,1gbit,200mbit")
    run.add_argument("--repeats", type=_positive(int), default=1)
    run.add_argument("--head", choices=("gap", "fc4096"), default="fc4096")
    run.add_argument("--width", type=_positive(float), default=0.25)
    run.add_argument("--image-size", type=_positive(int), default=32)
    run.add_argument("--per-worker-batch", type=_positive(int), default=32)
    run.add_argument("--sync-steps", type=_positive(int), default=12)
    run.add_argument("--async-steps", type=_positive(int), default=24)
    run.add_argument("--warmup-steps", type=int, default=2)
    run.add_argument("--bench-reps", type=_positive(int), default=5)
    run.add_argument("--bench-factors", default="0.0625,0.25,0.5,1",
                     help="the allreduce bench scales the model's gradient tensors by these factors")
    run.add_argument("--runs", default=",".join(RUNS))
    run.add_argument("--state-dir", default="/tmp/localcluster-emulated")
    run.add_argument("--net-id", type=int, default=84)
    run.add_argument("--keep-up", action="store_true")
    run.add_argument("--timeout", type=_positive(float), default=300.0)
    rep = sub.add_parser("report", allow_abbrev=False)
    rep.add_argument("--cluster", choices=("emulated",), required=True)
    rep.add_argument("--study", default="emulated")
    rep.add_argument("--results-dir", default="results")
    rep.add_argument("--out", default="")
    return ap


def main(argv: list[str]) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    if a.study in ("", ".", "..") or os.sep in a.study:
        ap.error(f"bad study name {a.study!r}")
    if a.command == "report":
        from compare.emulated_report import write_report
        try:
            path = write_report(os.path.join(a.results_dir, a.study), out_dir=a.out or None, argv=argv)
        except EmulatedError as e:
            print(f"compare report: error: {e}", file=sys.stderr)
            return 2
        print(f"compare report: {path}")
        return 0
    import re
    links = tuple(v.strip() for v in a.links.split(",") if v.strip())
    if not links or not all(re.fullmatch(r"\d+(\.\d+)?(bit|kbit|mbit|gbit)", v, re.I) for v in links):
        ap.error(f"argument --links: expected rates like 10gbit,1gbit,200mbit, got {a.links!r}")
    runs = tuple(v.strip() for v in a.runs.split(",") if v.strip())
    if not runs or any(r not in RUNS for r in runs):
        ap.error(f"argument --runs: choose from {','.join(RUNS)}, got {a.runs!r}")
    if os.geteuid() != 0:
        print("compare run: error: --cluster emulated needs root (slurm/localcluster.py)", file=sys.stderr)
        return 2
    cfg = EmulatedConfig(study=a.study, results_dir=a.results_dir, links=links, repeats=a.repeats, head=a.head,
                         width=a.width, image_size=a.image_size, per_worker_batch=a.per_worker_batch,
                         sync_steps=a.sync_steps, async_steps=a.async_steps, warmup_steps=a.warmup_steps,
                         bench_reps=a.bench_reps, bench_factors=a.bench_factors, runs=runs, state_dir=a.state_dir,
                         net_id=a.net_id, keep_up=a.keep_up, timeout=a.timeout)
    counts = run_study(cfg, argv)
    print(f"compare run --cluster emulated: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} "
          f"already done, {counts['bench']} allreduce benchmarks -> {cfg.runs_path}")
    return 0 if counts["failed"] == 0 else 1
