"""`python -m slurm.localcluster up|status|down ...`"""
import sys

from .cli import main

sys.exit(main())
