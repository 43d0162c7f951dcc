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


def step_breakdown(events: list[dict], skip_steps: int = 2) -> dict:
    """Median per-step phases (seconds) over the steps after `skip_steps` warm-up steps."""
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
