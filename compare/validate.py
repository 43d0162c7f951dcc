"""`python -m compare validate`: the scaling model against published multi-GPU results (issue 12).

Reads a file of published points (compare/published/k80.json: source, hardware, network, model,
batch per GPU, GPUs, images/sec), prints predicted vs published efficiency per point and the mean and
max absolute error in points of efficiency, twice over:
- in-sample (fit): with the file's globals, which were fitted on these same points. This says how well
  the fit reproduces its own data; it is not a validation.
- out-of-sample (cross-validated): each point predicted by globals fitted without it, leaving out one
  model (Inception V3 / ResNet-50 / ResNet-152) or one configuration (single-server / distributed) at
  a time. Only these numbers validate the model.
`--fit` refits the file's (at most 3) global parameters on that file's points only and writes them,
with both sets of errors, back into it; `--markdown FILE` writes the block the report shows.
Bad input: one line, exit 2, nothing written.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from compare.scaling import VALIDATION_GLOBALS, ModelError, published_components, published_efficiency

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


def configurations(doc: dict) -> dict[str, str]:
    """{table: "distributed" | "single-server"}: a table is distributed when one of its points spans
    more than one node (from the points themselves, not from the table's title)."""
    out: dict[str, str] = {}
    for pt in doc["points"]:
        multi = pt["gpus"] > pt["gpus_per_node"]
        out[pt["table"]] = "distributed" if multi or out.get(pt["table"]) == "distributed" else "single-server"
    return out


def _multi(doc: dict) -> list[tuple[dict, float, float, tuple[float, float, float]]]:
    """(point, 1-GPU images/s, published efficiency, published_components) of each multi-GPU point."""
    base = {_key(pt): pt["images_per_sec"] for pt in doc["points"] if pt["gpus"] == 1}
    bw = doc["network"]["distributed_Bps"]
    out = []
    for pt in doc["points"]:
        if pt["gpus"] == 1:
            continue
        if _key(pt) not in base:
            raise ModelError(f"no 1-GPU point for {pt['model']} batch {pt['batch_per_gpu']} in table {pt['table']!r}")
        b1 = base[_key(pt)]
        comps = published_components(pt, b1, doc["models"][pt["model"]]["params"], bw)
        out.append((pt, b1, pt["images_per_sec"] / (pt["gpus"] * b1), comps))
    return out


def rows(doc: dict, g: dict) -> list[dict]:
    """One row per multi-GPU point: published and predicted efficiency, error in points."""
    bw = doc["network"]["distributed_Bps"]
    conf = configurations(doc)
    out = []
    for pt, b1, published, _ in _multi(doc):
        predicted = published_efficiency(pt, b1, doc["models"][pt["model"]]["params"], bw, g)
        out.append({"table": pt["table"], "configuration": conf[pt["table"]], "model": pt["model"],
                    "batch_per_gpu": pt["batch_per_gpu"], "gpus": pt["gpus"], "published_eff": published,
                    "predicted_eff": predicted, "error_pts": 100.0 * (predicted - published), "source": pt["source"]})
    return out


def summary(rs: list[dict]) -> tuple[float, float]:
    if not rs:
        raise ModelError("no multi-GPU points to score")
    errs = [abs(r["error_pts"]) for r in rs]
    return sum(errs) / len(errs), max(errs)


def fit(doc: dict, grid: dict[str, list[float]] | None = None) -> tuple[dict, float, float]:
    """Grid search of the globals on this doc's points only (OBJECTIVE), vectorised over the grid
    (published_components x globals); ties within 1e-12 go to the first grid point in
    itertools.product order. Mean and max are then recomputed by rows() (the scalar model)."""
    grid = grid or GRID
    pts = _multi(doc)
    if not pts:
        raise ModelError("no multi-GPU points to fit the globals on")
    axes = np.meshgrid(*(np.asarray(grid[k], dtype=float) for k in VALIDATION_GLOBALS), indexing="ij")
    o, h, cv = (a.reshape(-1, 1) for a in axes)          # C order = itertools.product order
    tc = np.array([c[0] for *_, c in pts]); comm = np.array([c[1] for *_, c in pts])
    nmf = np.array([c[2] for *_, c in pts]); pub = np.array([e for _, _, e, _ in pts])
    eff = tc / (tc + cv * tc * nmf + o + (1.0 - h) * comm)
    err = 100.0 * np.abs(eff - pub)
    score = err.mean(axis=1) + 0.25 * err.max(axis=1)
    i = int(np.flatnonzero(score <= score.min() + 1e-12)[0])
    g = {k: float(a.reshape(-1)[i]) for k, a in zip(VALIDATION_GLOBALS, axes)}
    mean, mx = summary(rows(doc, g))
    return g, mean, mx


def _subset(doc: dict, keep) -> dict:
    return {**doc, "points": [pt for pt in doc["points"] if keep(pt)]}


def _grouper(doc: dict, scheme: str):
    conf = configurations(doc)
    return (lambda pt: pt["model"]) if scheme == "model" else (lambda pt: conf[pt["table"]])


def possible_schemes(doc: dict) -> list[str]:
    """The cross-validation schemes this doc has at least two groups for."""
    return [s for s in CV_SCHEMES if len({_grouper(doc, s)(pt) for pt in doc["points"]}) >= 2]


CV_SCHEMES = {"model": "leave one model out", "configuration": "leave one configuration out (single-server / distributed)"}


def cross_validate(doc: dict, scheme: str, grid: dict[str, list[float]] | None = None) -> dict:
    """Out-of-sample errors: for each group (a model, or a configuration), fit the globals on the
    other groups' points only and predict the held-out group's points with them. The held-out
    group's 1-GPU rates are inputs (compute), never fitted. Returns folds and every held-out row."""
    if scheme not in CV_SCHEMES:
        raise ModelError(f"unknown cross-validation scheme {scheme!r}; choose from {', '.join(CV_SCHEMES)}")
    group = _grouper(doc, scheme)
    names = list(dict.fromkeys(group(pt) for pt in doc["points"]))
    if len(names) < 2:
        raise ModelError(f"{scheme}: needs at least two groups to hold one out, found {names}")
    folds, oos = [], []
    for name in names:
        train = _subset(doc, lambda pt: group(pt) != name)
        test = _subset(doc, lambda pt: group(pt) == name)
        g, tr_mean, tr_max = fit(train, grid)
        # a global no training point depends on keeps the grid's first value: say so
        idle = [] if any(c[1] > 0 for *_, c in _multi(train)) else ["hidden_fraction"]
        held = rows(test, g)
        for r in held:
            r["held_out"] = name
        folds.append({"held_out": name, "values": g, "train_points": len(_multi(train)), "test_points": len(held),
                      "train_mean_pts": tr_mean, "train_max_pts": tr_max, "not_identified": idle,
                      "test_mean_pts": summary(held)[0] if held else None})
        oos += held
    mean, mx = summary(oos)
    return {"scheme": scheme, "label": CV_SCHEMES[scheme], "folds": folds, "rows": oos, "mean_pts": mean, "max_pts": mx}


def _goal(mean: float, mx: float) -> str:
    return f"goal mean <= 3, max <= 6: {'met' if mean <= 3 and mx <= 6 else 'NOT met'}"


def format_table(rs: list[dict], mean: float, mx: float, g: dict, label: str = "in-sample (fit)",
                 fold_col: bool = False) -> str:
    lines = [f"{'model':<11}{'batch':>6}{'GPUs':>6}{'published':>11}{'predicted':>11}{'error':>8}  "
             + ("held out in fold  " if fold_col else "") + "table"]
    for r in rs:
        lines.append(f"{r['model']:<11}{r['batch_per_gpu']:>6}{r['gpus']:>6}{r['published_eff']:>11.3f}"
                     f"{r['predicted_eff']:>11.3f}{r['error_pts']:>+8.1f}  "
                     + (f"{r['held_out']:<18}" if fold_col else "") + r["table"])
    lines.append(f"{label}: mean |error| {mean:.2f} points, max |error| {mx:.2f} points over {len(rs)} points")
    if g:
        lines.append("globals: " + ", ".join(f"{k} = {g[k]:g}" for k in VALIDATION_GLOBALS))
    return "\n".join(lines)


IN_SAMPLE_NOTE = ("in-sample (fit): the globals were fitted on these same points, so these errors measure "
                  "how well the fit reproduces its own data, not a validation")
OOS_NOTE = ("out-of-sample (cross-validated): every point is predicted with globals fitted without it "
            "(and without the rest of its group); this is the model's validation")


def evaluate(doc: dict, g: dict, schemes: list[str], grid: dict[str, list[float]] | None = None) -> dict:
    """In-sample rows with the given globals, and one cross-validation per scheme."""
    rs = rows(doc, g)
    mean, mx = summary(rs)
    return {"in_sample": {"values": g, "rows": rs, "mean_pts": mean, "max_pts": mx},
            "cross_validated": {s: cross_validate(doc, s, grid) for s in schemes}}


def format_result(res: dict) -> str:
    ins = res["in_sample"]
    out = [IN_SAMPLE_NOTE,
           format_table(ins["rows"], ins["mean_pts"], ins["max_pts"], ins["values"], "in-sample (fit)"), ""]
    for cv in res["cross_validated"].values():
        out.append(f"out-of-sample (cross-validated, {cv['label']}):")
        out.append(format_table(cv["rows"], cv["mean_pts"], cv["max_pts"], {},
                                f"out-of-sample (cross-validated, {cv['label']})", fold_col=True)
                   + f" ({_goal(cv['mean_pts'], cv['max_pts'])})")
        for f in cv["folds"]:
            out.append(f"  fold without {f['held_out']}: fitted on {f['train_points']} points: "
                       + ", ".join(f"{k} = {f['values'][k]:g}" for k in VALIDATION_GLOBALS)
                       + (f" ({', '.join(f['not_identified'])} not identified by the training points: grid's first value)"
                          if f["not_identified"] else "")
                       + f"; held-out mean |error| {f['test_mean_pts']:.2f}")
        out.append("")
    if res["cross_validated"]:
        out.append(OOS_NOTE)
    sources = sorted({r["source"] for r in ins["rows"]})
    out += [f"source: {s}" for s in sources]
    return "\n".join(out)


def markdown(res: dict) -> str:
    """The block the report shows: in-sample and out-of-sample numbers under those labels."""
    ins = res["in_sample"]
    md = ["| errors (points of efficiency) | points | mean abs | max abs | goal (mean <= 3, max <= 6) |",
          "|---|---:|---:|---:|---|",
          f"| in-sample (fit): globals fitted on all points | {len(ins['rows'])} | {ins['mean_pts']:.2f} | "
          f"{ins['max_pts']:.2f} | not a validation |"]
    for cv in res["cross_validated"].values():
        md.append(f"| out-of-sample (cross-validated, {cv['label']}) | {len(cv['rows'])} | {cv['mean_pts']:.2f} | "
                  f"{cv['max_pts']:.2f} | {'met' if cv['mean_pts'] <= 3 and cv['max_pts'] <= 6 else 'NOT met'} |")
    md += ["", "In-sample globals: " + ", ".join(f"{k} = {ins['values'][k]:g}" for k in VALIDATION_GLOBALS) + "."]
    for cv in res["cross_validated"].values():
        for f in cv["folds"]:
            md.append(f"- {cv['label']}, without {f['held_out']}: "
                      + ", ".join(f"{k} = {f['values'][k]:g}" for k in VALIDATION_GLOBALS)
                      + (f" ({', '.join(f['not_identified'])} not identified by the training points)" if f["not_identified"] else "")
                      + f"; held-out mean |error| {f['test_mean_pts']:.2f} over {f['test_points']} points")
    md += ["", IN_SAMPLE_NOTE[0].upper() + IN_SAMPLE_NOTE[1:] + ".", OOS_NOTE[0].upper() + OOS_NOTE[1:] + "."]
    return "\n".join(md)


def report_markdown(path: str = DEFAULT_FILE) -> str:
    """For compare/report.py: the K80 block with the file's globals, both cross-validations run
    live (well under a second), labelled in-sample (fit) / out-of-sample (cross-validated)."""
    doc = load(path)
    if not doc.get("globals"):
        raise ModelError(f"{path} has no fitted globals; run `compare validate --fit` first")
    return markdown(evaluate(doc, doc["globals"]["values"], possible_schemes(doc)))


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="compare validate", description=__doc__, allow_abbrev=False)
    parser.add_argument("--file", default=DEFAULT_FILE, help="published points (JSON)")
    parser.add_argument("--fit", action="store_true", help="refit the globals on this file and write them into it")
    parser.add_argument("--cv", choices=["all", "none", *CV_SCHEMES], default="all",
                        help="cross-validation scheme(s) for the out-of-sample errors (default: all)")
    parser.add_argument("--markdown", default="", help="also write the in-sample / out-of-sample block here")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    schemes = list(CV_SCHEMES) if args.cv == "all" else [] if args.cv == "none" else [args.cv]
    try:
        doc = load(args.file)
        if args.fit:
            g, _, _ = fit(doc)
            schemes = possible_schemes(doc)     # the file records every out-of-sample figure it can have
        else:
            if not doc.get("globals"):
                raise ModelError(f"{args.file} has no fitted globals; run `compare validate --fit` first")
            g = doc["globals"]["values"]
        res = evaluate(doc, g, schemes)
    except ModelError as e:
        print(f"compare validate: error: {e}", file=sys.stderr)
        return 2
    if args.fit:
        ins = res["in_sample"]
        doc["globals"] = {
            "generation": doc.get("hardware_generation", ""),
            "values": g,
            "meaning": {"overhead_s": "fixed seconds a step loses from 2 GPUs on (sync, PS variable update)",
                        "hidden_fraction": "share of the PS traffic through the busiest NIC hidden behind compute",
                        "step_cv": "coefficient of variation of one GPU's step time (straggler term, normal)"},
            "fitted_on": f"the {len(ins['rows'])} multi-GPU points of this file only",
            "objective": OBJECTIVE,
            "in_sample_fit": {"note": IN_SAMPLE_NOTE, "mean_abs_error_pts": round(ins["mean_pts"], 3),
                              "max_abs_error_pts": round(ins["max_pts"], 3)},
            "out_of_sample_cross_validated": {
                s: {"label": cv["label"], "mean_abs_error_pts": round(cv["mean_pts"], 3),
                    "max_abs_error_pts": round(cv["max_pts"], 3),
                    "folds": [{"held_out": f["held_out"], "values": f["values"], "not_identified": f["not_identified"]}
                              for f in cv["folds"]]}
                for s, cv in res["cross_validated"].items()}}
        _write(args.file, json.dumps(doc, indent=1) + "\n")
    if args.markdown:
        _write(args.markdown, markdown(res) + "\n")
    print(format_result(res))
    return 0


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
