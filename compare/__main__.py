"""`python -m compare run|report` (console script cnn11-compare). Bad input: one line, exit 2, nothing written."""
from __future__ import annotations

import argparse
import os
import sys

from compare.scaling import PROFILE_NAMES, ModelError, check_profile_names


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    bad = [v for v in values if v < 1]
    if bad:
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {bad[0]} in {text!r}")
    return values


def _choices(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v.strip() for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        for v in values:
            if v not in allowed:
                raise argparse.ArgumentTypeError(f"unknown value {v!r}; choose from {', '.join(allowed)}")
        return values
    return parse


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v
    return parse


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


# `compare run --convergence` (issue 6): sync vs async at 1 and 2 workers on digits to a target accuracy,
# 3 seeds each, the sync arm with and without fp16 compression. Defaults only: explicit flags still win.
CONVERGENCE = dict(study="convergence", dataset="digits", modes=("sync", "async"), workers=(1, 2), repeats=3,
                   compressions=("none", "fp16"), width=0.25, per_worker_batch=32, epochs=14, steps_per_epoch=0,
                   warmup_steps=2, lr=0.01, no_ceiling=True)


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return v


def build_parser(convergence: bool = False) -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="compare", description=__doc__, allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    common = dict(formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False)

    run = sub.add_parser("run", help="run the sweep (each configuration its own process)", **common)
    run.add_argument("--study", default="local")
    run.add_argument("--results-dir", default="results")
    run.add_argument("--modes", type=_choices(("sync", "async")), default=("sync", "async"))
    run.add_argument("--workers", type=_ints, default=(1, 2), help="worker counts, e.g. 1,2")
    run.add_argument("--repeats", type=_positive(int), default=3)
    run.add_argument("--heads", type=_choices(("gap", "fc4096")), default=("gap",))
    run.add_argument("--image-sizes", type=_ints, default=(32,))
    run.add_argument("--compressions", type=_choices(("none", "fp16")), default=("none",))
    run.add_argument("--width", type=_positive(float), default=0.25)
    run.add_argument("--per-worker-batch", type=_positive(int), default=64)
    run.add_argument("--epochs", type=_positive(int), default=1)
    run.add_argument("--steps-per-epoch", type=_nonneg_int, default=30,
                     help="0: one pass over the training set (real datasets)")
    run.add_argument("--warmup-steps", type=_nonneg_int, default=5)
    run.add_argument("--ps", type=_positive(int), default=1, help="parameter-server shards (async)")
    run.add_argument("--intra-op-threads", type=_nonneg_int, default=1,
                     help="TensorFlow intra-op threads per worker (1: one core = one 'GPU')")
    run.add_argument("--no-ceiling", action="store_true", help="skip the side-by-side ceiling runs")
    run.add_argument("--no-bench", action="store_true", help="skip the allreduce microbenchmark")
    run.add_argument("--timeout", type=_positive(float), default=600.0, help="seconds per configuration")
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--dataset", choices=("synthetic", "digits"), default="synthetic")
    run.add_argument("--lr", type=_positive(float), default=None,
                     help="base learning rate per worker (sync scales it by p; default: the trainers')")
    run.add_argument("--convergence", action="store_true",
                     help="the time-to-accuracy study preset: " + ", ".join(
                         f"{k.replace('_', '-')} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                         for k, v in CONVERGENCE.items()) + "; repeats are seeds 0..R-1; no fp16 at 1 worker")
    if convergence:
        run.set_defaults(**CONVERGENCE)

    rep = sub.add_parser("report", help="write report.md and the PNGs (pandas + matplotlib)", **common)
    rep.add_argument("--study", default="local")
    rep.add_argument("--results-dir", default="results")
    rep.add_argument("--profiles", type=_choices(PROFILE_NAMES), default=PROFILE_NAMES)
    rep.add_argument("--ps-shards", type=_positive(int), default=1, help="PS shards in the projection")
    rep.add_argument("--out", default="", help="output dir (default: the study dir)")
    rep.add_argument("--target", type=_fraction, default=0.90,
                     help="target held-out top-1 for time-to-target and images-to-target (0..1]")
    rep.add_argument("--note", action="append", default=[],
                     help="a line added to the report's conditions (repeatable), e.g. 'shared, noisy host'")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["validate"], ["calibrate"]):  # issue 12: compare/validate.py, compare/calibrate.py
        return __import__(f"compare.{argv[0]}", fromlist=["main"]).main(argv[1:])
    if any(a == "--cluster=emulated" or (a == "--cluster" and argv[i + 1:i + 2] == ["emulated"])
           for i, a in enumerate(argv)):  # the netns multi-node study (issue 8): compare/emulated.py
        from compare.emulated import main as emulated_main
        return emulated_main(argv)
    parser = build_parser(convergence="--convergence" in argv)
    args = parser.parse_args(argv)
    if args.command == "run":
        if args.study in ("", ".", "..") or os.sep in args.study:
            parser.error(f"bad study name {args.study!r}")
        if "async" in args.modes and not _async_trainer_present():
            print("compare run: warning: train/async_ps.py not found; async runs will be recorded as failed",
                  file=sys.stderr)
        from compare.sweep import SweepConfig, sweep

        cfg = SweepConfig(study=args.study, results_dir=args.results_dir, modes=args.modes,
                          workers=args.workers, repeats=args.repeats, heads=args.heads,
                          image_sizes=args.image_sizes, compressions=args.compressions, width=args.width,
                          per_worker_batch=args.per_worker_batch, epochs=args.epochs,
                          steps_per_epoch=args.steps_per_epoch, warmup_steps=args.warmup_steps,
                          ps=args.ps, intra_op_threads=args.intra_op_threads, dataset=args.dataset,
                          lr=args.lr or 0.0, seed_per_repeat=args.convergence,
                          compress_single_worker=not args.convergence,
                          ceiling=not args.no_ceiling, bench=not args.no_bench, timeout=args.timeout)
        counts = sweep(cfg, argv, progress=not args.no_progress)
        print(f"compare run: {counts['planned']} planned, {counts['skipped']} already done, "
              f"{counts['ok']} ok, {counts['failed']} failed -> {cfg.runs_path}"
              + (f"; allreduce microbenchmark {counts['bench']}" if "bench" in counts else ""))
        return 0
    from compare.report import ReportError, write_report

    try:
        check_profile_names(list(args.profiles))
        path = write_report(os.path.join(args.results_dir, args.study), profiles=list(args.profiles),
                            ps_shards=args.ps_shards, out_dir=args.out or None, argv=argv, target=args.target,
                            notes=args.note)
    except (ReportError, ModelError) as e:
        print(f"compare report: error: {e}", file=sys.stderr)
        return 2
    print(f"compare report: {path}")
    return 0


def _async_trainer_present() -> bool:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.exists(os.path.join(root, "train", "async_ps.py"))


if __name__ == "__main__":
    sys.exit(main())
