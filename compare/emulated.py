"""Backend `emulated`: a 2-node SLURM cluster on this machine (slurm/localcluster.py: nodes in network
namespaces, every node's link shaped by tc), runs submitted through the real sbatch scripts. No TensorFlow.

Per link rate (a stage) the cluster is brought up, or re-shaped in place; then the link's Horovod MPI
allreduce bench across the two nodes (train.bench_link under srun: the model's own gradient tensors,
scaled) and the runs, each `sbatch --wait` with the job named after its run id:
  sync-1n  sync.sbatch -N1 -n1 on n1;  sync-2n  sync.sbatch -N2 -n2 (Horovod over MPI across n1, n2)
  async-1n async.sbatch -N1 -n3 (chief, PS, worker on n1); async-2n -N2 -n4 plane=3 (worker 1 on n2)
  async_allreduce-1n/-2n  async_allreduce.sbatch, laid out as sync (the seed's method, issue 16)
  ceil-2n  two 1-worker sync.sbatch jobs at once, one on n1 and one on n2 (role ceiling, copies 2)
The cluster is taken down at the end of the study (close). Builds command lines only.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess

from compare.local import ROOT, Stage, child_env, trainer_flags
from compare.plan import Run, StudyConfig

LOCALCLUSTER = os.path.join(ROOT, "slurm", "localcluster.py")


class EmulatedBackend:
    name = "emulated"

    def hosts(self) -> set[str]:
        # the trainers run inside the nodes' UTS namespaces; failed records are written here
        return {"n1", "n2", socket.gethostname()}

    def env(self, cfg: StudyConfig) -> dict[str, str]:
        env = child_env(cfg.python)
        env.update({"SLURM_CONF": os.path.join(cfg.state_dir, "etc", "slurm.conf"), "PROJECT_DIR": ROOT,
                    "VENV": os.path.dirname(os.path.dirname(os.path.abspath(cfg.python))),
                    "RESULTS_DIR": os.path.abspath(cfg.results_dir), "STUDY": cfg.study,
                    "HEAD": cfg.heads[0], "BATCH": str(cfg.per_worker_batch), "CHIEF_GRACE_S": "5"})
        return env

    def localcluster(self, cfg: StudyConfig, *args: str) -> list[str]:
        return [cfg.python, LOCALCLUSTER, *args, "--state-dir", cfg.state_dir]

    def _up(self, cfg: StudyConfig, link: str, nodes: int = 2, extra: tuple[str, ...] = ()):
        @contextlib.contextmanager
        def cluster():
            p = subprocess.run(self.localcluster(cfg, "up", "--nodes", str(nodes), "--link", link, "--net-id",
                                                 str(cfg.net_id), *extra), capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                raise RuntimeError(f"localcluster up --link {link} failed: {p.stderr.strip()[-1500:]}")
            yield
        return cluster

    def stages(self, cfg: StudyConfig, runs: list[Run]) -> list[Stage]:
        out = []
        for rep in sorted({r.repeat for r in runs}):
            for link in cfg.links:
                here = [r for r in runs if r.repeat == rep and r.link == link]
                bench = self.bench(cfg, link, rep) if cfg.bench else None
                out.append(Stage(f"{link} r{rep}", here, bench, self._up(cfg, link)))
        return out

    def bench(self, cfg: StudyConfig, link: str, rep: int) -> tuple[list[str], str]:
        out = os.path.abspath(os.path.join(cfg.study_dir, f"linkbench-{link.lower()}-r{rep}.json"))
        return ["srun", "--mpi=pmix", "-N", "2", "-n", "2", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                cfg.python, "-m", "train.bench_link", "--out", out, "--reps", str(cfg.bench_reps),
                "--factors", cfg.bench_factors, "--model", f"{cfg.heads[0]},{cfg.image_sizes[0]},{cfg.width},10"], out

    def commands(self, cfg: StudyConfig, run: Run) -> list[tuple[str, list[str]]]:
        log_dir = os.path.abspath(os.path.join(cfg.study_dir, "logs"))
        if run.role == "ceiling":
            return [(rid, ["sbatch", "--wait", f"--job-name={rid}", f"--output={log_dir}/{rid}.slurm.out",
                           "-N", "1", "-n", "1", "-w", f"n{i + 1}", os.path.join(ROOT, "slurm", "sync.sbatch"),
                           *trainer_flags(cfg, run, rid)])
                    for i, rid in enumerate(run.run_ids())]
        [rid] = run.run_ids()
        if run.mode != "async":  # sync and async_allreduce: one Horovod task a node
            alloc = ["-N", "1", "-n", "1", "-w", "n1"] if run.nodes == 1 else \
                ["-N", "2", "-n", "2", "--ntasks-per-node=1"]
        else:  # chief, PS, worker 0 on n1 (plane=3 keeps SlurmClusterResolver's block order); worker 1 on n2
            alloc = ["-O", "-N", "1", "-n", "3", "-w", "n1"] if run.nodes == 1 else \
                ["-O", "-N", "2", "-n", "4", "--distribution=plane=3"]
        return [(rid, ["sbatch", "--wait", "--exclusive", f"--job-name={rid}", f"--output={log_dir}/{rid}.slurm.out",
                       *alloc, os.path.join(ROOT, "slurm", f"{run.mode}.sbatch"), *trainer_flags(cfg, run, rid)])]

    def cancel(self, cfg: StudyConfig, run_id: str) -> None:
        """Killing `sbatch --wait` leaves its job running: cancel it by name. A controller that is up answers
        in well under a second; one that is not would hold scancel for a minute of retries, for nothing."""
        if not os.path.exists(self.env(cfg)["SLURM_CONF"]):
            return  # no cluster of ours, so no job of ours (scancel would retry the missing file for 60 s)
        try:
            subprocess.run(["scancel", "--name", run_id], env=self.env(cfg), capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            pass  # no controller to reach: no job of ours is running there

    def close(self, cfg: StudyConfig) -> None:
        if not cfg.keep_up:
            subprocess.run(self.localcluster(cfg, "down"), capture_output=True, text=True, timeout=300)


def check_can_run() -> str | None:
    """Why this machine cannot run the emulated cluster, or None."""
    if os.geteuid() != 0:
        return "--cluster emulated needs root (slurm/localcluster.py makes network namespaces)"
    if not os.path.exists(LOCALCLUSTER):
        return f"no {LOCALCLUSTER}"
    return None
