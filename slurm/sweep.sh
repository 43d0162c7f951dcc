#!/usr/bin/env bash
# Submit the scaling study: the allreduce microbenchmark (a job of its own), the three trainers at 1, 2, 4,
# 8, 16, 32, 48 GPUs, then one report job that runs after all of them, whatever their outcome
# (--dependency=afterany), and calls `compare report`.
#
#   slurm/sweep.sh [options] [-- trainer args...]
#   slurm/sweep.sh --dry-run                       # print every sbatch line, submit nothing
#   slurm/sweep.sh --study tsubame --gpus-per-node 3 -- --dataset imagenet2012 --manual-dir /data/ilsvrc
#
# Layout for G GPUs at P GPUs a node: nodes = ceil(G / P);
#   sync:  G tasks (one per GPU), at most P a node, --gres=gpu:min(G,P)
#   async_allreduce: as sync (slurm/async_allreduce.sbatch: the same job, the seed's trainer)
#   async: G workers (one per GPU) + 1 chief + S parameter servers (S = --ps-per-node x nodes, or --ps),
#          the chief and PS tasks need no GPU, --gres=gpu:min(G,P)
#   bench: 2 tasks (slurm/bench.sbatch -> allreduce.json), on 2 nodes (one task each) when some point of
#          the sweep spans nodes, else on one node; it gives the report's model its alpha and B
# Training jobs ask for whole nodes (--exclusive): a throughput study must not share nodes with other jobs.
# Every task is bound to its cores (--cpu-bind=cores) and runs TensorFlow with intra-op threads = its CPUs
# (--cpus-per-task, SLURM's default 1): on CPU nodes a task is a real C-core "GPU".
#
# Options:
#   --study NAME          results/<NAME>/ (default: $STUDY or "slurm")
#   --gpus LIST           comma-separated GPU counts (default 1,2,4,8,16,32,48)
#   --gpus-per-node P     default 3 (TSUBAME 2.5)
#   --trainers LIST       sync,async,async_allreduce (default all three)
#   --ps-per-node S       async parameter servers per node (default 1)
#   --ps N                async parameter servers in total (overrides --ps-per-node)
#   --cpu                 CPU-only nodes: no --gres (P still decides the layout)
#   --cpus-per-task C     CPUs (and TensorFlow intra-op threads) per task (default: SLURM's, 1)
#   --bench-model SPEC    HEAD,IMAGE_SIZE,WIDTH,CLASSES of the allreduce bench (default: from the trainer
#                         args --head/--image-size/--width/--num-classes/--dataset)
#   --bench-nodes 1|2     nodes of the bench's 2 ranks (default: 2 when a point of the sweep spans nodes)
#   --no-bench            submit no allreduce bench (the report then makes no model prediction)
#   --no-exclusive        let training jobs share nodes
#   --sbatch-arg ARG      extra argument for every training sbatch (repeatable), e.g. --sbatch-arg=--partition=gpu
#   --sync-arg ARG        extra argument for train.sync_allreduce only (repeatable)
#   --async-arg ARG       extra argument for train.async_ps only (repeatable)
#   --async-allreduce-arg ARG  extra argument for train.async_allreduce only (repeatable)
#   --project-dir DIR     checkout on the shared filesystem (default: this script's repository)
#   --venv DIR            the project's venv (default: PROJECT_DIR/.venv)
#   --results-dir DIR     results root (default: PROJECT_DIR/results); records: DIR/<study>/runs.jsonl
#   --log-dir DIR         slurm-<name>-<jobid>.out logs (default: RESULTS_DIR/<study>/logs)
#   --dry-run             print the sbatch lines only
#
# Results: RESULTS_DIR/<study>/runs.jsonl (one line per run, failed jobs included by the report job),
# RESULTS_DIR/<study>/allreduce.json (the bench job), RESULTS_DIR/<study>/report.md (the report job),
# RESULTS_DIR/<study>/sweep.json (this command line, when, where, git commit),
# RESULTS_DIR/<study>/sweeps/<time>.tsv (the jobs submitted).
set -euo pipefail
sweep_cmd=("$0" "$@")  # recorded in sweep.json

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
study=${STUDY:-slurm}
gpus_list=1,2,4,8,16,32,48
gpn=3
trainers=sync,async,async_allreduce
ps_per_node=1
ps_total=
cpu=0
cpus_per_task=
bench=1
bench_model=
bench_nodes=
exclusive=1
dry=0
project_dir=$(cd "$here/.." && pwd)
venv=
results_dir=
log_dir=
sbatch_extra=()
sync_args=()
async_args=()
async_allreduce_args=()
common_args=()

