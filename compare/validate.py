"""`python -m compare validate`: the scaling model against published multi-GPU results (issue 12).

Reads a file of published points (compare/published/k80.json: source, hardware, network, model,
batch per GPU, GPUs, images/sec), prints predicted vs published efficiency per point and the mean and
max absolute error in points of efficiency. `--fit` refits the file's (at most 3) global parameters on
that file's points only and writes them back into it. Bad input: one line, exit 2, nothing written.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

from compare.scaling import VALIDATION_GLOBALS, ModelError, published_efficiency

DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published", "k80.json")
POINT_FIELDS = {"source": str, "title": str, "table": str, "hardware": str, "network": str, "model": str,
                "batch_per_gpu": int, "gpus": int, "gpus_per_node": int, "images_per_sec": (int, float)}
# The fit's grid and objective, stated so that the file's globals can be reproduced.
GRID = {"overhead_s": [i * 0.005 for i in range(0, 31)],
        "hidden_fraction": [i * 0.02 for i in range(0, 41)],
        "step_cv": [i * 0.0025 for i in range(0, 21)]}


class OneLineParser(argparse.ArgumentParser):
    """Bad flags: one line on stderr and exit 2 (the project's bad-input rule), no usage block."""

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


OBJECTIVE = "minimise mean |error| + 0.25 x max |error| (points of efficiency) over the grid GRID in compare/validate.py"


def load(path: str) -> dict:
    """The published set, schema-checked (ModelError names the first problem)."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ModelError(f"cannot read {path}: {e.strerror}")
    except json.JSONDecodeError as e:
        raise ModelError(f"{path} is not JSON: {e.msg} at line {e.lineno}")
    if not isinstance(doc, dict) or not isinstance(doc.get("points"), list) or not doc["points"]:
        raise ModelError(f"{path}: needs a non-empty 'points' list")
    models = doc.get("models")
    if not isinstance(models, dict):
        raise ModelError(f"{path}: needs 'models' {{name: {{params, source}}}}")
    bw = (doc.get("network") or {}).get("distributed_Bps")
    if not isinstance(bw, (int, float)) or bw <= 0:
        raise ModelError(f"{path}: needs network.distributed_Bps > 0")
    for i, pt in enumerate(doc["points"]):
        for k, kind in POINT_FIELDS.items():
            if not isinstance(pt.get(k), kind) or isinstance(pt.get(k), bool):
                raise ModelError(f"{path}: point {i} lacks {k!r} of the right type")
        if pt["gpus"] < 1 or pt["images_per_sec"] <= 0 or pt["batch_per_gpu"] < 1:
            raise ModelError(f"{path}: point {i} has a non-positive gpus, batch or images/sec")
        if not pt["source"].startswith("http"):
            raise ModelError(f"{path}: point {i} source is not a URL")
        if pt["model"] not in models or not isinstance(models[pt["model"]].get("params"), (int, float)):
            raise ModelError(f"{path}: point {i} model {pt['model']!r} has no params in 'models'")
    g = doc.get("globals") or {}
    if g and (set(g.get("values", {})) != set(VALIDATION_GLOBALS)):
        raise ModelError(f"{path}: globals.values must hold exactly {', '.join(VALIDATION_GLOBALS)}")
    return doc


def _key(pt: dict) -> tuple:
    return pt["table"], pt["model"], pt["batch_per_gpu"]


def rows(doc: dict, g: dict) -> list[dict]:
    """One row per multi-GPU point: published and predicted efficiency, error in points."""
    base = {_key(pt): pt["images_per_sec"] for pt in doc["points"] if pt["gpus"] == 1}
    bw = doc["network"]["distributed_Bps"]
    out = []
    for pt in doc["points"]:
        if pt["gpus"] == 1:
            continue
        if _key(pt) not in base:
            raise ModelError(f"no 1-GPU point for {pt['model']} batch {pt['batch_per_gpu']} in table {pt['table']!r}")
        b1 = base[_key(pt)]
        published = pt["images_per_sec"] / (pt["gpus"] * b1)
        predicted = published_efficiency(pt, b1, doc["models"][pt["model"]]["params"], bw, g)
        out.append({"table": pt["table"], "model": pt["model"], "batch_per_gpu": pt["batch_per_gpu"],
                    "gpus": pt["gpus"], "published_eff": published, "predicted_eff": predicted,
                    "error_pts": 100.0 * (predicted - published), "source": pt["source"]})
    return out


def summary(rs: list[dict]) -> tuple[float, float]:
    errs = [abs(r["error_pts"]) for r in rs]
    return sum(errs) / len(errs), max(errs)


def fit(doc: dict) -> tuple[dict, float, float]:
    """Grid search of the globals on this file's points only (OBJECTIVE)."""
    best = None
    for values in itertools.product(*(GRID[k] for k in VALIDATION_GLOBALS)):
        g = dict(zip(VALIDATION_GLOBALS, values))
        mean, mx = summary(rows(doc, g))
        score = mean + 0.25 * mx
        if best is None or score < best[0] - 1e-12:
            best = (score, g, mean, mx)
    return best[1], best[2], best[3]


def format_table(rs: list[dict], mean: float, mx: float, g: dict) -> str:
    lines = [f"{'model':<11}{'batch':>6}{'GPUs':>6}{'published':>11}{'predicted':>11}{'error':>8}  table"]
    for r in rs:
        lines.append(f"{r['model']:<11}{r['batch_per_gpu']:>6}{r['gpus']:>6}{r['published_eff']:>11.3f}"
                     f"{r['predicted_eff']:>11.3f}{r['error_pts']:>+8.1f}  {r['table']}")
    lines.append(f"mean |error| {mean:.2f} points, max |error| {mx:.2f} points over {len(rs)} points "
                 f"(goal: mean <= 3, max <= 6: {'met' if mean <= 3 and mx <= 6 else 'NOT met'})")
    lines.append("globals: " + ", ".join(f"{k} = {g[k]:g}" for k in VALIDATION_GLOBALS))
    sources = sorted({r["source"] for r in rs})
    lines += [f"source: {s}" for s in sources]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="compare validate", description=__doc__, allow_abbrev=False)
    parser.add_argument("--file", default=DEFAULT_FILE, help="published points (JSON)")
    parser.add_argument("--fit", action="store_true", help="refit the globals on this file and write them into it")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        doc = load(args.file)
        if args.fit:
            g, mean, mx = fit(doc)
        else:
            if not doc.get("globals"):
                raise ModelError(f"{args.file} has no fitted globals; run `compare validate --fit` first")
            g = doc["globals"]["values"]
        rs = rows(doc, g)
        mean, mx = summary(rs)
    except ModelError as e:
        print(f"compare validate: error: {e}", file=sys.stderr)
        return 2
    if args.fit:
        doc["globals"] = {
            "generation": doc.get("hardware_generation", ""),
            "values": g,
            "meaning": {"overhead_s": "fixed seconds a step loses from 2 GPUs on (sync, PS variable update)",
                        "hidden_fraction": "share of the PS traffic through the busiest NIC hidden behind compute",
                        "step_cv": "coefficient of variation of one GPU's step time (straggler term, normal)"},
            "fitted_on": f"the {len([r for r in rs])} multi-GPU points of this file only",
            "objective": OBJECTIVE,
            "mean_abs_error_pts": round(mean, 3), "max_abs_error_pts": round(mx, 3)}
        tmp = args.file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        os.replace(tmp, args.file)
    print(format_table(rs, mean, mx, g))
    return 0


if __name__ == "__main__":
    sys.exit(main())
