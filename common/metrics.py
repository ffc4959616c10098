"""Federated metric arithmetic: per-hospital sufficient statistics, their sum, and headline metrics.

Statistics are sums and counts only (no per-study values), so they add up across hospitals and are
safe to share. NumPy only: the coordinator uses this module without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NotRequired, TypedDict, cast

import numpy as np

SCORE_BINS = 50  # probability histogram bins: enough for AUROC to about 0.01, no per-patient scores

# Keys are Flower metric names (kebab-case), hence the functional TypedDict syntax.
EvaluationStats = TypedDict(
    "EvaluationStats",
    {
        "num-examples": int,
        "bce-sum": float,
        "tp": int,
        "fp": int,
        "tn": int,
        "fn": int,
        "diameter-n": int,
        "diameter-abs-err-sum": float,
        "diameter-sq-err-sum": float,
        "hist-pos": list[int],
        "hist-neg": list[int],
        "skipped-studies": NotRequired[int],  # added by the client: studies it could not use
    },
)

TrainStats = TypedDict("TrainStats", {"train-loss": float, "num-examples": int, "skipped-studies": NotRequired[int]})


class Summary(TypedDict):
    """Headline metrics from summed statistics (NaN where undefined, e.g. AUROC with one class)."""

    n: int
    auroc: float
    sensitivity: float
    specificity: float
    accuracy: float
    bce: float
    diameter_mae_mm: float
    diameter_rmse_mm: float


def evaluation_stats(
    prob: np.ndarray, diam: np.ndarray, aaa: np.ndarray, diam_true: np.ndarray, threshold: float = 0.5
) -> EvaluationStats:
    """Sums and counts only (no per-study values): they add up across hospitals."""
    aaa = np.asarray(aaa).astype(bool)
    prob = np.clip(np.asarray(prob, dtype=float), 1e-7, 1 - 1e-7)
    known = np.isfinite(diam_true)
    pred = prob >= threshold
    bins = np.minimum((prob * SCORE_BINS).astype(int), SCORE_BINS - 1)
    return {
        "num-examples": int(len(prob)),
        "bce-sum": float(-(np.log(prob[aaa]).sum() + np.log(1 - prob[~aaa]).sum())),
        "tp": int((pred & aaa).sum()),
        "fp": int((pred & ~aaa).sum()),
        "tn": int((~pred & ~aaa).sum()),
        "fn": int((~pred & aaa).sum()),
        "diameter-n": int(known.sum()),
        "diameter-abs-err-sum": float(np.abs(diam[known] - diam_true[known]).sum()),
        "diameter-sq-err-sum": float(((diam[known] - diam_true[known]) ** 2).sum()),
        "hist-pos": np.bincount(bins[aaa], minlength=SCORE_BINS).tolist(),
        "hist-neg": np.bincount(bins[~aaa], minlength=SCORE_BINS).tolist(),
    }


def sum_stats(stats: Iterable[Mapping[str, Any]]) -> EvaluationStats:
    """Add evaluation statistics from several hospitals (lists add element-wise)."""
    total: dict[str, Any] = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, list):
                total[k] = [a + b for a, b in zip(total.get(k, [0] * len(v)), v)]
            else:
                total[k] = total.get(k, 0) + v
    return cast(EvaluationStats, total)


def auroc_from_histograms(pos: Sequence[float], neg: Sequence[float]) -> float:
    """AUROC of binned scores (ties within a bin count one half): Mann-Whitney on the histograms."""
    p, n = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if p.sum() == 0 or n.sum() == 0:
        return math.nan
    neg_below = np.concatenate([[0.0], np.cumsum(n)[:-1]])
    return float((p * (neg_below + 0.5 * n)).sum() / (p.sum() * n.sum()))


def summarize(stats: Mapping[str, Any]) -> Summary:
    """Headline metrics from summed statistics."""
    n = stats.get("num-examples", 0)
    tp, fp, tn, fn = (stats.get(k, 0) for k in ("tp", "fp", "tn", "fn"))
    dn = stats.get("diameter-n", 0)
    nan = math.nan
    return {
        "n": n,
        "auroc": auroc_from_histograms(stats.get("hist-pos", [0]), stats.get("hist-neg", [0])),
        "sensitivity": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "accuracy": (tp + tn) / n if n else nan,
        "bce": stats.get("bce-sum", 0.0) / n if n else nan,
        "diameter_mae_mm": stats.get("diameter-abs-err-sum", 0.0) / dn if dn else nan,
        "diameter_rmse_mm": math.sqrt(stats.get("diameter-sq-err-sum", 0.0) / dn) if dn else nan,
    }