die() { echo "sweep.sh: error: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"; }
while (($#)); do
  case $1 in
    --study) need "$@"; study=$2; shift 2 ;;
    --gpus) need "$@"; gpus_list=$2; shift 2 ;;
    --gpus-per-node) need "$@"; gpn=$2; shift 2 ;;
    --trainers) need "$@"; trainers=$2; shift 2 ;;
    --ps-per-node) need "$@"; ps_per_node=$2; shift 2 ;;
    --ps) need "$@"; ps_total=$2; shift 2 ;;
    --cpu) cpu=1; shift ;;
    --cpus-per-task) need "$@"; cpus_per_task=$2; shift 2 ;;
    --bench-model) need "$@"; bench_model=$2; shift 2 ;;
    --bench-nodes) need "$@"; bench_nodes=$2; shift 2 ;;
    --no-bench) bench=0; shift ;;
    --no-exclusive) exclusive=0; shift ;;
    --sbatch-arg) need "$@"; sbatch_extra+=("$2"); shift 2 ;;
    --sbatch-arg=*) sbatch_extra+=("${1#*=}"); shift ;;
    --sync-arg) need "$@"; sync_args+=("$2"); shift 2 ;;
    --sync-arg=*) sync_args+=("${1#*=}"); shift ;;
    --async-arg) need "$@"; async_args+=("$2"); shift 2 ;;
    --async-arg=*) async_args+=("${1#*=}"); shift ;;
    --async-allreduce-arg) need "$@"; async_allreduce_args+=("$2"); shift 2 ;;
    --async-allreduce-arg=*) async_allreduce_args+=("${1#*=}"); shift ;;
    --project-dir) need "$@"; project_dir=$2; shift 2 ;;
    --venv) need "$@"; venv=$2; shift 2 ;;
    --results-dir) need "$@"; results_dir=$2; shift 2 ;;
    --log-dir) need "$@"; log_dir=$2; shift 2 ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --) shift; common_args=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

int_re='^[1-9][0-9]*$'
[[ $gpn =~ $int_re ]] || die "--gpus-per-node must be a positive integer, got '$gpn'"
[[ $ps_per_node =~ $int_re ]] || die "--ps-per-node must be a positive integer, got '$ps_per_node'"
[[ -z $ps_total || $ps_total =~ $int_re ]] || die "--ps must be a positive integer, got '$ps_total'"
[[ -z $bench_nodes || $bench_nodes == [12] ]] || die "--bench-nodes must be 1 or 2, got '$bench_nodes'"
[[ -z $cpus_per_task || $cpus_per_task =~ $int_re ]] || die "--cpus-per-task must be a positive integer, got '$cpus_per_task'"
[[ $study =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]*$ ]] || die "bad study name '$study'"
IFS=, read -ra gpus_arr <<<"$gpus_list"
for g in "${gpus_arr[@]}"; do [[ $g =~ $int_re ]] || die "--gpus: '$g' is not a positive integer"; done
IFS=, read -ra trainer_arr <<<"$trainers"
for t in "${trainer_arr[@]}"; do
  [[ $t == sync || $t == async || $t == async_allreduce ]] ||
    die "--trainers: unknown trainer '$t' (choose sync, async, async_allreduce)"
done

