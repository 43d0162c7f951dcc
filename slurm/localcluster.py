#!/usr/bin/env python3
"""`python slurm/localcluster.py up|status|down ...`: the older spelling of `python -m slurm.localcluster`.

The code is the package slurm/localcluster/ (which `import slurm.localcluster` finds before this file).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from slurm.localcluster.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
