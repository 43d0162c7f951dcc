"""Pin one launched rank to its own core, then exec the real command (run by horovodrun per rank).

    horovodrun --gloo -np 2 -H localhost:2 python -m compare.pin --cores 0,1 -- python -m train.sync_allreduce ...

The rank's local index (HOROVOD_LOCAL_RANK under Gloo, OMPI_COMM_WORLD_LOCAL_RANK under MPI,
SLURM_LOCALID under srun) picks cores[index % len(cores)]; pinned with `taskset -c CORE`.
No TensorFlow here.
"""
from __future__ import annotations

import os
import shutil
import sys

RANK_VARS = ("HOROVOD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


def local_rank(env: dict | None = None) -> int:
    env = os.environ if env is None else env
    for var in RANK_VARS:
        if env.get(var, "").isdigit():
            return int(env[var])
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 4 or argv[0] != "--cores" or argv[2] != "--":
        print("compare.pin: error: usage: python -m compare.pin --cores 0,1 -- COMMAND ...", file=sys.stderr)
        return 2
    cores = [int(c) for c in argv[1].split(",") if c.strip()]
    cmd = argv[3:]
    core = cores[local_rank() % len(cores)]
    if shutil.which("taskset"):
        os.execvp("taskset", ["taskset", "-c", str(core), *cmd])
    os.sched_setaffinity(0, {core})
    os.execvp(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