model_of_args() {  # HEAD,IMAGE_SIZE,WIDTH,CLASSES that trainer args ask for (the trainers' defaults else)
  local head=${HEAD:-gap} size=32 width=1.0 classes=10 dataset=synthetic a v i
  local args=("$@")
  for ((i = 0; i < ${#args[@]}; i++)); do
    a=${args[i]} v=${args[i + 1]:-}
    [[ $a == --*=* ]] && { v=${a#*=}; a=${a%%=*}; }
    case $a in
      --head) head=$v ;; --image-size) size=$v ;; --width) width=$v ;;
      --num-classes) classes=$v ;; --dataset) dataset=$v ;;
    esac
  done
  case $dataset in
    synthetic) ;; digits) classes=10 ;; imagenet2012) classes=1000 ;;
    *) echo "sweep.sh: error: the classes of dataset '$dataset' are not known here; give --bench-model" >&2
       return 2 ;;
  esac
  echo "$head,$size,$width,$classes"
}
if (( bench )); then
  [[ -n $bench_model ]] || bench_model=$(model_of_args "${common_args[@]}" "${sync_args[@]}") || exit 2
  [[ $bench_model =~ ^[a-z0-9]+,[0-9]+,[0-9.]+,[0-9]+$ ]] ||
    die "--bench-model must be HEAD,IMAGE_SIZE,WIDTH,CLASSES, got '$bench_model'"
fi

project_dir=$(cd "$project_dir" 2>/dev/null && pwd) || die "--project-dir not found"
venv=${venv:-$project_dir/.venv}
results_dir=${results_dir:-$project_dir/results}
log_dir=${log_dir:-$results_dir/$study/logs}
(( dry )) || [[ -x $venv/bin/python ]] || die "no venv at $venv (--venv)"
(( dry )) || command -v sbatch >/dev/null || die "sbatch not found (not on a SLURM login node?)"

manifest=$results_dir/$study/sweeps/$(date +%Y%m%d-%H%M%S)-$$.tsv
if (( ! dry )); then
  mkdir -p "$log_dir" "$(dirname "$manifest")"
  printf 'job_id\tname\ttrainer\tgpus\tnodes\ttasks\tnum_ps\tlog\tcommand\n' >"$manifest"
fi

show() {  # print a command line that can be pasted back into a shell
  local w out=()
  for w in "$@"; do
    if [[ $w =~ ^[[:alnum:]_=,./:%+@-]+$ ]]; then out+=("$w"); else out+=("'${w//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

job_ids=()
not_submitted=()
submit() {  # submit NAME TRAINER GPUS NODES TASKS NUM_PS SBATCH-ARGS... -- SCRIPT ARGS...
  local name=$1 trainer=$2 g=$3 nodes=$4 tasks=$5 nps=$6
  shift 6
  local cmd=(sbatch --parsable "$@")
  if (( dry )); then
    show "${cmd[@]}"
    job_ids+=("<$name>")
  else
    local id err
    if ! id=$("${cmd[@]}" 2>"$manifest.err"); then  # e.g. more nodes than the cluster has: go on
      err=$(tr '\t\n' '  ' <"$manifest.err")
      echo "sweep.sh: warning: not submitted: $name: $err" >&2
      printf 'none\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$trainer" "$g" "$nodes" "$tasks" "$nps" \
        "$err" "$(show "${cmd[@]}")" >>"$manifest"
      not_submitted+=("$name")
      return 0
    fi
    id=${id%%;*}
    job_ids+=("$id")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$id" "$name" "$trainer" "$g" "$nodes" "$tasks" "$nps" \
      "$log_dir/slurm-$name-$id.out" "$(show "${cmd[@]}")" >>"$manifest"
    echo "submitted $name: job $id ($nodes node(s), $tasks task(s))"
  fi
}

if (( ! dry )); then  # the conditions of this study, for the report (the compute nodes' own are in the records)
  "$venv/bin/python" - "$results_dir/$study/sweep.json" "$project_dir" "$(show "${sweep_cmd[@]}")" <<'PY'
import json, os, platform, sys
sys.path.insert(0, sys.argv[2])
from train import record  # no TensorFlow import
sha, dirty = record.git_state()
cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), None)
info = {"command": sys.argv[3], "started_at": record.now_iso(), "host": platform.node(),
        "cores": sorted(os.sched_getaffinity(0)), "cpu": cpu, "platform": platform.platform(),
        "git_sha": sha, "git_dirty": dirty, "where": "the host sweep.sh ran on (compute nodes: see the records)"}
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2)
PY
fi

