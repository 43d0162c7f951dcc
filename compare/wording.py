"""The one wording rule of every report (local, convergence, emulated): words follow the numbers. No TensorFlow.

    "within the goal"          |error| <= goal and the point's own SE <= goal
    "consistent within noise"  |error| <= 2 SE but SE > goal (the measurement cannot test the goal)
    "misses"                   otherwise; also when the error or the SE is unknown (one run, no SE)
error and SE are relative (fractions of the measured mean).
Two measurements against each other (difference): higher/lower only beyond 2 SE, else indistinguishable.
"""
from __future__ import annotations

import math

GOAL = 0.05
VERDICTS = ("within the goal", "consistent within noise", "misses")


def verdict(error: float, se: float, goal: float = GOAL) -> str:
    if error is None or se is None or math.isnan(error) or math.isnan(se):
        return "misses"
    if abs(error) <= goal and se <= goal:
        return "within the goal"
    if abs(error) <= 2 * se and se > goal:
        return "consistent within noise"
    return "misses"


def sentence(error: float, se: float, goal: float = GOAL) -> str:
    """'+3.1% (SE 2.0%, goal 5%): within the goal' and the like, for the report's lines."""
    err = "–" if error is None or math.isnan(error) else f"{error * 100:+.1f}%"
    s = "unknown" if se is None or math.isnan(se) else f"{se * 100:.1f}%"
    return f"{err} (SE {s}, goal {goal * 100:.0f}%): {verdict(error, se, goal)}"


def difference(a: float, se_a: float, b: float, se_b: float) -> tuple[str, float, float]:
    """a against b: ('higher' | 'lower' | 'indistinguishable' | 'untestable', a/b - 1, its SE by the delta
    method). higher/lower only when the relative difference exceeds 2 SE; untestable when an SE is unknown."""
    if any(v is None or math.isnan(v) for v in (a, b)) or not b:
        return "untestable", math.nan, math.nan
    rel = a / b - 1
    if any(v is None or math.isnan(v) for v in (se_a, se_b)) or not a:
        return "untestable", rel, math.nan
    se = (a / b) * math.sqrt((se_a / a) ** 2 + (se_b / b) ** 2)
    if rel > 2 * se:
        return "higher", rel, se
    if rel < -2 * se:
        return "lower", rel, se
    return "indistinguishable", rel, se
