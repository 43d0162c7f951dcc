"""One frozen RunConfig; the command line of both trainers is generated from it."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
from dataclasses import dataclass, field

from train import record
from train.model import HEADS, MIN_IMAGE_SIZE

DATASETS = ("synthetic", "digits", "imagenet2012")  # plus folder:PATH
COMPRESSIONS = ("none", "fp16", "powersgd:R", "topk:F", "sign")  # the sync arm's; train/compression.py
PRECISIONS = ("fp32", "mixed_fp16", "mixed_bf16")
CLI_ROLES = tuple(r for r in record.ROLES if r != "bench")  # a bench is not a training run
LR_RULES = ("linear", "capped")  # train/async_allreduce.py


class ConfigError(ValueError):
    """Bad user input: reported as one line, exit code 2, nothing written."""


def _opt(help: str, default, arms: tuple[str, ...] = ("sync", "async"), **kw):
    return field(default=default, metadata={"help": help, "arms": arms, **kw})


@dataclass(frozen=True)
class RunConfig:
    # What to train
    dataset: str = _opt("synthetic | digits | imagenet2012 | folder:PATH", "synthetic")
    data_dir: str = _opt("TFDS data dir (imagenet2012) ", "")
    manual_dir: str = _opt("folder holding ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar", "")
    head: str = _opt(f"classifier head: {' | '.join(HEADS)}", HEADS[0])
    width: float = _opt("channel multiplier of every conv (1.0 = the paper's cnn11)", 1.0)
    image_size: int = _opt(f"input side in pixels (>= {MIN_IMAGE_SIZE})", MIN_IMAGE_SIZE)
    num_classes: int = _opt("classes of the synthetic dataset (others take the dataset's)", 10)
    # How to train
    per_worker_batch: int = _opt("images per worker per step", 64)
    epochs: int = _opt("epochs", 1)
    steps_per_epoch: int = _opt("steps per epoch (0: one pass over the worker's shard; synthetic: 20)", 0)
    warmup_steps: int = _opt("steps excluded from the images/sec measurement", 5)
    lr: float = _opt("base learning rate per worker (sync scales it by the worker count)", 0.05)
    momentum: float = _opt("SGD momentum", 0.9)
    lr_warmup_epochs: float = _opt("epochs of linear learning-rate warm-up", 0.0)
    compression: str = _opt("gradient compression on the wire: none | fp16 | powersgd:R (rank R) | "
                            "topk:F[:W] (fraction F, W warm-up epochs, default 4) | sign", "none")
    precision: str = _opt("fp32 | mixed_fp16 | mixed_bf16 (mixed precision is for GPUs)", "fp32")
    seed: int = _opt("random seed", 0)
    intra_op_threads: int = _opt("TensorFlow intra-op threads per process (0: TensorFlow's default)", 0)
    # Async cluster (the local launcher)
    workers: int = _opt("worker processes of the local cluster", 1, ("async",))
    ps: int = _opt("parameter-server processes (variables are sharded over them)", 1, ("async",))
    # Where results go
    results_dir: str = _opt("results root; the record goes to RESULTS_DIR/STUDY/runs.jsonl", "results")
    study: str = _opt("study name", "local")
    run_id: str = _opt("run id (default: SLURM_JOB_ID or a timestamp)", "")
    role: str = _opt("main (a run of the study) | ceiling (one of --copies independent runs side by side)", "main")
    copies: int = _opt("how many independent copies of this run ran side by side", 1)
    checkpoint_dir: str = _opt("save model+optimizer here every epoch; a rerun resumes from the newest", "")
    # Async all-reduce (train/async_allreduce.py): a test/emulation knob, not a tuning option
    comm_delay_ms: float = _opt("sleep this long in the communication thread before each all-reduce "
                                "(emulates a slow interconnect)", 0.0, ("async_allreduce",))
    lr_rule: str = _opt("learning rate of an update summing k sub-batches: linear (lr*k) | capped "
                        "(lr*min(k, workers): the sync arm's step, never more)", "linear", ("async_allreduce",))

    @property
    def runs_path(self) -> str:
        return record.runs_path(self.results_dir, self.study)

    def validate(self) -> "RunConfig":
        """Raise ConfigError naming the first bad value; checks the results dir is writable."""
        if not (self.dataset in DATASETS or self.dataset.startswith("folder:")):
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose {', '.join(DATASETS)} or folder:PATH")
        if self.dataset.startswith("folder:") and not os.path.isdir(self.dataset[7:]):
            raise ConfigError(f"dataset folder not found: {self.dataset[7:]}")
        if self.dataset == "imagenet2012":
            if not self.manual_dir:
                raise ConfigError("imagenet2012 needs --manual-dir (the folder holding the ILSVRC2012 tars)")
            for tar in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
                if not os.path.isfile(os.path.join(self.manual_dir, tar)):
                    raise ConfigError(f"manual dir {self.manual_dir} has no {tar}")
        if self.head not in HEADS:
            raise ConfigError(f"unknown head {self.head!r}; choose {', '.join(HEADS)}")
        parse_compression(self.compression)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}")
        if self.role not in CLI_ROLES:
            raise ConfigError(f"unknown role {self.role!r}; choose {', '.join(CLI_ROLES)}")
        positive = {"per-worker-batch": self.per_worker_batch, "epochs": self.epochs, "copies": self.copies,
                    "workers": self.workers, "ps": self.ps, "lr": self.lr, "width": self.width,
                    "num-classes": self.num_classes}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name} must be > 0, got {value}")
        nonnegative = {"steps-per-epoch": self.steps_per_epoch, "warmup-steps": self.warmup_steps,
                       "lr-warmup-epochs": self.lr_warmup_epochs, "intra-op-threads": self.intra_op_threads,
                       "momentum": self.momentum}
        for name, value in nonnegative.items():
            if value < 0:
                raise ConfigError(f"--{name} must be >= 0, got {value}")
        if self.lr_rule not in LR_RULES:
            raise ConfigError(f"unknown lr rule {self.lr_rule!r}; choose {', '.join(LR_RULES)}")
        if self.comm_delay_ms < 0:
            raise ConfigError(f"--comm-delay-ms must be >= 0, got {self.comm_delay_ms}")
        if self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"--image-size must be >= {MIN_IMAGE_SIZE} (cnn11 pools 5 times by 2), "
                              f"got {self.image_size}")
        if not self.study or os.sep in self.study or self.study.startswith("."):
            raise ConfigError(f"bad study name {self.study!r}")
        check_writable_dir(os.path.join(self.results_dir, self.study))
        if self.checkpoint_dir:
            check_writable_dir(self.checkpoint_dir, "--checkpoint-dir")
        return self


@dataclass(frozen=True)
class CompressionSpec:
    """A parsed --compression: method and its parameters (rank, density, density warm-up epochs)."""
    method: str
    rank: int = 0
    density: float = 1.0
    warmup_epochs: int = 0


def parse_compression(text: str) -> CompressionSpec:
    """none | fp16 | sign | powersgd:R | topk:F[:W]; ConfigError naming what is wrong."""
    method, _, rest = text.partition(":")
    parts = rest.split(":") if rest else []
    if method in ("none", "fp16", "sign") and not parts:
        return CompressionSpec(method)
    if method == "powersgd" and len(parts) == 1:
        if not parts[0].isdigit() or int(parts[0]) < 1:
            raise ConfigError(f"bad compression {text!r}: powersgd:R needs an integer rank R >= 1")
        return CompressionSpec(method, rank=int(parts[0]))
    if method == "topk" and len(parts) in (1, 2):
        try:
            density = float(parts[0])
        except ValueError:
            density = float("nan")
        if not 0 < density <= 1:
            raise ConfigError(f"bad compression {text!r}: topk:F needs a fraction 0 < F <= 1")
        if len(parts) == 2 and not parts[1].isdigit():
            raise ConfigError(f"bad compression {text!r}: topk:F:W needs whole warm-up epochs W >= 0")
        return CompressionSpec(method, density=density, warmup_epochs=int(parts[1]) if len(parts) == 2 else 4)
    raise ConfigError(f"unknown compression {text!r}; choose {', '.join(COMPRESSIONS)}")


def check_writable_dir(path: str, what: str = "results dir") -> None:
    """ConfigError unless `path` is, or could be made as, a writable dir. Leaves nothing behind."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{what} is not writable: {path} ({probe} is not a directory)")
    try:  # os.access says yes to root everywhere; a real file creation tells the truth
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ConfigError(f"{what} is not writable: {path} ({e.strerror})") from None


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse would print the usage too)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _arms(f: dataclasses.Field) -> tuple[str, ...]:
    """The async all-reduce arm takes every option of the sync arm (plus its own fields)."""
    arms = f.metadata["arms"]
    if "sync" in arms:
        arms = (*arms, "async_allreduce")
    return arms


def build_parser(arm: str, prog: str | None = None) -> argparse.ArgumentParser:
    """argparse from RunConfig's fields for one arm ('sync', 'async' or 'async_allreduce'); defaults shown."""
    parser = _OneLineParser(prog=prog, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                            allow_abbrev=False)
    for f in dataclasses.fields(RunConfig):
        if arm not in _arms(f):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
        parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"])
    return parser


def parse_config(argv: list[str] | None, arm: str, prog: str | None = None,
                 extra: argparse.ArgumentParser | None = None) -> tuple[RunConfig, argparse.Namespace]:
    """Parse argv into a validated RunConfig (exit 2 with one line on bad input) plus any extra args."""
    parser = build_parser(arm, prog)
    if extra is not None:
        for action in extra._actions:
            if action.option_strings and action.dest != "help":
                parser._add_action(action)
    ns = parser.parse_args(argv)
    names = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in vars(ns).items() if k in names})
    try:
        cfg.validate()
    except ConfigError as e:
        parser.error(str(e))
    rest = argparse.Namespace(**{k: v for k, v in vars(ns).items() if k not in names})
    return cfg, rest
