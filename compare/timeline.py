"""Where a synchronous step's time goes, read from a Horovod timeline (HOROVOD_TIMELINE). No TensorFlow.

Horovod writes the timeline on rank 0 only, as Chrome-trace events: one "process" (pid) per tensor name;
per exchange of that tensor a NEGOTIATE_ALLREDUCE span (from the first rank announcing the tensor ready
to the last one doing so), then an ALLREDUCE span holding the Gloo/MPI operation and the fusion-buffer
copies. A gradient tensor is exchanged once per step, so its k-th exchange belongs to step k.

Per step k, with R(k) = first announcement, L(k) = last first-announcement of any tensor (the fastest
rank has finished backward), A(k) = the moment the last tensor was ready on every rank, E(k) = end of
the last allreduce, E(k-1) the previous step's end:
  before_comm   E(k-1) -> R(k)   forward, the start of backward, the optimizer's apply, input
  backward      R(k)   -> L(k)   backward still running while early gradients negotiate and reduce
  wait_other    L(k)   -> A(k)   waiting for the slower rank to announce its last gradients
  exposed_comm  A(k)   -> E(k)   reduction left after every rank is done (not hidden by compute)
and, overlapping those: allreduce_busy (union of the Gloo/MPI operation spans), memcpy_busy (fusion
buffer copies), start_latency (all ranks ready -> the operation starts: cycle time and queueing),
messages (distinct fused operations) and tensors per step.
"""
from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict

OPERATIONS = ("GLOO_ALLREDUCE", "MPI_ALLREDUCE", "NCCL_ALLREDUCE")
PHASES = ("before_comm", "backward", "wait_other", "exposed_comm")


class TimelineError(ValueError):
    """The file is not a Horovod timeline with repeated allreduces."""


def load_events(path: str) -> list[dict]:
    """The events of a timeline file; Horovod leaves the JSON array open when the process is killed."""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip().rstrip(",")
    if not text.startswith("["):
        raise TimelineError(f"{path}: not a Horovod timeline (no JSON array)")
    if not text.endswith("]"):
        text += "]"
    try:
        return json.loads(text)
    except ValueError as e:
        raise TimelineError(f"{path}: unreadable timeline: {e}") from None


def spans(events: list[dict]) -> dict[int, list[tuple[str, float, float]]]:
    """Per tensor (pid): (activity, begin, end) in microseconds, nested B/E pairs matched."""
    out: dict[int, list[tuple[str, float, float]]] = defaultdict(list)
    open_: dict[int, list[tuple[str, float]]] = defaultdict(list)
    for e in events:
        ph, pid = e.get("ph"), e.get("pid")
        if ph == "B":
            open_[pid].append((e["name"], float(e["ts"])))
        elif ph == "E" and open_[pid]:
            name, t0 = open_[pid].pop()
            out[pid].append((name, t0, float(e["ts"])))
    return out


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


DTYPE_BYTES = {"uint8": 1, "int8": 1, "bool": 1, "byte": 1, "uint16": 2, "int16": 2, "float16": 2, "bfloat16": 2,
               "int32": 4, "float32": 4, "int64": 8, "float64": 8}


def _gradient_exchanges(events: list[dict], skip_steps: int) -> tuple[dict[int, list[dict]], int]:
    """{pid: [exchange k]} of the gradient tensors (exchanged once per step) and the step count."""
    per_tensor = spans(events)
    exchanges: dict[int, list[dict]] = {}
    for pid, items in per_tensor.items():
        negotiations = sorted((b, e) for name, b, e in items if name == "NEGOTIATE_ALLREDUCE")
        reductions = sorted((b, e) for name, b, e in items if name == "ALLREDUCE")
        ops = sorted((b, e) for name, b, e in items if name in OPERATIONS)
        copies = [(b, e) for name, b, e in items if name.startswith("MEMCPY_")]
        if negotiations and len(negotiations) == len(reductions) == len(ops):
            exchanges[pid] = [{"neg": n, "red": r, "op": o} for n, r, o in zip(negotiations, reductions, ops)]
            for x in exchanges[pid]:
                x["copies"] = [c for c in copies if x["red"][0] <= c[0] <= x["red"][1]]
    if not exchanges:
        raise TimelineError("no allreduce in the timeline")
    # Gradient tensors: exchanged the most often (once per step); BN/metric averages are rarer.
    steps = statistics.mode(len(v) for v in exchanges.values())
    grads = {pid: v for pid, v in exchanges.items() if len(v) == steps}
    if steps <= skip_steps + 1:
        raise TimelineError(f"only {steps} steps in the timeline; need more than {skip_steps + 1}")
    return grads, steps


