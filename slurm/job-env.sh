# shellcheck shell=bash
# What every slurm/*.sbatch job sets up first, sourced once PROJECT_DIR is known:
#   source "$PROJECT_DIR/slurm/job-env.sh"
# Settings (environment, or edit the defaults here):
#   VENV           the project's virtual environment        (default: $PROJECT_DIR/.venv)
#   RESULTS_DIR    results root; records go to $RESULTS_DIR/$STUDY/runs.jsonl (default $PROJECT_DIR/results)
#   STUDY          study name                                (default: slurm)
VENV=${VENV:-$PROJECT_DIR/.venv}
RESULTS_DIR=${RESULTS_DIR:-$PROJECT_DIR/results}
STUDY=${STUDY:-slurm}

# Site modules go here, before the venv, e.g.:
#   module load gcc/12 openmpi/4.1 cuda/12.2 cudnn nccl
source "$VENV/bin/activate"
cd "$PROJECT_DIR"
if [[ $(id -u) == 0 ]]; then  # Open MPI refuses root without these (containers, test clusters)
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

# Host load while this job runs (its first node), for the report's conditions: one JSON line a sample
# appended to the study's load.jsonl (compare/hostload.py); stopped when the job script exits.
mkdir -p "$RESULTS_DIR/$STUDY"
python -m compare.hostload --out "$RESULTS_DIR/$STUDY/load.jsonl" --interval "${HOSTLOAD_INTERVAL:-15}" &
HOSTLOAD_PID=$!
trap 'kill "$HOSTLOAD_PID" 2>/dev/null; wait "$HOSTLOAD_PID" 2>/dev/null' EXIT
