"""Run a local multi-process job in a private network namespace that holds only loopback.

TensorFlow's gRPC servers listen on every interface whatever address the cluster spec gives, without
authentication, and Horovod's Gloo rendezvous is plain HTTP. Inside a fresh network namespace the
only interface is `lo`, so nothing a local run opens can be reached from outside the machine.
Needs root (or user namespaces) and util-linux `unshare`; without them, commands run unchanged.

    python -m train.private_net -- horovodrun --gloo -np 2 -H localhost:2 python -m train.sync_allreduce
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import lru_cache

_INNER = 'ip link set lo up && exec "$@"'
MARK = "CNN11_PRIVATE_NET"  # set in the environment of a process re-executed inside one


@lru_cache(maxsize=1)
def available() -> bool:
    """True when a private network namespace can be made here (checked once, for real)."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return False
    probe = subprocess.run(["unshare", "--net", "sh", "-c", _INNER, "sh", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def wrap(cmd: list[str]) -> list[str]:
    """`cmd` run inside a new network namespace with loopback up; `cmd` itself when unavailable."""
    return ["unshare", "--net", "sh", "-c", _INNER, "sh", *cmd] if available() else list(cmd)


def inside() -> bool:
    """True in a process that reexec_isolated() put into a private network namespace."""
    return os.environ.get(MARK) == "1"


def reexec_isolated(python_args: list[str]) -> None:
    """Replace this process (same pid, same signals) by `python PYTHON_ARGS` inside a private network
    namespace. Returns, doing nothing, when already inside one or when none can be made here."""
    if inside() or not available():
        return
    os.environ[MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    cmd = wrap([sys.executable, *python_args])
    os.execvp(cmd[0], cmd)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("train.private_net: error: no command given (usage: python -m train.private_net -- CMD ...)",
              file=sys.stderr)
        return 2
    if not available():
        print("train.private_net: warning: no private network namespace here (needs root and unshare); "
              "running with the host's network", file=sys.stderr)
    os.execvp(wrap(args)[0], wrap(args))
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main())