def step_breakdown(events: list[dict], skip_steps: int = 2) -> dict:
    """Median per-step phases (seconds) over the steps after `skip_steps` warm-up steps."""
    grads, steps = _gradient_exchanges(events, skip_steps)
    rows = []
    prev_end = max(v[skip_steps - 1]["red"][1] for v in grads.values()) if skip_steps else None
    for k in range(skip_steps, steps):
        xs = [v[k] for v in grads.values()]
        first = min(x["neg"][0] for x in xs)
        last_announce = max(x["neg"][0] for x in xs)
        all_ready = max(x["neg"][1] for x in xs)
        end = max(x["red"][1] for x in xs)
        ops = [x["op"] for x in xs]
        row = {"step_s": (end - prev_end) / 1e6 if prev_end is not None else None,
               "before_comm": (first - prev_end) / 1e6 if prev_end is not None else None,
               "backward": (last_announce - first) / 1e6,
               "wait_other": (all_ready - last_announce) / 1e6,
               "exposed_comm": (end - all_ready) / 1e6,
               "allreduce_busy": _union(ops) / 1e6,
               "memcpy_busy": _union([c for x in xs for c in x["copies"]]) / 1e6,
               "start_latency": statistics.median(x["red"][0] - x["neg"][1] for x in xs) / 1e6,
               "messages": len({round(o[0] / 100) for o in ops}), "tensors": len(xs)}
        rows.append(row)
        prev_end = end
    keys = [k for k in rows[0] if any(r[k] is not None for r in rows)]
    return {"steps": len(rows), "tensors_per_step": len(grads),
            **{k: statistics.median(r[k] for r in rows if r[k] is not None) for k in keys}}


def breakdown(path: str, skip_steps: int = 2) -> dict:
    return step_breakdown(load_events(path), skip_steps)


def tensor_bytes(events: list[dict]) -> dict[int, int]:
    """{pid: bytes} from the args {'dtype', 'shape'} Horovod writes on each ALLREDUCE's end event
    (dtype "float32", shape "[3, 3, 64, 128]"); the largest seen per tensor."""
    out: dict[int, int] = {}
    open_: dict[int, list[str]] = defaultdict(list)
    for e in events:
        ph, pid = e.get("ph"), e.get("pid")
        if ph == "B":
            open_[pid].append(e.get("name", ""))
        elif ph == "E" and open_[pid]:
            if open_[pid].pop() != "ALLREDUCE":
                continue
            args = e.get("args") or {}
            dtype = str(args.get("dtype", "")).lower().removeprefix("horovod_")
            shape = args.get("shape")
            if dtype not in DTYPE_BYTES or shape is None:
                continue
            dims = shape if isinstance(shape, list) else [d for d in str(shape).strip("[]() ").split(",") if d.strip()]
            try:
                n = DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims)
            except ValueError:
                continue
            out[pid] = max(out.get(pid, 0), n)
    return out


def ready_curve(events: list[dict], skip_steps: int = 2) -> dict:
    """The gradient-ready curve of a synchronous step, in the form compare.scaling.exposed_comm takes
    (the H200 anchor's form): cumulative [fraction of the backward window elapsed, fraction of the
    gradient bytes ready], sorted.

    Per step k after the warm-up: each gradient tensor's first-rank announce (NEGOTIATE begins) as
    (announce - R(k)) / (L(k) - R(k)), R/L the step's first and last announce (the backward window
    of step_breakdown); per tensor the median over steps; bytes from the ALLREDUCE end event's
    dtype and shape. Also returned: backward_fraction = median over steps of the backward window over
    (before_comm + backward), the fastest rank's compute, so that bf x t_compute of a 1-worker run
    is the window the curve spans; and the step's measured wait_other and exposed_comm (medians, s).
    """
    grads, steps = _gradient_exchanges(events, skip_steps)
    sizes = tensor_bytes(events)
    missing = [pid for pid in grads if not sizes.get(pid)]
    if missing:
        raise TimelineError(f"{len(missing)} gradient tensors have no dtype/shape on their ALLREDUCE end event")
    xs: dict[int, list[float]] = defaultdict(list)
    fractions = []
    prev_end = max(v[skip_steps - 1]["red"][1] for v in grads.values()) if skip_steps else None
    for k in range(skip_steps, steps):
        first = min(v[k]["neg"][0] for v in grads.values())
        last = max(v[k]["neg"][0] for v in grads.values())
        if last > first:                     # one fused announce: no window to place tensors in
            for pid, v in grads.items():
                xs[pid].append((v[k]["neg"][0] - first) / (last - first))
            if prev_end is not None and last > prev_end:
                fractions.append((last - first) / (last - prev_end))
        prev_end = max(v[k]["red"][1] for v in grads.values())
    if not xs:
        raise TimelineError("every step announced its gradients at one instant: no backward window")
    total = sum(sizes[pid] for pid in grads)
    at = sorted((statistics.median(xs[pid]), sizes[pid]) for pid in grads)
    curve: list[list[float]] = []
    done = 0
    for x, n in at:
        done += n
        if curve and curve[-1][0] == x:
            curve[-1][1] = done / total
        else:
            curve.append([x, done / total])
    phases = step_breakdown(events, skip_steps)
    return {"ready_curve": curve, "grad_bytes": total, "tensors": len(grads), "steps": steps - skip_steps,
            "backward_fraction": statistics.median(fractions) if fractions else None,
            "wait_other_s": phases["wait_other"], "exposed_comm_s": phases["exposed_comm"],
            "backward_s": phases["backward"], "step_s": phases.get("step_s")}


def ready_curve_file(path: str, skip_steps: int = 2) -> dict:
    """ready_curve of a timeline file."""
    return ready_curve(load_events(path), skip_steps)
