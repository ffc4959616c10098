"""Federated metric arithmetic: per-hospital sufficient statistics, their sum, and headline metrics.

Statistics are sums and counts only (no per-study values), so they add up across hospitals and are
safe to share. NumPy only: the coordinator uses this module without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NotRequired, TypedDict, cast

import numpy as np

from fedaaa.common.calibration import HIST_BINS, diameter_bins
from fedaaa.common.clinical import AAA_THRESHOLD_MM

# Keys are Flower metric names (kebab-case), hence the functional TypedDict syntax.
EvaluationStats = TypedDict(
    "EvaluationStats",
    {
        "num-examples": int,
        "tp": int,
        "fp": int,
        "tn": int,
        "fn": int,
        "unmeasured": int,
        "diameter-n": int,
        "diameter-err-sum": float,
        "diameter-abs-err-sum": float,
        "diameter-sq-err-sum": float,
        "dice-n": int,
        "dice-inter": int,
        "dice-pred": int,
        "dice-true": int,
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
    unmeasured: int
    dice: float
    diameter_mae_mm: float
    diameter_rmse_mm: float
    diameter_bias_mm: float


def evaluation_stats(
    measured: np.ndarray,
    aaa: np.ndarray,
    diam_true: np.ndarray,
    dice_counts: Sequence[tuple[int, int, int]] = (),
    cut_mm: float = AAA_THRESHOLD_MM,
) -> EvaluationStats:
    """Sums and counts only (no per-study values): they add up across hospitals.

    ``measured`` is each study's measured maximum diameter (NaN when the aorta was not measurable: such a
    study counts as not called AAA); a study is called AAA at ``cut_mm`` or more. The histograms of the
    measured diameters (0.5 mm bins) by true class give the AUROC (over the measured studies) and the
    calibration fit; studies not measured are counted in ``unmeasured`` only."""
    aaa = np.asarray(aaa).astype(bool)
    measured = np.asarray(measured, dtype=float)
    ok = np.isfinite(measured)
    pred = ok & (np.nan_to_num(measured, nan=0.0) >= cut_mm)
    known = ok & np.isfinite(diam_true)
    err = measured[known] - np.asarray(diam_true, dtype=float)[known]
    bins = diameter_bins(np.nan_to_num(measured, nan=0.0))
    pos, neg = aaa & ok, ~aaa & ok  # the histograms hold measured diameters only (for AUROC and calibration)
    return {
        "num-examples": int(len(measured)),
        "tp": int((pred & aaa).sum()),
        "fp": int((pred & ~aaa).sum()),
        "tn": int((~pred & ~aaa).sum()),
        "fn": int((~pred & aaa).sum()),
        "unmeasured": int((~ok).sum()),
        "diameter-n": int(known.sum()),
        "diameter-err-sum": float(err.sum()),
        "diameter-abs-err-sum": float(np.abs(err).sum()),
        "diameter-sq-err-sum": float((err**2).sum()),
        "dice-n": len(dice_counts),
        "dice-inter": int(sum(c[0] for c in dice_counts)),
        "dice-pred": int(sum(c[1] for c in dice_counts)),
        "dice-true": int(sum(c[2] for c in dice_counts)),
        "hist-pos": np.bincount(bins[pos], minlength=HIST_BINS).tolist(),
        "hist-neg": np.bincount(bins[neg], minlength=HIST_BINS).tolist(),
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
    dice_den = stats.get("dice-pred", 0) + stats.get("dice-true", 0)
    return {
        "n": n,
        "auroc": auroc_from_histograms(stats.get("hist-pos", [0]), stats.get("hist-neg", [0])),
        "sensitivity": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "accuracy": (tp + tn) / n if n else nan,
        "unmeasured": int(stats.get("unmeasured", 0)),
        "dice": 2 * stats.get("dice-inter", 0) / dice_den if stats.get("dice-n", 0) and dice_den else nan,
        "diameter_mae_mm": stats.get("diameter-abs-err-sum", 0.0) / dn if dn else nan,
        "diameter_rmse_mm": math.sqrt(stats.get("diameter-sq-err-sum", 0.0) / dn) if dn else nan,
        "diameter_bias_mm": stats.get("diameter-err-sum", 0.0) / dn if dn else nan,
    }
