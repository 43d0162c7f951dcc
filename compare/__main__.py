"""`python -m compare run|report` (console script cnn11-compare). Bad input: one line, exit 2, nothing written.

    python -m compare run [--cluster local|emulated|slurm] [--preset local|convergence|emulated|compression] ...
    python -m compare report [--study NAME] [--results-dir DIR] ...
"""
from __future__ import annotations

import argparse
import shlex
import sys

from compare.plan import CLUSTERS, EMULATED_RUNS, MODES, PRESETS, PlanError, preset
from compare.scaling import PROFILE_NAMES


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _number(kind, low: float, low_ok: bool, high: float | None = None):
    """argparse type: a number of `kind` above `low` (or equal when low_ok), at most `high`."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if not (v >= low if low_ok else v > low) or (high is not None and v > high):
            rng = f"{'>=' if low_ok else '>'} {low:g}" + (f" and <= {high:g}" if high is not None else "")
            raise argparse.ArgumentTypeError(f"must be {rng}, got {text}")
        return v
    return parse


def _list(item, allowed: tuple[str, ...] | None = None):
    """argparse type: a comma-separated list of `item` values (each checked against `allowed`)."""
    def parse(text: str) -> tuple:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        for v in values:
            if allowed is not None and v not in allowed:
                raise argparse.ArgumentTypeError(f"unknown value {v!r}; choose from {', '.join(allowed)}")
        return tuple(item(v) for v in values)
    return parse


_ints = _list(_number(int, 1, True))


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="compare", description=__doc__, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    common = dict(allow_abbrev=False)

    run = sub.add_parser("run", help="run a study: plan -> launch -> records (resumable)", **common)
    a = run.add_argument
    a("--cluster", choices=CLUSTERS, default=None,
      help="local (default): processes here; emulated: 2 SLURM nodes in netns (root); slurm: submit slurm/sweep.sh")
    a("--preset", choices=tuple(PRESETS), default=None,
      help="study defaults (default: emulated with --cluster emulated, else local); explicit flags win")
    a("--convergence", action="store_true", help="= --preset convergence (time to accuracy on digits)")
    a("--study", default=None, help="results/<study>/ (default: the preset's name)")
    a("--results-dir", default=None, help="results root (default results; results/reference: curated, clean only)")
    a("--modes", type=_list(str, tuple(MODES)))
    a("--workers", type=_ints, help="worker counts, e.g. 1,2")
    a("--repeats", type=_number(int, 1, True))
    a("--heads", type=_list(str, ("gap", "fc4096")))
    a("--image-sizes", type=_ints)
    a("--compressions", type=_list(str),
      help="sync arm: none, fp16, powersgd:R, topk:F[:W], sign (comma-separated; train.config checks each)")
    a("--width", type=_number(float, 0, False))
    a("--per-worker-batch", type=_number(int, 1, True))
    a("--epochs", type=_number(int, 1, True))
    a("--steps-per-epoch", type=_number(int, 0, True), help="0: one pass over the training set")
    a("--async-steps-per-epoch", type=_number(int, 0, True), help="steps of both async arms (0: as --steps-per-epoch)")
    a("--warmup-steps", type=_number(int, 0, True))
    a("--ps", type=_number(int, 1, True), help="parameter-server shards (async)")
    a("--intra-op-threads", type=_number(int, 0, True), help="TensorFlow intra-op threads per process")
    a("--dataset", choices=("synthetic", "digits"))
    a("--lr", type=_number(float, 0, False), help="base learning rate per worker (sync scales it by p)")
    a("--async-allreduce-lr", type=_number(float, 0, False),
      help="base learning rate per sub-batch of the async all-reduce arm (default: --lr)")
    a("--no-ceiling", dest="ceiling", action="store_false", default=None, help="skip the side-by-side runs")
    a("--no-bench", dest="bench", action="store_false", default=None, help="skip the allreduce bench")
    a("--timeout", type=_number(float, 0, False), help="seconds per run")
    a("--load-interval", dest="load_interval_s", type=_number(float, 0, False),
      help="seconds between host-load samples (load.jsonl)")
    a("--no-progress", action="store_true")
    a("--links", type=_list(str), help="emulated: link rates, e.g. 10gbit,1gbit,200mbit")
    a("--runs", dest="emulated_runs", type=_list(str, EMULATED_RUNS), help="emulated: which runs")
    a("--bench-reps", type=_number(int, 1, True), help="emulated: allreduce bench repetitions")
    a("--bench-factors", help="emulated: the bench scales the gradient tensors by these factors")
    a("--state-dir", help="emulated: the cluster's state dir")
    a("--net-id", type=_number(int, 1, True), help="emulated: the cluster's network id")
    a("--keep-up", action="store_true", default=None, help="emulated: leave the cluster up")
    a("--profile", help="dilated: the emulated cluster (tsubame2.5 | h200)")
    a("--dilation", type=_number(float, 0, False), help="dilated: D, real seconds per emulated second")
    a("--byte-dilation", type=_number(int, 1, True), help="dilated: K, each gradient tensor's size / K")
    a("--ranks-per-node", type=_number(int, 1, True), help="dilated: ranks on each emulated node")
    a("--async-max-workers", type=_number(int, 0, True), help="dilated: async arm only up to this many workers (0: all)")
    a("--slurm-cpu", action="store_true", help="slurm: CPU-only nodes (sweep.sh --cpu)")
    a("--sweep-arg", action="append", default=[], help="slurm: extra argument for slurm/sweep.sh (repeatable)")

    rep = sub.add_parser("report", help="report.md and PNGs from results/<study>/ (pandas + matplotlib)", **common)
    r = rep.add_argument
    r("--study", default="local")
    r("--results-dir", default="results")
    r("--profiles", type=_list(str, PROFILE_NAMES), default=PROFILE_NAMES)
    r("--ps-shards", type=_number(int, 1, True), default=1, help="PS shards in the projection")
    r("--out", default="", help="output dir (default: the study dir)")
    r("--target", type=_number(float, 0, False, 1.0), default=0.90,
      help="target held-out top-1 for time-to-target and images-to-target (0..1]")
    r("--note", action="append", default=[], help="a line added to the report's conditions (repeatable)")
    return parser


RUN_FIELDS = ("study", "results_dir", "modes", "workers", "repeats", "heads", "image_sizes", "compressions",
              "width", "per_worker_batch", "epochs", "steps_per_epoch", "async_steps_per_epoch", "warmup_steps",
              "async_allreduce_lr",
              "ps", "intra_op_threads", "dataset", "lr", "ceiling", "bench", "timeout", "load_interval_s",
              "links", "emulated_runs", "bench_reps", "bench_factors", "state_dir", "net_id", "keep_up")
RUN_FIELDS += ("profile", "dilation", "byte_dilation", "ranks_per_node", "async_max_workers")  # the dilated backend (issue 14)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["validate"], ["calibrate"]):  # issue 12: published-data validation, profile calibration
        from compare import calibrate, validate
        return {"validate": validate, "calibrate": calibrate}[argv[0]].main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python -m compare " + shlex.join(argv)
    if args.command == "report":
        return _report(args, argv)
    name = "convergence" if args.convergence else args.preset or (
        args.cluster if args.cluster in ("emulated", "dilated") else "local")
    try:
        cfg = preset(name, cluster=args.cluster, **{k: getattr(args, k) for k in RUN_FIELDS})
    except PlanError as e:
        parser.error(str(e))
    if cfg.cluster == "slurm":
        return _submit_slurm(cfg, args)
    from compare.launch import LaunchError, run_study

    if cfg.cluster == "emulated":
        from compare.emulated import EmulatedBackend, check_can_run
        why = check_can_run()
        if why:
            parser.error(why)
        backend = EmulatedBackend()
    elif cfg.cluster == "dilated":
        from compare.dilated import DilatedBackend, check_can_run
        why = check_can_run()
        if why:
            parser.error(why.replace("--cluster emulated", "--cluster dilated"))
        backend = DilatedBackend()
    else:
        from compare.local import LocalBackend
        backend = LocalBackend()
    try:
        counts = run_study(cfg, backend, command, progress=not args.no_progress)
    except LaunchError as e:
        parser.error(str(e))
    print(f"compare run: {counts['planned']} planned, {counts['skipped']} already done (same host, same commit), "
          f"{counts['ok']} ok, {counts['failed']} failed; allreduce bench {counts['bench_ok']} ok, "
          f"{counts['bench_failed']} failed -> {cfg.runs_path}")
    if cfg.cluster == "dilated":  # the study fails when the emulation measured the host, not the cluster
        from compare.dilated import fidelity
        fid = fidelity(cfg.study_dir, cfg.max_d_change, cfg.min_link_fraction)
        if not fid["ok"]:
            print(f"compare run: fidelity check failed: {fid['reason']}", file=sys.stderr)
            return 1
    return 0 if counts["failed"] == 0 and counts["bench_failed"] == 0 else 1


def _submit_slurm(cfg, args) -> int:
    """The SLURM backend submits the sweep; the jobs write the records, the report job collects them."""
    import os
    import subprocess

    from compare.slurm import submit_command

    argv = submit_command(cfg, cpu=args.slurm_cpu, extra=args.sweep_arg)
    return subprocess.run(argv, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).returncode


def _report(args, argv: list[str]) -> int:
    import os

    from compare.report import ReportError, write_report

    try:
        path = write_report(os.path.join(args.results_dir, args.study), profiles=list(args.profiles),
                            ps_shards=args.ps_shards, out_dir=args.out or None,
                            command="python -m compare " + shlex.join(argv), target=args.target, notes=args.note)
    except ReportError as e:
        print(f"compare report: error: {e}", file=sys.stderr)
        return 2
    print(f"compare report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
