"""SLURM side of the study: sbatch scripts, the sweep, and slurm.localcluster (a real SLURM on one machine)."""