export_base="ALL,PROJECT_DIR=$project_dir,VENV=$venv,RESULTS_DIR=$results_dir,STUDY=$study"
per_task=()
[[ -n $cpus_per_task ]] && per_task=(--cpus-per-task="$cpus_per_task")
max_g=0
for g in "${gpus_arr[@]}"; do (( g > max_g )) && max_g=$g; done
if (( bench )); then  # 2 ranks across a node boundary when the study has one (gpn < 2: it must)
  bnodes=${bench_nodes:-$(( max_g > gpn || gpn < 2 ? 2 : 1 ))} bper=$(( bnodes == 2 ? 1 : 2 ))
  args=(--job-name=bench --output="$log_dir/slurm-bench-%j.out" --nodes="$bnodes" --ntasks=2
        --ntasks-per-node="$bper" --export="$export_base" "${per_task[@]}")
  (( exclusive )) && args+=(--exclusive)
  (( cpu )) || args+=(--gres="gpu:$bper")
  submit bench bench 2 "$bnodes" 2 0 "${args[@]}" "${sbatch_extra[@]}" "$project_dir/slurm/bench.sbatch" \
    --model "$bench_model"
fi
for t in "${trainer_arr[@]}"; do
  for g in "${gpus_arr[@]}"; do
    nodes=$(( (g + gpn - 1) / gpn ))
    per_node=$(( g < gpn ? g : gpn ))
    name="$t-${g}g"
    args=(--job-name="$name" --output="$log_dir/slurm-$name-%j.out" --nodes="$nodes" "${per_task[@]}")
    (( exclusive )) && args+=(--exclusive)
    (( cpu )) || args+=(--gres="gpu:$per_node")
    if [[ $t == sync || $t == async_allreduce ]]; then  # one task per GPU, Horovod over MPI
      tasks=$g nps=0
      args+=(--ntasks="$tasks" --ntasks-per-node="$per_node"
             --export="$export_base,GPUS_PER_NODE=$(( cpu ? 0 : gpn ))")
      if [[ $t == sync ]]; then targs=("${common_args[@]}" "${sync_args[@]}")
      else targs=("${common_args[@]}" "${async_allreduce_args[@]}"); fi
    else
      nps=${ps_total:-$(( ps_per_node * nodes ))}
      tasks=$(( g + 1 + nps ))
      args+=(--ntasks="$tasks" --export="$export_base,NUM_PS=$nps,GPUS_PER_NODE=$(( cpu ? 0 : gpn ))")
      targs=("${common_args[@]}" "${async_args[@]}")
    fi
    submit "$name" "$t" "$g" "$nodes" "$tasks" "$nps" "${args[@]}" "${sbatch_extra[@]}" \
      "$project_dir/slurm/$t.sbatch" "${targs[@]}"
  done
done

((${#job_ids[@]})) || die "no job was submitted"
deps=$(IFS=:; echo "${job_ids[*]}")
report_args=(--job-name=report --output="$log_dir/slurm-report-%j.out" --nodes=1 --ntasks=1
             --dependency="afterany:$deps" --kill-on-invalid-dep=no
             --export="$export_base,SWEEP_MANIFEST=$manifest")
if (( dry )); then
  show sbatch --parsable "${report_args[@]}" "$project_dir/slurm/report.sbatch"
else
  id=$(sbatch --parsable "${report_args[@]}" "$project_dir/slurm/report.sbatch") || die "sbatch failed for the report"
  id=${id%%;*}
  echo "submitted report: job $id, after $deps -> $results_dir/$study/report.md"
  printf '%s\n' "$id" >"${manifest%.tsv}.report"
  rm -f "$manifest.err"
  if ((${#not_submitted[@]})); then
    echo "sweep.sh: error: not submitted (listed in the report): ${not_submitted[*]}" >&2
    exit 1
  fi
fi
